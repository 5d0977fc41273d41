"""The `adcore` command line, end to end, as a user runs it (subprocesses, real files)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(*args: str, env_extra: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADCORE_PROGRESS": "0", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "adcore.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_list_groups_detectors_by_category():
    result = run_cli("list")
    assert result.returncode == 0, result.stderr
    assert "example:" in result.stdout and "example_gaussian" in result.stdout
    lines = result.stdout.splitlines()
    categories = [line for line in lines if line.endswith(":") and not line.startswith(" ")]
    assert categories == sorted(categories)


def test_list_json_has_cards():
    result = run_cli("list", "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["example_gaussian"]["distribution"] == "ad-example"
    assert rows["example_gaussian"]["category"] == "example"


def test_broken_plugins_are_reported_and_the_rest_still_listed(broken_plugins_site: Path):
    env = {"PYTHONPATH": str(broken_plugins_site)}
    result = run_cli("list", env_extra=env)
    assert result.returncode == 0, result.stderr
    assert "healthy_detector" in result.stdout and "example_gaussian" in result.stdout
    assert "half_registered" not in result.stdout  # a raising hook leaves nothing behind
    for dist, stage in [("ad-import-error", "import"), ("ad-bad-signature", "register"), ("ad-raising", "hook"),
                        ("ad-duplicate", "duplicate")]:
        assert dist in result.stderr and f"stage '{stage}'" in result.stderr, (dist, result.stderr)
    report = json.loads(run_cli("plugins", env_extra=env).stdout)
    failed = {f["distribution"]: f for f in report["failures"]}
    assert failed["ad-import-error"]["version"] == "0.1"
    assert "not_a_real_module_xyz" in failed["ad-import-error"]["error"]
    assert "boom in hook" in failed["ad-raising"]["error"]


def test_strict_mode_exits_nonzero(broken_plugins_site: Path):
    env = {"PYTHONPATH": str(broken_plugins_site)}
    assert run_cli("--strict", "list", env_extra=env).returncode == 2
    assert run_cli("list", env_extra={**env, "ADCORE_STRICT_PLUGINS": "1"}).returncode == 2
    disabled = "ad-import-error,ad-bad-signature,ad-raising,ad-duplicate"
    assert run_cli("--strict", "list", env_extra={**env, "ADCORE_DISABLE_PLUGINS": disabled}).returncode == 0


def test_unknown_model_names_close_match_and_distribution():
    result = run_cli("train", "example_gausian", "--data", "nowhere", "--out", "x.safetensors")
    assert result.returncode == 1
    assert "example_gaussian" in result.stderr


def test_train_eval_predict_round_trip(tiny_mvtec: Path, tmp_path: Path):
    model = tmp_path / "model.safetensors"
    common = ["--data", str(tiny_mvtec), "--category", "widget", "--input-size", "64"]
    trained = run_cli("train", "example_gaussian", *common, "--out", str(model))
    assert trained.returncode == 0, trained.stderr
    assert model.is_file() and "threshold" in trained.stderr

    out = tmp_path / "eval"
    evaluated = run_cli("eval", "example_gaussian", *common, "--out", str(out), "--max-heatmaps", "2")
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["image_auroc"] > 0.9 and metrics["pixel_auroc"] > 0.9
    assert len(list((out / "heatmaps").glob("*.png"))) == 2

    predicted = run_cli("predict", str(model), str(tiny_mvtec / "widget" / "test" / "scratch"), "--out", str(tmp_path / "p"))
    assert predicted.returncode == 0, predicted.stderr
    rows = json.loads((tmp_path / "p" / "scores.json").read_text())
    assert len(rows) == 3 and all(isinstance(r["anomalous"], bool) for r in rows)
    assert (tmp_path / "p" / "scores.csv").read_text().startswith("path,score,anomalous")
    assert len(list((tmp_path / "p" / "heatmaps").glob("*.png"))) == 3


def test_help_explains_commands():
    result = run_cli("--help")
    for command in ("list", "plugins", "train", "eval", "predict"):
        assert command in result.stdout


@pytest.mark.parametrize("bad", ["coreset", "key=", "=1"])
def test_param_parsing_rejects_malformed_pairs(bad: str):
    from adcore.commands.options import detector_params
    from adcore.errors import ConfigurationError

    args = argparse.Namespace(command="train", param=[bad], input_size=None, seed=None)
    if bad == "key=":
        assert detector_params(args) == {"key": ""}
    else:
        with pytest.raises(ConfigurationError, match="KEY=VALUE"):
            detector_params(args)
