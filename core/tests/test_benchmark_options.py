"""``adcore benchmark`` options: ``--seeds`` (mean ± std over seeds), ``--allow-import`` (module:Class
targets), measurement options in a pair's identity. No subprocess except where a worker is the point."""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from pathlib import Path

import pytest

from adcore import benchmark as bench
from adcore.benchmark.report import aggregate_seeds, results_table
from adcore.errors import ConfigurationError
from adcore.testing import write_tiny_category


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    write_tiny_category(tmp_path / "data", "widget")
    return tmp_path / "data"


def _record(detector: str, seed: int, auroc: float | None, status: str = "ok", **extra) -> dict:
    return {"key": f"{detector}-{seed}", "dataset": "widget", "detector": detector, "status": status, "seed": seed,
            "params": {"input_size": 32, "seed": seed}, "batch_size": 8, "image_auroc": auroc,
            "pixel_auroc": None if auroc is None else auroc - 0.1, "fit_seconds": 10.0 + seed, **extra}


# --- --seeds ------------------------------------------------------------------------------------
def test_seeds_make_one_run_per_seed_and_the_seed_is_part_of_the_identity(data):
    plan = bench.build_plan(_args("--model", "example_gaussian", "--dataset", "widget", "--data-root", str(data),
                                  "--seeds", "0,1,2", "--seed", "7"))
    assert [r.params["seed"] for r in plan.runs] == [0, 1, 2]  # --seeds wins over --seed
    assert len({r.key for r in plan.runs}) == 3
    assert plan.settings["seeds"] == [0, 1, 2]
    assert bench.parse_seeds(["0,1", "2"]) == [0, 1, 2] and bench.parse_seeds(None) is None
    with pytest.raises(ConfigurationError, match="twice"):
        bench.parse_seeds("0,0")
    with pytest.raises(ConfigurationError, match="whole number"):
        bench.parse_seeds("0,one")


def test_a_plan_without_new_options_keeps_the_keys_of_records_already_stored(data):
    (run,) = bench.build_plan(_args("--model", "example_gaussian", "--dataset", "widget", "--data-root", str(data),
                                    "--input-size", "32")).runs
    identity = {"format": 1, "detector": "example_gaussian", "params": {"input_size": 32},
                "dataset": run.dataset.identity(), "batch_size": 8}
    assert run.key == hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    (curved,) = bench.build_plan(_args("--model", "example_gaussian", "--dataset", "widget", "--data-root", str(data),
                                       "--input-size", "32", "--curve", "5", "--calibration-fraction", "0")).runs
    assert curved.options == {"curve": 5, "calibration_fraction": 0.0} and curved.key != run.key


def test_mean_and_sample_std_over_seeds_and_single_seed_rows_unchanged():
    rows = [_record("a", 0, 0.8), _record("a", 1, 0.9), _record("a", 2, 1.0), _record("b", 0, 0.75)]
    pairs = aggregate_seeds(rows)
    assert len(pairs) == 2 and pairs[1] is rows[3]  # one seed: the row itself
    combined = pairs[0]
    assert combined["image_auroc"] == pytest.approx(0.9)
    assert combined["image_auroc_std"] == pytest.approx(statistics.stdev([0.8, 0.9, 1.0])) == pytest.approx(0.1)
    assert combined["pixel_auroc"] == pytest.approx(0.8) and combined["image_auroc_n"] == 3
    assert combined["fit_seconds"] == pytest.approx(11.0) and combined["fit_seconds_std"] == pytest.approx(1.0)
    assert combined["seeds"] == [0, 1, 2] and combined["runs"] == combined["runs_ok"] == 3
    table = results_table(pairs)
    assert "| widget | a | ok | 0.900 ± 0.100 | 0.800 ± 0.100 |" in table
    assert "| 0,1,2 (n=3) |" in table
    assert "| widget | b | ok | 0.750 | 0.650 |" in table  # single-seed row exactly as before
    assert aggregate_seeds(rows[3:]) is not None and aggregate_seeds(rows[3:]) == rows[3:]


def test_seeds_that_did_not_finish_are_left_out_of_the_mean_and_counted():
    rows = [_record("a", 0, 0.8), _record("a", 1, None, status="error"), _record("a", 2, 0.6)]
    (combined,) = aggregate_seeds(rows)
    assert combined["image_auroc"] == pytest.approx(0.7) and combined["image_auroc_n"] == 2
    assert combined["runs_ok"] == 2 and combined["status"] == "ok"
    assert "| ok (2/3 seeds) | 0.700 ± 0.141 |" in results_table([combined])
    (alone,) = aggregate_seeds([_record("a", 0, 0.8), _record("a", 1, None, status="timeout")])
    assert alone["image_auroc"] == 0.8 and alone["image_auroc_std"] is None  # one value: no spread to show
    (none,) = aggregate_seeds([_record("a", 0, None, status="error"), _record("a", 1, None, status="timeout")])
    assert none["status"] == "error" and none["image_auroc"] is None


