"""``adcore benchmark``: isolation of failing and timed-out runs, resume, outputs and plan parsing.

One real benchmark (module fixture) runs three detectors on a tiny synthetic MVTec-layout set in
parallel worker processes: the example plugin's Gaussian detector (input 32 px), a detector whose
fit raises and one whose fit sleeps past the time limit. The other tests reuse its results.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from adcore import benchmark as bench
from adcore.benchmark import runner

DUMMIES = textwrap.dedent('''
    import time
    import torch
    from adcore.base import BaseDetector

    class FailingDetector(BaseDetector):
        def __init__(self, *, input_size: int = 32, seed: int = 0) -> None:
            self.input_size = input_size
            self.seed = seed

        def _fit(self, stream):
            raise RuntimeError("deliberate failure in fit")

        def _predict(self, images):
            raise AssertionError("never reached")

    class MeanDetector(BaseDetector):
        """No backbone: squared distance to the mean training image (a fast real detector for tests)."""

        def __init__(self, *, input_size: int = 32, seed: int = 0) -> None:
            self.input_size = input_size
            self.seed = seed

        def _fit(self, stream):
            self.mean_ = stream.materialize().mean(0)

        def _predict(self, images):
            maps = ((images - self.mean_) ** 2).sum(1)
            return maps.flatten(1).amax(1), maps

    class SlowDetector(BaseDetector):
        def __init__(self, *, input_size: int = 32, seed: int = 0) -> None:
            self.input_size = input_size
            self.seed = seed

        def _fit(self, stream):
            time.sleep(600)

        def _predict(self, images):
            raise AssertionError("never reached")
''')


def _write_category(root: Path, category: str, *, train: int = 6, good: int = 3, defect: int = 3, size: int = 48,
                    seed: int = 0) -> Path:
    """A tiny MVTec-layout category: smooth textures, defects are bright squares with masks."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / category
    ys, xs = np.mgrid[0:size, 0:size] / size

    def texture() -> np.ndarray:
        phase = rng.uniform(0, 2 * np.pi)
        base = 0.5 + 0.15 * np.sin(2 * np.pi * 4 * xs + phase) + 0.02 * rng.standard_normal((size, size))
        return np.clip(np.stack([base, base * 0.9, base * 0.8], -1), 0, 1)

    def save(array: np.ndarray, path: Path, mode: str = "RGB") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((array * 255).astype(np.uint8), mode=mode).save(path)

    for i in range(train):
        save(texture(), folder / "train" / "good" / f"{i:03d}.png")
    for i in range(good):
        save(texture(), folder / "test" / "good" / f"{i:03d}.png")
    for i in range(defect):
        image, mask = texture(), np.zeros((size, size))
        top, left = rng.integers(4, size - 16, 2)
        image[top:top + 12, left:left + 12] = [1.0, 0.1, 0.1]
        mask[top:top + 12, left:left + 12] = 1.0
        save(image, folder / "test" / "scratch" / f"{i:03d}.png")
        save(mask, folder / "ground_truth" / "scratch" / f"{i:03d}_mask.png", mode="L")
    return folder


