"""``adcore predict`` and ``adcore eval`` take an exported artefact in place of the model file (issue 16)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from adcore.cli import main

pytest.importorskip("onnx", reason="adcore[export] (onnx) is not installed")
pytest.importorskip("onnxruntime", reason="adcore[export] (onnxruntime) is not installed")


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def trained(tiny_mvtec: Path, tmp_path: Path, capsys) -> tuple[Path, Path, Path]:
    """(category folder, model file, ONNX export folder) of a calibrated PaDiM at 32 px."""
    category = tiny_mvtec / "widget"
    model = tmp_path / "padim.safetensors"
    code, _, err = _cli(capsys, "train", "padim", str(category), "-p", "input_size=32", "-p", "num_features=16",
                        "--out", str(model))
    assert code == 0, err
    code, _, err = _cli(capsys, "export", str(model), "--out", str(tmp_path / "deploy"))
    assert code == 0, err
    return category, model, tmp_path / "deploy"


def _scores(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "scores.csv", newline="") as handle:
        return {Path(row["path"]).name + Path(row["path"]).parent.name: row for row in csv.DictReader(handle)}


def test_predict_with_an_artefact_writes_the_model_files_numbers(trained, tmp_path: Path, capsys):
    category, model, deploy = trained
    images = str(category / "test")
    code, _, err = _cli(capsys, "predict", str(model), images, "--out", str(tmp_path / "torch"), "--workers", "0")
    assert code == 0, err
    for given in (deploy, deploy / "adcore-export.json"):
        out = tmp_path / f"onnx-{given.name}"
        code, _, err = _cli(capsys, "predict", str(given), images, "--out", str(out), "--workers", "0")
        assert code == 0, err
        want, got = _scores(tmp_path / "torch"), _scores(out)
        assert set(got) == set(want) and len(got) == 6
        for key, row in want.items():
            assert float(got[key]["score"]) == pytest.approx(float(row["score"]), rel=1e-4)
            assert got[key]["anomalous"] == row["anomalous"] and got[key]["threshold"] == row["threshold"]
        run = json.loads((out / "run.json").read_text())
        assert run["detector"] == "padim (onnx artefact)"
        assert len(run["model_sha256"]) == 64


def test_predict_resume_with_an_artefact_keeps_its_identity(trained, tmp_path: Path, capsys):
    category, _, deploy = trained
    out = tmp_path / "out"
    assert _cli(capsys, "predict", str(deploy), str(category / "test" / "good"), "--out", str(out), "--workers", "0")[0] == 0
    code, _, err = _cli(capsys, "predict", str(deploy), str(category / "test" / "good"), "--out", str(out),
                        "--workers", "0", "--resume")
    assert code == 0, err
    assert "already scored" in err


def test_eval_of_an_artefact_gives_the_model_files_metrics(trained, tmp_path: Path, capsys):
    category, model, deploy = trained
    results = {}
    for given in (model, deploy):
        out = tmp_path / f"eval-{given.name}"
        code, table, err = _cli(capsys, "eval", str(given), str(category), "--out", str(out), "--max-heatmaps", "1")
        assert code == 0, err
        assert "image_auroc" in table
        results[given] = json.loads((out / "metrics.json").read_text())
        assert not (out / "model.safetensors").exists() and len(list((out / "heatmaps").iterdir())) == 1
        assert results[given]["fit_seconds"] is None and results[given]["test_images"] == 6
    from_file, from_artefact = results[model], results[deploy]
    assert from_artefact["detector"] == "padim" and from_file["threshold"] == pytest.approx(from_artefact["threshold"])
    for key in ("image_auroc", "pixel_auroc", "aupro", "threshold_f1"):
        assert from_artefact[key] == pytest.approx(from_file[key], abs=1e-3), key


def test_eval_of_a_saved_model_refuses_parameters(trained, capsys):
    category, model, _ = trained
    code, _, err = _cli(capsys, "eval", str(model), str(category), "-p", "input_size=64")
    assert code != 0 and "is a saved model: its parameters are fixed" in err


def test_predict_with_a_folder_that_is_no_export_says_so(tiny_mvtec: Path, tmp_path: Path, capsys):
    code, _, err = _cli(capsys, "predict", str(tiny_mvtec), str(tiny_mvtec / "widget" / "test"), "--out",
                        str(tmp_path / "out"))
    assert code != 0 and "is a folder but not an exported model" in err


# -- export --check default: generated images plus training images -----------------------------------------
def _sidecar(folder: Path) -> dict:
    return json.loads((folder / "adcore-export.json").read_text())


def test_export_checks_parity_on_the_training_images_the_model_file_records(trained, tmp_path: Path, capsys):
    category, model, deploy = trained  # `adcore train` recorded CATEGORY/train/good
    from adcore.factory import load

    assert load(model).training_images_ == str((category / "train" / "good").resolve())
    parity = _sidecar(deploy)["parity"]
    assert parity["sources"] == {"generated": 6, "training": 10} and parity["images"] == 16
    # the folder gone (the model file moved to another machine): generated images only, and a note
    moved = tmp_path / "moved"
    (category / "train").rename(moved)
    code, _, err = _cli(capsys, "export", str(model), "--out", str(tmp_path / "again"))
    assert code == 0, err
    assert _sidecar(tmp_path / "again")["parity"]["sources"] == {"generated": 6}
    assert "no training images in the parity check" in err and "--check-data" in err


def test_export_check_data_adds_a_datasets_training_images(tiny_mvtec: Path, tmp_path: Path, capsys):
    from adcore.factory import get_model
    from adcore.testing import make_normal_images

    model = tmp_path / "gaussian.safetensors"
    get_model("example_gaussian", input_size=32).fit(make_normal_images(4, (32, 32))).save(model)  # records nothing
    code, _, err = _cli(capsys, "export", str(model), "--out", str(tmp_path / "plain"))
    assert code == 0 and _sidecar(tmp_path / "plain")["parity"]["sources"] == {"generated": 6}
    code, _, err = _cli(capsys, "export", str(model), "--out", str(tmp_path / "data"), "--check-data",
                        str(tiny_mvtec / "widget"))
    assert code == 0, err
    assert _sidecar(tmp_path / "data")["parity"]["sources"] == {"generated": 6, "training": 10}
    code, _, err = _cli(capsys, "export", str(model), "--out", str(tmp_path / "both"), "--check-data",
                        str(tiny_mvtec / "widget"), "--check", str(tiny_mvtec / "widget" / "test" / "good"))
    assert code != 0 and "not both" in err
    code, _, err = _cli(capsys, "export", str(model), "--out", str(tmp_path / "files"), "--check",
                        str(tiny_mvtec / "widget" / "test" / "good"))
    assert code == 0 and _sidecar(tmp_path / "files")["parity"]["sources"] == {"files": 3}
