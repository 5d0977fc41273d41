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
    env = {"PYTHONPATH": os.pathsep.join([str(broken_plugins_site), os.environ.get("PYTHONPATH", "")])}
    result = run_cli("list", env_extra=env)
    assert result.returncode == 0, result.stderr
    assert "healthy_detector" in result.stdout and "example_gaussian" in result.stdout
    assert "half_registered" not in result.stdout  # a raising hook leaves nothing behind
    for dist, stage in [("ad-import-error", "import"), ("ad-bad-signature", "register"), ("ad-raising", "hook"),
                        ("ad-duplicate", "conflict")]:
        assert dist in result.stderr and f"stage '{stage}'" in result.stderr, (dist, result.stderr)
    report = json.loads(run_cli("plugins", env_extra=env).stdout)
    failed = {f["distribution"]: f for f in report["failures"]}
    assert failed["ad-import-error"]["version"] == "0.1"
    assert "not_a_real_module_xyz" in failed["ad-import-error"]["error"]
    assert "boom in hook" in failed["ad-raising"]["error"]


def test_strict_mode_exits_nonzero(broken_plugins_site: Path):
    env = {"PYTHONPATH": os.pathsep.join([str(broken_plugins_site), os.environ.get("PYTHONPATH", "")])}
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
    rows = [json.loads(line) for line in (tmp_path / "p" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(isinstance(r["anomalous"], bool) for r in rows)
    assert all(0.0 < r["normalized_score"] < 1.0 or r["normalized_score"] in (0.0, 1.0) for r in rows)
    assert (tmp_path / "p" / "scores.csv").read_text().startswith(
        "path,score,normalized_score,threshold,anomalous,regions,error")
    assert len(list((tmp_path / "p" / "heatmaps").glob("*.png.png"))) == 3


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


# -- the table of commands, the dataset grammar, one-line errors -----------------------------------
def test_every_command_module_is_a_row_of_the_table():
    import importlib
    import pkgutil

    import adcore.commands
    from adcore.cli import COMMANDS, build_parser

    names = [command.NAME for command in COMMANDS]
    assert names == ["list", "plugins", "train", "eval", "predict", "export", "benchmark", "serve"]
    for command in COMMANDS:
        assert isinstance(command.HELP, str) and command.HELP
        assert callable(command.add_arguments) and callable(command.run)
        assert {"NAME", "HELP", "add_arguments", "run"} <= set(command.__all__)
    modules = {info.name for info in pkgutil.iter_modules(adcore.commands.__path__)} - {"options"}
    assert modules == {command.__name__.rpartition(".")[2] for command in COMMANDS}
    for name in modules | {"options"}:
        importlib.import_module(f"adcore.commands.{name}")
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == names


def test_listing_and_help_import_no_torch():
    code = ("import sys, contextlib, io; from adcore.cli import main; out = io.StringIO(); "
            "redirect = contextlib.redirect_stdout(out); redirect.__enter__(); main(['list']); "
            "redirect.__exit__(None, None, None); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr


def main_in_process(capsys: pytest.CaptureFixture, *args: str) -> subprocess.CompletedProcess:
    """``adcore ARGS`` through ``adcore.cli.main`` in this process (no interpreter start-up to pay)."""
    from adcore.cli import main

    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["adcore", *args], code, captured.out, captured.err)


def _one_line_error(result: subprocess.CompletedProcess, command: str) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"adcore {command}: error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_an_adcore_error_is_one_line_with_exit_code_1(monkeypatch, capsys):
    from adcore import cli
    from adcore.commands import train
    from adcore.errors import BackboneWeightsError

    def fail(args: argparse.Namespace) -> int:
        raise BackboneWeightsError("could not download pretrained weights for 'resnet18'\nOffline, use a checkpoint")

    monkeypatch.setattr(train, "run", fail)
    assert cli.main(["train", "padim", "somewhere", "--out", "m.safetensors"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "adcore train: error: could not download pretrained weights for 'resnet18'; Offline, use a checkpoint"]


def test_a_hub_backbone_asked_for_offline_is_a_one_line_error(tiny_mvtec: Path, tmp_path: Path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hub-cache")}
    result = run_cli("train", "example_gaussian", str(tiny_mvtec / "widget"), "-p", "backbone=resnet10t",
                     "-p", "layer=layer2", "--input-size", "64", "--out", str(tmp_path / "m.safetensors"), env_extra=env)
    line = _one_line_error(result, "train")
    assert "resnet10t" in line and "checkpoint_path" in line
    assert not (tmp_path / "m.safetensors").exists()


def test_train_on_a_plain_folder_of_good_images(tiny_mvtec: Path, tmp_path: Path):
    from adcore.factory import load

    model = tmp_path / "plain.safetensors"
    result = run_cli("train", "padim", str(tiny_mvtec / "widget" / "train" / "good"), "-p", "input_size=64",
                     "-p", "n_features=32", "--out", str(model))
    assert result.returncode == 0, result.stderr
    assert "fitting padim on 8 good images" in result.stderr  # 10 images, 2 held out for the threshold
    assert "threshold" in result.stderr and "from 2 held-out good images" in result.stderr
    detector = load(model)
    assert detector.threshold_ is not None and detector.get_params()["input_size"] == 64


def test_data_and_category_is_the_same_as_the_category_folder(tiny_mvtec: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture):
    old = main_in_process(capsys, "train", "example_gaussian", "--data", str(tiny_mvtec), "--category", "widget",
                          "--input-size", "64", "--out", str(tmp_path / "a.safetensors"))
    new = main_in_process(capsys, "train", "example_gaussian", str(tiny_mvtec / "widget"), "--input-size", "64",
                          "--out", str(tmp_path / "b.safetensors"))
    assert old.returncode == 0 and new.returncode == 0, (old.stderr, new.stderr)
    assert old.stderr.splitlines()[-1] == new.stderr.splitlines()[-1]  # the same threshold line
    both = main_in_process(capsys, "train", "example_gaussian", str(tiny_mvtec / "widget"), "--data", str(tiny_mvtec),
                           "--out", str(tmp_path / "c.safetensors"))
    assert "give the data once" in _one_line_error(both, "train")


def test_eval_of_a_folder_spec_without_masks_is_image_level(tiny_mvtec: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture):
    widget = tiny_mvtec / "widget"
    out = tmp_path / "eval"
    result = main_in_process(capsys, "eval", "example_gaussian", "--dataset",
                             f"folder:good={widget}/train/good,defect={widget}/test/scratch,test_good={widget}/test/good",
                             "--input-size", "64", "--out", str(out), "--max-heatmaps", "1")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["image_auroc"] > 0.9 and metrics["image_f1_max"] is not None
    assert metrics["pixel_auroc"] is None and metrics["aupro"] is None
    assert "no masks given" in metrics["notes"]["pixel_auroc"] and "no masks given" in metrics["notes"]["aupro"]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in result.stdout.splitlines()[2:]}
    assert rows["pixel_auroc"] == "n/a" and rows["aupro"] == "n/a" and rows["image_auroc"] != "n/a"
    assert "no masks given" in rows["note: pixel_auroc"] and "no masks given" in rows["note: aupro"]
    assert (out / "metrics.md").read_text() == result.stdout


def test_eval_holds_out_good_test_images_when_none_are_given(tiny_mvtec: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture):
    widget = tiny_mvtec / "widget"
    result = main_in_process(capsys, "eval", "example_gaussian", "--dataset",
                             f"folder:good={widget}/train/good,defect={widget}/test/scratch",
                             "--input-size", "64", "--out", str(tmp_path / "eval"), "--max-heatmaps", "0")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # 10 good images: 2 held out as good test images, 8 for training (6 fitted, 2 for the threshold)
    assert (metrics["train_images"], metrics["test_images"]) == (6, 5)
    assert metrics["image_auroc"] is not None and metrics["pixel_auroc"] is None


def test_a_folder_spec_with_masks_evaluates_exactly_like_the_mvtec_layout(tiny_mvtec: Path,
                                                                          capsys: pytest.CaptureFixture):
    widget = tiny_mvtec / "widget"
    spec = (f"folder:train={widget}/train/good,good={widget}/test/good,defect={widget}/test/scratch,"
            f"masks={widget}/ground_truth/scratch")
    tables = [main_in_process(capsys, "eval", "example_gaussian", *data, "--input-size", "64") for data in
              (["--data", str(tiny_mvtec), "--category", "widget"], ["--dataset", spec])]
    for result in tables:
        assert result.returncode == 0, result.stderr
    keep = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "threshold_f1")
    rows = [[line for line in result.stdout.splitlines() if line.split("|")[1].strip() in keep] for result in tables]
    assert rows[0] == rows[1] and len(rows[0]) == len(keep)
    assert "n/a" not in "".join(rows[0])


def test_param_none_means_none_in_train_as_in_benchmark(tiny_mvtec: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture):
    from adcore.benchmark import parse_param
    from adcore.commands.options import detector_params
    from adcore.factory import load

    args = argparse.Namespace(command="train", param=["seed=None", "flag=true", "size=[1, 2]", "name=resnet18"],
                              input_size=None, seed=None)
    params = detector_params(args)
    assert params == {"seed": None, "flag": True, "size": [1, 2], "name": "resnet18"}
    assert {key: parse_param(text)[2] for key, text in zip(params, args.param)} == params
    model = tmp_path / "m.safetensors"
    result = main_in_process(capsys, "train", "example_gaussian", str(tiny_mvtec / "widget"), "--input-size", "64",
                             "-p", "seed=None", "--out", str(model))
    assert result.returncode == 0, result.stderr
    assert load(model).get_params()["seed"] is None


def test_an_option_and_a_param_of_another_value_disagree(tiny_mvtec: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture):
    common = ["train", "example_gaussian", str(tiny_mvtec / "widget"), "--out", str(tmp_path / "m.safetensors")]
    line = _one_line_error(main_in_process(capsys, *common, "--input-size", "64", "-p", "input_size=128"), "train")
    assert "--input-size 64 and -p input_size=128 disagree" in line
    line = _one_line_error(main_in_process(capsys, *common, "--seed", "1", "-p", "seed=2"), "train")
    assert "--seed 1 and -p seed=2 disagree" in line
    assert not (tmp_path / "m.safetensors").exists()
    assert main_in_process(capsys, *common, "--input-size", "64", "-p", "input_size=64").returncode == 0


def test_a_folder_of_fifty_other_files_is_listed_capped(tmp_path: Path, capsys: pytest.CaptureFixture):
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(50):
        (junk / f"notes_{i:02d}.txt").write_text("x")
    for data in ([str(junk)], ["--dataset", f"folder:good={junk}"]):
        result = main_in_process(capsys, "train", "example_gaussian", *data, "--out", str(tmp_path / "m"))
        line = _one_line_error(result, "train")
        assert "50" in line and "notes_09.txt, ... and 40 more" in line and "notes_10.txt" not in line
        assert len(line) < 800


def test_eval_with_tiling_loads_images_at_full_size_and_keeps_the_tiling(tiny_mvtec: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture):
    out = tmp_path / "tiled"
    result = main_in_process(capsys, "eval", "padim", str(tiny_mvtec / "widget"), "-p", "input_size=32",
                             "-p", "tile_size=32", "-p", "num_features=20", "--out", str(out), "--max-heatmaps", "1")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"]["tile_size"] == 32 and metrics["pixel_auroc"] is not None
    import adcore

    detector = adcore.load(out / "model.safetensors")
    assert detector.tile_size == 32 and detector.load_size is None
    import torch

    prediction = detector.predict(torch.rand(1, 3, 48, 48))
    assert tuple(prediction.anomaly_map.shape) == (1, 48, 48)