def _args(**overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args([])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    _write_category(root / "data", "widget")
    _write_category(root / "data", "gadget", seed=1)
    (root / "mods").mkdir()
    (root / "mods" / "bench_dummies.py").write_text(DUMMIES)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "mods"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", ADCORE_PROGRESS="0")
    return root, env


@pytest.fixture(scope="module")
def first_run(workspace):
    root, env = workspace
    args = _args(model=["example_gaussian", "bench_dummies:FailingDetector", "bench_dummies:SlowDetector"], allow_import=True,
                 dataset=["widget"], data_root=str(root / "data"), out=str(root / "out"), input_size=32,
                 time_limit=["60", "bench_dummies:SlowDetector=25"], jobs=3, report=str(root / "docs" / "report.md"))
    plan = bench.build_plan(args)
    started = time.monotonic()
    outcome = bench.run_benchmark(plan, env=env, echo=False)
    elapsed = time.monotonic() - started
    rows = bench.collect_rows(plan)
    paths = bench.write_tables(plan, rows)
    from adcore.benchmark.figures import make_figures

    figures = make_figures(rows, plan.out, plan.out / "figures", datasets=[d.name for d in plan.datasets],
                           detectors=plan.detectors)
    report = bench.write_report(plan, rows, figures, plan.report)
    return {"plan": plan, "outcome": outcome, "rows": {r["detector"]: r for r in rows}, "paths": paths,
            "figures": figures, "report": report, "elapsed": elapsed, "args": args}


def test_failing_and_timed_out_runs_are_recorded_and_the_others_complete(first_run):
    rows = first_run["rows"]
    good = rows["example_gaussian"]
    assert good["status"] == "ok"
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "fit_seconds", "ms_per_image_batch1",
                "ms_per_image_batched", "peak_rss_mb", "threshold"):
        assert isinstance(good[key], float), key
    assert good["image_auroc"] == pytest.approx(1.0)  # bright red squares on a smooth texture
    assert good["input_size"] == 32 and good["seed"] == 0 and good["backbone"] == "tf_efficientnet_lite0"
    assert good["plugin"] == "ad-example" and good["plugin_version"]
    assert good["versions"]["adcore"] and "ad-example" in good["versions"]
    assert good["train_images"] + good["calibration_images"] == 6 and good["test_images"] == 6
    assert 50 < good["peak_rss_mb"] < 5000  # the worker's own peak, in MB

    failed = rows["bench_dummies:FailingDetector"]
    assert failed["status"] == "error"
    assert failed["error"]["type"] == "RuntimeError"
    assert "deliberate failure in fit" in failed["error"]["message"]
    assert failed["error"]["stage"] == "fit"
    assert "Traceback" in failed["error"]["traceback"]

    slow = rows["bench_dummies:SlowDetector"]
    assert slow["status"] == "timeout"
    assert slow["error"]["type"] == "TimeLimitExceeded"
    assert slow["time_limit"] == 25 and slow["error"]["stage"] == "fit"
    assert 25 <= slow["wall_seconds"] < 45
    assert first_run["elapsed"] < 150  # the slow one (sleeping 600 s) was killed, not waited for


def test_tables_have_one_row_per_pair_in_every_format(first_run):
    paths = first_run["paths"]
    markdown = paths["md"].read_text()
    assert "| widget | example_gaussian | ok | 1.000 |" in markdown
    assert "| widget | bench_dummies:FailingDetector | error |" in markdown
    assert "| widget | bench_dummies:SlowDetector | timeout |" in markdown
    with open(paths["csv"], newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["status"] for r in table] == ["ok", "error", "timeout"]
    assert table[1]["error_type"] == "RuntimeError" and table[0]["adcore_version"]
    assert float(table[0]["image_auroc"]) == pytest.approx(1.0)
    document = json.loads(paths["json"].read_text())
    assert len(document["runs"]) == 3 and document["machine"]["cpu_count"]
    summary = {s["detector"]: s for s in document["summary"]}
    assert summary["example_gaussian"]["finished"] == "1/1"
    report = first_run["report"].read_text()
    assert "## Runs that did not finish" in report and "deliberate failure in fit" in report
    assert "figures/auroc_matrix.png" in report or "auroc_matrix.png" in report


def test_figures_are_written_as_png(first_run):
    names = {p.name for p in first_run["figures"]}
    for expected in ("auroc_matrix.png", "accuracy_latency.png", "auroc_widget.png", "roc_widget.png",
                     "scores_widget.png", "heatmaps_widget.png"):
        assert expected in names
    for path in first_run["figures"]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    artifact = np.load(first_run["plan"].out / first_run["rows"]["example_gaussian"]["artifacts"])
    assert artifact["scores"].shape == (6,) and artifact["labels"].sum() == 3
    assert artifact["sample_maps"].shape == (4, bench.SAMPLE_SIDE, bench.SAMPLE_SIDE)  # 3 defects (one type) + 1 good
    assert list(artifact["labels"][artifact["sample_index"]]) == [1, 1, 1, 0]


def test_rerunning_the_same_command_skips_every_recorded_pair(first_run, workspace):
    _, env = workspace
    plan = bench.build_plan(first_run["args"])
    before = plan.results_path.read_text()
    outcome = bench.run_benchmark(plan, env=env, echo=False)
    assert outcome.launched == [] and len(outcome.skipped) == 3
    assert plan.results_path.read_text() == before


def test_retry_failed_and_fresh_select_the_right_pairs(first_run, monkeypatch):
    plan = bench.build_plan(first_run["args"])
    launched: list[str] = []

    def fake_launch(run, plan, env, echo):
        launched.append(run.detector)
        raise KeyboardInterrupt  # stop right there: we only want to know what would run

    monkeypatch.setattr(runner, "_launch", fake_launch)
    bench.run_benchmark(plan, retry_failed=True, echo=False)
    assert launched == ["bench_dummies:FailingDetector"]  # the first pending one: ok runs are not redone
    launched.clear()
    bench.run_benchmark(plan, fresh=True, echo=False)
    assert launched == ["example_gaussian"]