def test_report_and_tables_show_seeds_as_one_row_and_keep_every_run_in_csv_and_json(data, tmp_path):
    plan = bench.build_plan(_args("--model", "example_gaussian", "--dataset", "widget", "--data-root", str(data),
                                  "--seeds", "0,1", "--out", str(tmp_path / "out")))
    rows = [{**bench.collect_rows(plan)[i], "status": "ok", "image_auroc": value} for i, value in enumerate((0.8, 0.9))]
    paths = bench.write_tables(plan, rows)
    markdown = paths["md"].read_text()
    assert "0.850 ± 0.071" in markdown and "Every run (one row per seed)" in markdown
    document = json.loads(paths["json"].read_text())
    assert len(document["runs"]) == 2 and len(document["pairs"]) == 1
    assert document["summary"][0]["image_auroc"] == pytest.approx(0.85)
    assert len(paths["csv"].read_text().strip().splitlines()) == 3  # header + one line per run
    report = bench.write_report(plan, rows, [], tmp_path / "report.md").read_text()
    assert "mean ± the sample standard deviation" in report and "0.850 ± 0.071" in report


# --- --allow-import -----------------------------------------------------------------------------
def test_module_targets_need_allow_import_and_a_config_cannot_grant_it(data, tmp_path):
    with pytest.raises(ConfigurationError, match="--allow-import"):
        bench.build_plan(_args("--model", "os:system", "--dataset", "widget", "--data-root", str(data)))
    config = tmp_path / "evil.json"
    config.write_text(json.dumps({"models": ["os:system"], "datasets": ["widget"], "data_root": str(data),
                                  "allow_import": True}))
    with pytest.raises(ConfigurationError, match="unknown key"):
        bench.build_plan(_args("--config", str(config)))
    config.write_text(json.dumps({"models": ["os:system"], "datasets": ["widget"], "data_root": str(data)}))
    with pytest.raises(ConfigurationError, match="--allow-import"):
        bench.build_plan(_args("--config", str(config)))
    plan = bench.build_plan(_args("--config", str(config), "--allow-import"))  # planning imports nothing
    assert plan.runs[0].detector == "os:system" and plan.runs[0].allow_import


DETECTOR_MODULE = """
from adcore.base import BaseDetector

class MeanDetector(BaseDetector):
    def __init__(self, *, input_size: int = 32) -> None:
        self.input_size = input_size

    def _fit(self, stream):
        self.mean_ = stream.materialize().mean(0)

    def _predict(self, images):
        maps = ((images - self.mean_) ** 2).sum(1)
        return maps.flatten(1).amax(1), maps
"""


