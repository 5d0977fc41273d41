"""Messages say what happened (issue 22): permission is permission, an empty filter is a filter,
Ctrl-C after a write says it was written, and a killed save's temporary file is cleaned up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from adcore import persistence
from adcore.cli import main
from adcore.data import load_image
from adcore.errors import ImageLoadError, ModelFileError
from adcore.files import atomic_write_bytes


def test_unreadable_image_says_permission(tmp_path, write_image, rgb_array, monkeypatch):
    from PIL import Image

    path = write_image(tmp_path / "a.png", rgb_array)

    def denied(*args, **kwargs):  # the suite may run as root, which chmod cannot stop
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert str(info.value) == (f"cannot read image {path}: permission denied; give this user read access to it "
                               "(or run as a user who has it)")


def test_unreadable_model_file_says_permission(saved_model, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(persistence, "open", denied, raising=False)
    with pytest.raises(ModelFileError) as info:
        persistence.read(saved_model)
    assert str(info.value) == (f"cannot read model file {saved_model}: permission denied; give this user read access "
                               "to it")


@pytest.fixture
def saved_model(mean_detector_class, normal_images, tmp_path) -> Path:
    return mean_detector_class(input_size=32).fit(normal_images).save(tmp_path / "m.safetensors")


def test_list_with_a_filter_that_matches_nothing(capsys):
    assert main(["list", "--category", "nope"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("No detector matched category 'nope'; categories: ")
    assert "statistical" in out and "Run `adcore list` to see every registered detector" in out
    assert main(["list", "zzz*"]) == 0
    assert capsys.readouterr().out.startswith("No detector matched pattern 'zzz*'; categories: ")


def test_ctrl_c_after_the_model_was_written_says_so(capsys, mvtec_tree, tmp_path, monkeypatch):
    from adcore.commands import evaluate

    data = mvtec_tree(train=5, good=2, defects={"scratch": 2}, size=(32, 32))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "_write_heatmaps", interrupted)
    out = tmp_path / "e"
    assert main(["eval", "example_gaussian", str(data), "--input-size", "32", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert (f"adcore eval: interrupted after writing {out / 'model.safetensors'}, {out / 'metrics.json'}, "
            f"{out / 'metrics.md'}: each is complete (written atomically); nothing after it was written") in err
    assert (out / "model.safetensors").is_file()
    # and nothing after it that contradicts it (#22: it used to end "no partial model file was written")
    assert err.rstrip().endswith("nothing after it was written") and "no partial" not in err


def test_ctrl_c_before_anything_was_written_says_that(capsys, mvtec_tree, tmp_path, monkeypatch):
    from adcore.commands import train

    data = mvtec_tree(train=5, good=2, defects={"scratch": 2}, size=(32, 32))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "split_for_fit", interrupted)
    out = tmp_path / "m.safetensors"
    assert main(["train", "example_gaussian", str(data), "--input-size", "32", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "adcore: interrupted; no model file was left half-written (saves are atomic)" in err
    assert "interrupted after writing" not in err and not out.exists()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_killed_saves_temporary_file_is_cleaned_by_the_next_save(tmp_path):
    target = tmp_path / "m.safetensors"
    dead = tmp_path / f".m.safetensors.{_dead_pid()}.abc123.tmp"
    alive = tmp_path / ".m.safetensors.1.def456.tmp"  # pid 1 exists: a write in progress elsewhere
    other = tmp_path / f".other.safetensors.{_dead_pid()}.x.tmp"  # another target's: not ours to touch
    for leftover in (dead, alive, other):
        leftover.write_bytes(b"half")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert not dead.exists() and alive.exists() and other.exists()


def test_a_real_killed_writer_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    target = tmp_path / "m.bin"
    script = (f"import os, adcore.files as f\n"
              f"real = os.replace\n"
              f"os.replace = lambda *a: os._exit(9)  # killed after writing, before the rename\n"
              f"f.atomic_write_bytes({str(target)!r}, b'x' * 1000)\n")
    process = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    assert process.wait() == 9
    (leftover,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftover.name.startswith(f".m.bin.{process.pid}.")  # the writer's pid is in the name
    atomic_write_bytes(target, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"]


def test_a_folder_sweep_removes_every_dead_writers_temporary_and_spares_the_rest(tmp_path):
    from adcore.files import remove_stale_temporaries

    dead_pid = _dead_pid()
    nested = tmp_path / "cam1"
    nested.mkdir()
    dead = [tmp_path / f".a.png.png.{dead_pid}.k2j_8x0q.tmp", nested / f".b.png.png.{dead_pid}.zz1ab_c9.tmp"]
    spared = [tmp_path / ".c.png.png.1.abcdefgh.tmp",  # pid 1 is alive: a write in progress elsewhere
              tmp_path / ".notes.tmp",  # no writer's pid: not an adcore temporary
              tmp_path / "d.png"]
    for path in dead + spared:
        path.write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path) == 2
    assert not any(path.exists() for path in dead) and all(path.exists() for path in spared)


def test_a_write_that_skips_the_stale_look_leaves_other_temporaries_alone(tmp_path):
    target = tmp_path / "m.bin"
    dead = tmp_path / f".m.bin.{_dead_pid()}.abcdefgh.tmp"
    dead.write_bytes(b"half")
    atomic_write_bytes(target, b"new", clean_stale=False)
    assert target.read_bytes() == b"new" and dead.exists()
    atomic_write_bytes(target, b"newer")  # the default look removes it
    assert not dead.exists()