def _worker_pids(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "--worker" in command and marker in command:
                pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds worker processes through /proc")
def test_killing_the_benchmark_mid_run_keeps_finished_pairs_and_the_rerun_resumes(workspace, tmp_path, monkeypatch):
    root, env = workspace
    out = tmp_path / "out"
    command = [sys.executable, "-m", "adcore.benchmark", "--model", "bench_dummies:MeanDetector",
               "bench_dummies:SlowDetector", "--dataset", "widget", "--data-root", str(root / "data"), "--out", str(out),
               "--input-size", "32", "--time-limit", "120", "--no-plots", "--jobs", "2", "--allow-import"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # until the first pair is recorded and the slow one is inside fit
        stages = list((out / "runs").glob("bench_dummies-SlowDetector*.stage")) if (out / "runs").is_dir() else []
        if stages and stages[0].read_text() == "fit" and (out / "results.jsonl").is_file():
            break
        time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"the slow run never reached fit: {process.stderr.read().decode()[-2000:]}")
    assert _worker_pids(str(out))  # the slow worker is running
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 130
    time.sleep(0.5)
    assert _worker_pids(str(out)) == []  # killed with its parent, not left running
    (record,) = bench.ResultStore(out / "results.jsonl").records()
    assert record["detector"] == "bench_dummies:MeanDetector" and record["status"] == "ok"
    assert record["image_auroc"] == pytest.approx(1.0)

    plan = bench.build_plan(_args(model=["bench_dummies:MeanDetector", "bench_dummies:SlowDetector"], dataset=["widget"],
                                  data_root=str(root / "data"), out=str(out), input_size=32, allow_import=True))
    launched: list[str] = []

    def fake_launch(run, plan, env, echo):
        launched.append(run.detector)
        raise KeyboardInterrupt  # we only want to know what the rerun would start

    monkeypatch.setattr(runner, "_launch", fake_launch)
    outcome = bench.run_benchmark(plan, echo=False)
    assert outcome.skipped == [record["key"]] and launched == ["bench_dummies:SlowDetector"]


def test_result_store_skips_a_torn_line_and_rewrites_the_file_clean(tmp_path):
    store = bench.ResultStore(tmp_path / "results.jsonl")
    store.path.write_text(json.dumps({"key": "a", "status": "ok"}) + "\n" + '{"key": "b", "status": "o')
    with pytest.warns(UserWarning, match="damaged"):
        assert [r["key"] for r in store.records()] == ["a"]
    store.append({"key": "c", "status": "error"})
    assert [r["key"] for r in store.records()] == ["a", "c"]  # no warning any more: the torn line is gone
    store.append({"key": "a", "status": "timeout"})
    assert store.latest()["a"]["status"] == "timeout"  # the newest record of a pair wins
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_crashing_worker_is_recorded_as_crashed(tmp_path, workspace, monkeypatch):
    root, env = workspace
    args = _args(model=["bench_dummies:MeanDetector"], dataset=["widget"], data_root=str(root / "data"),
                 out=str(tmp_path), input_size=32, allow_import=True)
    plan = bench.build_plan(args)
    real_launch = runner._launch

    def crashing_launch(run, plan, env, echo):
        running = real_launch(run, plan, env, echo)
        os.kill(running.process.pid, 9)  # what the out-of-memory killer does
        return running

    monkeypatch.setattr(runner, "_launch", crashing_launch)
    bench.run_benchmark(plan, env=env, echo=False)
    (record,) = bench.ResultStore(plan.results_path).records()
    assert record["status"] == "crashed" and "SIGKILL" in record["error"]["message"]


# --- plan parsing (no subprocess) -------------------------------------------------------------
def test_parse_param_values_and_scopes():
    assert bench.parse_param("patchcore.coreset_ratio=0.05") == ("patchcore", "coreset_ratio", 0.05)
    assert bench.parse_param("input_size=128") == (None, "input_size", 128)
    assert bench.parse_param("*.layers=[\"blocks.2\"]") == (None, "layers", ["blocks.2"])
    assert bench.parse_param("vae.backbone=resnet18") == ("vae", "backbone", "resnet18")
    assert bench.parse_param("x.flag=true") == ("x", "flag", True)
    with pytest.raises(ValueError, match="DETECTOR.KEY=VALUE"):
        bench.parse_param("patchcore")
    assert bench.parse_time_limit(["60", "slow=5"]) == {"*": 60.0, "slow": 5.0}
    with pytest.raises(ValueError):
        bench.parse_time_limit(["soon"])


def test_dataset_specs_resolve_every_form(workspace):
    root, _ = workspace
    data = root / "data"
    specs = bench.parse_datasets([f"{data}:widget", str(data / "gadget"), str(data), "named=widget"], data)
    assert [(s.name, s.category) for s in specs] == [("widget", "widget"), ("gadget", None), ("gadget-2", "gadget"),
                                                     ("widget-2", "widget"), ("named", None)]
    folder = bench.parse_datasets([f"folder:train={data}/widget/train/good,good={data}/widget/test/good,"
                                   f"defect={data}/widget/test/scratch,masks={data}/widget/ground_truth/scratch,name=w"])
    train, test = folder[0].load(32)
    assert len(train) == 6 and len(test) == 6 and sum(test.labels) == 3
    capped = bench.parse_datasets([{"path": "widget", "max_train": 4}], data)[0]
    assert len(capped.load(32)[0]) == 4
    with pytest.raises(ValueError, match="does not exist"):
        bench.parse_datasets(["nowhere"], data)


def test_models_params_quick_and_config_merge(workspace, tmp_path):
    root, _ = workspace
    assert bench.resolve_models(["example"]) == ["example_gaussian"]  # a category
    assert "example_gaussian" in bench.resolve_models(["all"])
    assert bench.resolve_models(["all"], exclude=["example_*"]) == [n for n in bench.resolve_models(["all"])
                                                                   if n != "example_gaussian"]
    with pytest.raises(KeyError):
        bench.resolve_models(["example_gausian"])
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "benchmarks").mkdir()
    shutil.copytree(root / "data", tmp_path / "shared" / "data")
    config = {"data_root": "../shared/data", "out": "results/b", "models": ["example_gaussian"], "datasets": ["widget"],
              "input_size": 64, "params": {"example_gaussian": {"sigma": 2.0}, "*@widget": {"sigma": 3.0, "layer": "x"},
                                           "example_gaussian@widget": {"layer": "blocks.1"}},
              "time_limit": {"default": 30, "example_gaussian@widget": 20}}
    (repo / "benchmarks" / "config.json").write_text(json.dumps(config))
    plan = bench.build_plan(_args(config=str(repo / "benchmarks" / "config.json")))
    (run,) = plan.runs
    assert plan.out == repo / "results" / "b"  # relative to the repository root, not the config's folder
    assert Path(run.dataset.root).resolve() == tmp_path / "shared" / "data" / "widget"
    assert run.params == {"input_size": 64, "sigma": 3.0, "layer": "blocks.1"} and run.time_limit == 20
    assert plan.settings["params"]["example_gaussian"] == {"input_size": 64, "sigma": 2.0}
    overridden = bench.build_plan(_args(config=str(repo / "benchmarks" / "config.json"), param=["sigma=1"],
                                        input_size=32, data_root=str(root / "data"), time_limit=["12"]))
    assert overridden.runs[0].params == {"input_size": 32, "sigma": 1, "layer": "blocks.1"}
    assert overridden.runs[0].time_limit == 20  # a per-data-set limit is more specific than --time-limit SECONDS
    assert overridden.runs[0].key != run.key
    quick = bench.build_plan(_args(model=["example_gaussian"], dataset=["widget"], data_root=str(root / "data"),
                                   quick=True))
    assert quick.runs[0].params == {"input_size": 64}  # the card's quick_params
    quick = bench.build_plan(_args(model=["example_gaussian"], dataset=["widget"], data_root=str(root / "data"),
                                   quick=True, input_size=48))
    assert quick.runs[0].params == {"input_size": 48}
    with pytest.raises(ValueError, match="unknown key"):
        (repo / "bad.json").write_text(json.dumps({"modles": []}))
        bench.build_plan(_args(config=str(repo / "bad.json")))


def test_cli_entry_point_reports_usage_errors(capsys):
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    bench.add_cli(subparsers)
    args = parser.parse_args(["benchmark", "--model", "example_gaussian", "--dataset", "/nonexistent/place"])
    assert args.func(args) == 2
    assert "does not exist" in capsys.readouterr().err
    assert bench.main(["--worker"]) == 2
