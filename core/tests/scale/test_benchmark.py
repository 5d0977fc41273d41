"""``adcore benchmark --executor ray``: two detectors × two small sets as Ray tasks, one pair failing
while the others finish, records and artefacts gathered into the benchmark's own store and tables."""

from __future__ import annotations

import argparse
import os
import shutil
import textwrap

import numpy as np
import pytest

from adcore import benchmark as bench
from adcore.testing import write_tiny_category

PICKY = textwrap.dedent('''
    from adcore.base import BaseDetector

    class PickyDetector(BaseDetector):
        """Distance to the mean training image; refuses to fit on fewer than 8 images."""

        def __init__(self, *, input_size: int = 32, seed: int = 0) -> None:
            self.input_size = input_size
            self.seed = seed

        def _fit(self, stream):
            images = stream.materialize()
            if len(images) < 8:
                raise RuntimeError(f"deliberate: only {len(images)} training images, 8 needed")
            self.mean_ = images.mean(0)

        def _predict(self, images):
            maps = ((images - self.mean_) ** 2).sum(1)
            return maps.flatten(1).amax(1), maps
''')


def _args(**overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args([])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """``widget`` (6 training images) and ``gadget`` (12): the picky detector fails on widget only."""
    root = tmp_path_factory.mktemp("ray-bench")
    write_tiny_category(root / "data", "widget")
    gadget = write_tiny_category(root / "data", "gadget")
    for index in range(6):
        shutil.copy(gadget / "train" / "good" / f"{index:03d}.png", gadget / "train" / "good" / f"{index + 6:03d}.png")
    (root / "mods").mkdir()
    (root / "mods" / "scale_dummies.py").write_text(PICKY)
    return root


def test_every_pair_runs_as_a_ray_task_and_a_failing_pair_does_not_stop_the_others(local_ray, workspace):
    from adcore.scale import run_benchmark_on_ray

    root = workspace
    args = _args(model=["example_gaussian", "scale_dummies:PickyDetector"], allow_import=True,
                 dataset=["widget", "gadget"], data_root=str(root / "data"), out=str(root / "out"), input_size=32,
                 time_limit=["120"])
    plan = bench.build_plan(args)
    env = {"PYTHONPATH": os.pathsep.join([str(root / "mods"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "ADCORE_PROGRESS": "0"}
    outcome = run_benchmark_on_ray(plan, env=env, echo=False)
    assert len(outcome.launched) == 4 and not outcome.interrupted
    records = {(r["detector"], r["dataset"]): r for r in bench.ResultStore(plan.results_path).records()}
    assert len(records) == 4
    failed = records[("scale_dummies:PickyDetector", "widget")]
    assert failed["status"] == "error" and failed["error"]["stage"] == "fit"
    assert "training images, 8 needed" in failed["error"]["message"]
    for pair in [("example_gaussian", "widget"), ("example_gaussian", "gadget"), ("scale_dummies:PickyDetector", "gadget")]:
        record = records[pair]
        assert record["status"] == "ok", record.get("error")
        assert record["executor"] == "ray" and record["node"]
        assert record["image_auroc"] == pytest.approx(1.0)  # bright red squares on a smooth texture
        artefacts = root / "out" / record["artifacts"]
        with np.load(artefacts) as saved:  # written by the driver from the bytes the task returned
            assert len(saved["scores"]) == record["test_images"] == 6
    assert records[("scale_dummies:PickyDetector", "gadget")]["train_images"] >= 8

    rows = bench.collect_rows(plan)  # the benchmark's own tables read the same store
    paths = bench.write_tables(plan, rows)
    assert sorted(r["status"] for r in rows) == ["error", "ok", "ok", "ok"]
    assert "8 needed" in paths["md"].read_text() or "PickyDetector" in paths["md"].read_text()

    again = run_benchmark_on_ray(plan, env=env, echo=False)  # rerunning resumes: nothing left to run
    assert not again.launched and len(again.skipped) == 4


def test_the_benchmark_command_line_dispatches_to_ray(local_ray, workspace, tmp_path):
    code = bench.main(["--model", "example_gaussian", "--dataset", "widget", "--data-root", str(workspace / "data"),
                       "--out", str(tmp_path / "out"), "--input-size", "32", "--no-plots", "--executor", "ray",
                       "--cpus-per-run", "1", "--fail-on-error"])
    assert code == 0
    (record,) = bench.ResultStore(tmp_path / "out" / "results.jsonl").records()
    assert record["status"] == "ok" and record["executor"] == "ray"
    assert (tmp_path / "out" / "results.md").is_file()