@pytest.fixture()
def detector_module(tmp_path, monkeypatch) -> str:
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "allow_import_dummies.py").write_text(DETECTOR_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    return "allow_import_dummies:MeanDetector"


def test_only_a_detector_class_is_ever_built(detector_module):
    with pytest.raises(ConfigurationError, match="not a class"):
        bench.load_detector_class("os:system")
    with pytest.raises(ConfigurationError, match="without fit/predict"):
        bench.load_detector_class("subprocess:Popen")
    with pytest.raises(ConfigurationError, match="could not be imported"):
        bench.load_detector_class("no_such_module_here:Thing")
    from adcore.base import BaseDetector

    assert issubclass(bench.load_detector_class(detector_module), BaseDetector)


def test_the_worker_refuses_a_function_target_without_calling_it(tmp_path, detector_module):
    from adcore.benchmark.worker import run_worker

    marker = tmp_path / "ran"
    spec = {"run": {"detector": "os:system", "dataset": {"name": "x", "kind": "mvtec", "root": str(tmp_path)},
                    "params": {"command": f"touch {marker}"}, "batch_size": 8, "time_limit": 10, "options": {},
                    "allow_import": True},
            "record": {"key": "k"}, "threads": None, "result_path": str(tmp_path / "result.json"),
            "artifacts_path": str(tmp_path / "a.npz")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert run_worker(str(tmp_path / "spec.json")) == 0
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["status"] == "error" and record["error"]["type"] == "ConfigurationError"
    assert record["error"]["stage"] == "build" and not marker.exists()
    spec["run"]["allow_import"] = False
    spec["run"]["detector"] = detector_module
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    run_worker(str(tmp_path / "spec.json"))
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["error"]["type"] == "ConfigurationError" and "--allow-import" in record["error"]["message"]


def test_figures_draw_seed_spreads_and_learning_curves_from_rows(tmp_path):
    from adcore.benchmark.figures import make_figures

    curve = [{"loop": "fit", "epoch": 1, "loss": 2.0, "image_auroc": 0.6, "pixel_auroc": 0.5},
             {"loop": "fit", "epoch": 2, "error": "RuntimeError: not ready"}]
    rows = [_record("a", seed, auroc, ms_per_image_batch1=5.0, curve=curve, epochs_run=3,
                    training=[{"description": "fit", "loss": [2.0, 1.5, 1.2], "seconds": [1, 1, 1]}])
            for seed, auroc in ((0, 0.8), (1, 0.9))]
    pairs = aggregate_seeds(rows)
    figures = {p.name: p for p in make_figures(pairs, tmp_path, tmp_path / "figures", datasets=["widget"],
                                               detectors=["a"])}
    for name in ("auroc_matrix.png", "accuracy_latency.png", "auroc_widget.png", "curves_widget.png"):
        assert figures[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "roc_widget.png" not in figures  # no per-image artifacts in these rows: nothing to draw from


# --- #22: "distribution:name" specs stay qualified; #23: the calibration split follows the run's seed ---------
def test_a_distribution_qualified_detector_stays_qualified_in_the_plan(data, tmp_path):
    assert bench.resolve_models(["ad-example:example_gaussian"]) == ["ad-example:example_gaussian"]
    assert bench.resolve_models(["example_gaussian"]) == ["example_gaussian"]  # an unambiguous plain name stays plain
    plan = bench.build_plan(_args("--model", "ad-example:example_gaussian", "--dataset", str(data / "widget"),
                                  "--input-size", "32", "-p", "ad-example:example_gaussian.sigma=2",
                                  "--out", str(tmp_path / "out")))
    assert [run.detector for run in plan.runs] == ["ad-example:example_gaussian"]
    assert plan.runs[0].params == {"input_size": 32, "sigma": 2}


def test_the_calibration_split_follows_the_runs_seed(data, tmp_path, monkeypatch):
    from dataclasses import asdict

    import adcore.evaluation as evaluation
    from adcore.benchmark.store import base_record
    from adcore.benchmark.worker import calibration_seed, run_worker

    real = evaluation.split_calibration
    held_out: list[tuple[int, list[int]]] = []

    def spy(dataset, fraction, seed=0):
        fit, held = real(dataset, fraction, seed=seed)
        held_out.append((seed, sorted(held.indices)))
        return fit, held

    monkeypatch.setattr(evaluation, "split_calibration", spy)
    plan = bench.build_plan(_args("--model", "ad-example:example_gaussian", "--dataset", str(data / "widget"),
                                  "--input-size", "32", "--seeds", "0,1,2", "--calibration-fraction", "0.5",
                                  "--out", str(tmp_path / "out")))
    for index, run in enumerate(plan.runs):
        spec = {"run": {"detector": run.detector, "dataset": asdict(run.dataset), "params": run.params,
                        "batch_size": run.batch_size, "time_limit": run.time_limit, "options": run.options,
                        "allow_import": False},
                "record": base_record(run), "threads": None, "result_path": str(tmp_path / f"r{index}.json"),
                "artifacts_path": str(tmp_path / f"a{index}.npz")}
        (tmp_path / f"s{index}.json").write_text(json.dumps(spec, default=str))
        assert run_worker(str(tmp_path / f"s{index}.json")) == 0
        record = json.loads((tmp_path / f"r{index}.json").read_text())
        assert record["status"] == "ok", record.get("error")
        assert record["calibration_seed"] == run.params["seed"] and record["calibration_images"] == 3
    assert [seed for seed, _ in held_out] == [0, 1, 2]
    assert len({tuple(held) for _, held in held_out}) > 1  # not one split for every seed
    assert calibration_seed(None) == 0 and calibration_seed(True) == 0 and calibration_seed(5) == 5


def test_records_keep_data_paths_relative_to_the_working_directory(tmp_path, monkeypatch):
    """Committed records must not carry this machine's absolute paths (``../shared/data``, not an absolute one)."""
    from adcore.benchmark.plan import portable_path
    from adcore.benchmark.store import base_record

    repo = tmp_path / "repo"
    repo.mkdir()
    write_tiny_category(tmp_path / "shared" / "data", "widget")
    monkeypatch.chdir(repo)
    assert portable_path(repo / "results") == "results"
    assert portable_path(repo / ".." / "shared" / "data") == str(Path("..") / "shared" / "data")
    far = Path("/") / "elsewhere" / "data"
    assert portable_path(far) == str(far)
    assert portable_path(None) is None

    plan = bench.build_plan(_args("--data-root", str(repo / ".." / "shared" / "data"), "--dataset", "widget",
                                  "--model", "example_gaussian", "--quick"))
    record = base_record(plan.runs[0])
    assert record["dataset_spec"]["root"] == str(Path("..") / "shared" / "data" / "widget")
    assert plan.settings["data_root"] == str(Path("..") / "shared" / "data")
    from adcore.benchmark.report import write_tables

    plan.out = repo / "results"
    tables = json.loads(write_tables(plan, [])["json"].read_text(encoding="utf-8"))
    assert tables["datasets"][0]["root"] == str(Path("..") / "shared" / "data" / "widget")
    assert str(tmp_path) not in json.dumps(tables)
