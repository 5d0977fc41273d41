"""train/eval refuse what can be checked before the work, and say loudly when a model has no
threshold (issue 22). The CLI runs in-process (``adcore.cli.main``) on tiny images."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from adcore.cli import main


@pytest.fixture
def widget(mvtec_tree) -> Path:
    return mvtec_tree(train=5, good=2, defects={"scratch": 2}, size=(32, 32))


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def train(capsys, data: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return cli(capsys, "train", "example_gaussian", str(data), "--input-size", "32", "--out", str(out), *extra)


def test_out_is_a_folder_refused_before_the_fit(capsys, widget, tmp_path):
    code, _, err = train(capsys, widget, tmp_path)
    assert code == 1
    assert f"adcore train: error: cannot write the model file {tmp_path}: it is a folder; give a file name such as " \
           f"{tmp_path / 'model.safetensors'}" in err
    assert "fitting" not in err


def test_out_under_a_file_refused_before_the_fit(capsys, widget, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, _, err = train(capsys, widget, blocker / "model.safetensors")
    assert code == 1 and "a part of its folder path is a file" in err and "fitting" not in err


def test_read_only_out_refused_before_the_fit(capsys, widget, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real = tempfile.mkstemp

    def refuse(*args, **kwargs):  # the suite may run as root, which chmod cannot stop
        if Path(kwargs.get("dir", "")) == locked:
            raise PermissionError(13, "Permission denied")
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    code, _, err = train(capsys, widget, locked / "m.safetensors")
    assert code == 1
    assert f"cannot write the model file {locked / 'm.safetensors'}: permission denied in {locked}" in err
    assert "fitting" not in err


def test_missing_parent_folders_are_created(capsys, widget, tmp_path):
    out = tmp_path / "a" / "b" / "m.safetensors"
    code, stdout, err = train(capsys, widget, out)
    assert code == 0, err
    assert out.is_file() and stdout.strip() == str(out)


@pytest.mark.parametrize("option, value, message", [
    ("--target-fpr", "1.5", "--target-fpr must be in [0, 1), got 1.5"),
    ("--target-fpr", "-0.1", "--target-fpr must be in [0, 1), got -0.1"),
    ("--target-fpr", "nan", "--target-fpr must be in [0, 1), got nan"),
    ("--calibration-fraction", "1", "--calibration-fraction must be in [0, 1), got 1"),
    ("--calibration-fraction", "0.95", "--calibration-fraction 0.95 holds out all 5 good training images, leaving "
                                      "none to fit; lower it (e.g. 0.2)"),
])
def test_fit_options_refused_before_the_fit(capsys, widget, tmp_path, option, value, message):
    code, _, err = train(capsys, widget, tmp_path / "m.safetensors", option, value)
    assert code == 1 and message in err, err
    assert "fitting" not in err and not (tmp_path / "m.safetensors").exists()


def test_calibration_off_saves_with_a_loud_warning(capsys, widget, tmp_path):
    out = tmp_path / "m.safetensors"
    code, _, err = train(capsys, widget, out, "--calibration-fraction", "0")
    assert code == 0 and out.is_file()
    assert ("adcore train: WARNING: calibration is off (--calibration-fraction 0), so the model would have no "
            "threshold. predict will give scores but cannot flag any image as anomalous.") in err


def test_too_few_images_saves_with_a_loud_warning(capsys, mvtec_tree, tmp_path):
    data = mvtec_tree(train=3, good=1, defects={}, size=(32, 32))
    out = tmp_path / "m.safetensors"
    code, _, err = train(capsys, data, out)
    assert code == 0 and out.is_file()
    assert ("WARNING: 3 good training image(s) are too few to hold some out for calibration (4 or more are "
            "needed), so the model would have no threshold") in err


def test_require_threshold_is_an_error_before_the_fit(capsys, mvtec_tree, tmp_path):
    data = mvtec_tree(train=3, good=1, defects={}, size=(32, 32))
    out = tmp_path / "m.safetensors"
    code, _, err = train(capsys, data, out, "--require-threshold")
    assert code == 1 and not out.exists() and "fitting" not in err
    assert "error: --require-threshold: 3 good training image(s) are too few to hold some out" in err
    code, _, err = train(capsys, data, out, "--require-threshold", "--calibration-fraction", "0")
    assert code == 1 and "--require-threshold: calibration is off (--calibration-fraction 0)" in err


def test_eval_checks_its_out_folder_before_the_fit(capsys, widget, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    code, _, err = cli(capsys, "eval", "example_gaussian", str(widget), "--input-size", "32", "--out", str(blocker))
    assert code == 1 and f"cannot use {blocker} as the output folder: it is a file" in err
    code, _, err = cli(capsys, "eval", "example_gaussian", str(widget), "--input-size", "32", "--out",
                       str(tmp_path / "e"), "--target-fpr", "2")
    assert code == 1 and "--target-fpr must be in [0, 1), got 2" in err


def test_eval_require_threshold(capsys, mvtec_tree, tmp_path):
    data = mvtec_tree(train=3, good=1, defects={"scratch": 1}, size=(32, 32))
    code, _, err = cli(capsys, "eval", "example_gaussian", str(data), "--input-size", "32", "--require-threshold")
    assert code == 1 and "--require-threshold: 3 good training image(s) are too few" in err
