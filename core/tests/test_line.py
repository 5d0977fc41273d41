"""The production-line predict pieces in-process: regions, names, outputs, the pipeline, heatmaps."""

from __future__ import annotations

import csv
import os
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adcore.base import BaseDetector
from adcore.errors import InvalidInputError, OutputPathError
from adcore.line import PredictOptions, RunOutputs, collect_inputs, find_regions, run_predictions
from adcore.line.outputs import SCORES_HEADER


class BrightnessDetector(BaseDetector):
    """Map = how much brighter than the training mean each pixel is: a white blob is a defect."""

    def __init__(self, *, input_size: int = 32, seed: int = 0) -> None:
        self.input_size = input_size
        self.seed = seed

    def _fit(self, stream) -> None:
        self.mean_ = torch.cat(list(stream)).mean()

    def _predict(self, images):
        maps = (images.mean(1) - self.mean_).clamp(min=0)
        return maps.amax((1, 2)), maps


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _image(size: int = 40, blob: tuple[int, int, int] | None = None, seed: int = 0) -> np.ndarray:
    ramp = np.add.outer(np.arange(size), np.arange(size)) % 20  # the same texture on every good part
    array = np.repeat((60 + 2 * ramp)[..., None], 3, axis=2).astype(np.uint8)
    if blob is not None:
        y, x, side = blob
        array[y:y + side, x:x + side] = 255
    return array


@pytest.fixture
def model(tmp_path: Path):
    good = torch.from_numpy(np.stack([_image(seed=s) for s in range(8)])).permute(0, 3, 1, 2).float() / 255
    detector = BrightnessDetector().fit(good[:4])
    detector.calibrate(good[4:], pixel_target_fpr=0.001)
    path = tmp_path / "model.bin"
    path.write_bytes(b"model identity")  # run_predictions only hashes the file
    return detector, path


# -- regions --------------------------------------------------------------------------------------------
def test_regions_of_known_blobs():
    amap = np.zeros((50, 60), dtype=np.float32)
    amap[5:10, 10:20] = 2.0  # 5×10 = 50 px
    amap[30:40, 40:43] = 3.0  # 10×3 = 30 px
    amap[45, 0] = 5.0  # a single pixel
    amap[20, 20] = amap[21, 21] = 1.5  # diagonal neighbours: one 8-connected region of 2 px
    regions, mask = find_regions(amap, 1.0)
    assert len(regions) == 4
    assert [(r.box, r.area, r.peak) for r in regions] == [
        ((0, 45, 1, 46), 1, 5.0), ((40, 30, 43, 40), 30, 3.0), ((10, 5, 20, 10), 50, 2.0), ((20, 20, 22, 22), 2, 1.5)]
    assert int(mask.sum()) == 83
    kept, mask = find_regions(amap, 1.0, min_area=3)
    assert [r.area for r in kept] == [30, 50] and int(mask.sum()) == 80
    assert find_regions(np.zeros((4, 4)), 1.0)[0] == []
    assert find_regions(amap, 2.5)[0][1].to_json() == {"box": [40, 30, 43, 40], "area": 30, "peak": 3.0}


# -- names ----------------------------------------------------------------------------------------------
def test_inputs_are_named_by_their_relative_path(tmp_path: Path):
    for camera in ("cam1", "cam2"):
        _write(tmp_path / "line" / camera / "img001.png", _image())
    _write(tmp_path / "line" / "cam1" / "a.png", _image())
    (tmp_path / "line" / "cam1" / "a.jpg").write_bytes((tmp_path / "line" / "cam1" / "a.png").read_bytes())
    names = [item.name for item in collect_inputs([str(tmp_path / "line")])]
    assert names == ["cam1/a.jpg", "cam1/a.png", "cam1/img001.png", "cam2/img001.png"]
    both = collect_inputs([str(tmp_path / "line" / "cam1"), str(tmp_path / "line" / "cam2")])
    assert [item.name for item in both][-2:] == ["cam1/img001.png", "cam2/img001.png"]
    one = collect_inputs([str(tmp_path / "line" / "cam2")])
    assert [(item.path, item.name) for item in one] == [(str(tmp_path / "line" / "cam2" / "img001.png"), "img001.png")]
    with pytest.raises(InvalidInputError, match="does not exist"):
        collect_inputs([str(tmp_path / "nowhere")])


# -- output folder ----------------------------------------------------------------------------------------
def test_output_folder_is_checked_and_foreign_runs_refused(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="is a file"):
        RunOutputs(tmp_path / "file", {}, resume=False)
    with pytest.raises(OutputPathError, match="parent folder .* does not exist"):
        RunOutputs(tmp_path / "missing" / "out", {}, resume=False)
    with RunOutputs(tmp_path / "out", {"model_sha256": "a"}, resume=False) as outputs:
        outputs.append({"path": "x.png", "score": 1.0, "regions": []})
    with pytest.raises(OutputPathError, match="pass --resume"):
        RunOutputs(tmp_path / "out", {"model_sha256": "a"}, resume=False)
    with pytest.raises(OutputPathError, match="another run's outputs .*model_sha256"):
        RunOutputs(tmp_path / "out", {"model_sha256": "b"}, resume=True)
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "scores.csv").write_text("path,score,anomalous\n")
    with pytest.raises(OutputPathError, match="not a resumable"):
        RunOutputs(tmp_path / "legacy", {}, resume=True)


def test_resume_drops_a_cut_line_and_skipped_files(tmp_path: Path):
    with RunOutputs(tmp_path / "out", {"model_sha256": "a"}, resume=False) as outputs:
        outputs.append({"path": "a.png", "score": 1.0, "regions": []})
        outputs.append({"path": "bad.png", "error": "empty"})
        outputs.append({"path": "b.png", "score": 2.0, "regions": []})
    results = tmp_path / "out" / "results.jsonl"
    results.write_text(results.read_text() + '{"path": "c.png", "sco')  # killed mid-line
    with RunOutputs(tmp_path / "out", {"model_sha256": "a"}, resume=True) as outputs:
        assert outputs.done == {"a.png", "b.png"}
    rows = list(csv.reader((tmp_path / "out" / "scores.csv").open(newline="")))
    assert rows[0] == SCORES_HEADER and [r[0] for r in rows[1:]] == ["a.png", "b.png"]
    assert [json.loads(line)["path"] for line in results.read_text().splitlines()] == ["a.png", "b.png"]


def test_resume_sweeps_the_half_written_pngs_of_a_killed_run(tmp_path: Path):
    import subprocess
    import sys

    with RunOutputs(tmp_path / "out", {"model_sha256": "a"}, resume=False) as outputs:
        outputs.append({"path": "a.png", "score": 1.0, "regions": []})
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    half = tmp_path / "out" / "heatmaps" / "cam1" / f".b.png.png.{gone.pid}.q8x_1abz.tmp"  # its writer was killed
    half.parent.mkdir(parents=True)
    half.write_bytes(b"half a png")
    with RunOutputs(tmp_path / "out", {"model_sha256": "a"}, resume=True) as outputs:
        assert outputs.done == {"a.png"}
    assert not half.exists() and half.parent.is_dir()


# -- the pipeline -------------------------------------------------------------------------------------------
def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    _write(root / "cam1" / "img001.png", _image(seed=11))
    _write(root / "cam2" / "img001.png", _image(blob=(5, 8, 6), seed=12))
    _write(root / "cam2" / "big.png", _image(size=70, blob=(40, 50, 8), seed=13))
    (root / "cam1" / "zero.png").write_bytes(b"")
    (root / "cam1" / "j_cut.png").write_bytes((root / "cam1" / "img001.png").read_bytes()[:60])
    _write(root / "cam1" / "one.png", np.zeros((1, 1, 3), dtype=np.uint8))
    _write(root / "cam1" / "line\nbreak, \"quoted\".png", _image(seed=14))
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_a_folder_with_bad_files_scores_the_rest(tmp_path: Path, model, workers: int):
    detector, model_file = model
    root = _folder(tmp_path)
    out = tmp_path / f"out{workers}"
    summary = run_predictions(detector, model_file, collect_inputs([str(root)]),
                              PredictOptions(out=out, batch_size=2, workers=workers, masks=True), echo=None,
                              warn=lambda text: None)
    assert summary.scored == 4 and len(summary.skipped) == 3
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_name = {Path(r["path"]).relative_to(root).as_posix(): r for r in results}
    assert sorted(name for name, r in by_name.items() if r["error"]) == ["cam1/j_cut.png", "cam1/one.png", "cam1/zero.png"]
    assert "empty (0 bytes)" in by_name["cam1/zero.png"]["error"] and "1×1" in by_name["cam1/one.png"]["error"]
    assert by_name["cam2/img001.png"]["anomalous"] is True and by_name["cam1/img001.png"]["anomalous"] is False
    assert by_name["cam2/img001.png"]["normalized_score"] > 0.5 > by_name["cam1/img001.png"]["normalized_score"]
    [blob] = by_name["cam2/img001.png"]["regions"]
    assert blob["box"][0] <= 8 and blob["box"][2] >= 14 and blob["area"] >= 30  # the 6×6 white square
    [big] = by_name["cam2/big.png"]["regions"]  # boxes in the image's own 70×70 pixels
    assert 45 <= big["box"][0] <= 50 and 58 <= big["box"][2] <= 63
    rows = list(csv.DictReader((out / "scores.csv").open(newline="")))
    assert [r["path"] for r in rows] == [r["path"] for r in results]  # the newline name is one quoted row
    assert {r["regions"] for r in rows if not r["error"]} >= {"0", "1"}
    for name in ("cam1/img001.png", "cam2/img001.png", "cam2/big.png"):
        assert (out / "heatmaps" / f"{name}.png").is_file() and (out / "masks" / f"{name}.png").is_file()
    with Image.open(out / "masks" / "cam2" / "big.png.png") as mask:
        assert mask.size == (70, 70)
    with Image.open(out / "heatmaps" / "cam2" / "big.png.png") as heatmap:
        assert heatmap.height == 70 + 16 and heatmap.width > 70  # own resolution, caption and colour bar


def test_a_model_without_threshold_flags_nothing_and_says_so(tmp_path: Path, model):
    _, model_file = model
    detector = BrightnessDetector().fit(torch.rand(2, 3, 32, 32))
    root = tmp_path / "in"
    _write(root / "a.png", _image())
    warnings: list[str] = []
    run_predictions(detector, model_file, collect_inputs([str(root)]), PredictOptions(out=tmp_path / "out"),
                    echo=None, warn=warnings.append)
    assert any("nothing can be flagged" in text for text in warnings)
    [result] = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert result["anomalous"] is None and result["threshold"] is None and result["regions"] is None
    assert "nothing can be flagged" in json.loads((tmp_path / "out" / "run.json").read_text())["warnings"][0]


def test_strict_stops_at_the_first_bad_file_after_writing_the_ones_before(tmp_path: Path, model):
    detector, model_file = model
    root = _folder(tmp_path)
    with pytest.raises(InvalidInputError, match="--strict"):
        run_predictions(detector, model_file, collect_inputs([str(root)]),
                        PredictOptions(out=tmp_path / "out", strict=True, batch_size=4), echo=None,
                        warn=lambda text: None)
    paths = [json.loads(line)["path"] for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [Path(p).name for p in paths] == ["img001.png", "j_cut.png"]  # sorted: j_cut.png follows img001.png


def test_contact_sheet_of_the_most_anomalous(tmp_path: Path, model):
    detector, model_file = model
    root = _folder(tmp_path)
    summary = run_predictions(detector, model_file, collect_inputs([str(root)]),
                              PredictOptions(out=tmp_path / "out", contact_sheet=2, heatmaps=False), echo=None,
                              warn=lambda text: None)
    assert summary.contact_sheet == tmp_path / "out" / "contact-sheet.png"
    with Image.open(summary.contact_sheet) as sheet:
        assert sheet.width > 2 * 224 and sheet.height > 224
    from adcore.line.pipeline import most_anomalous

    top = most_anomalous(tmp_path / "out", 2)
    assert {r["path"] for r in top} == {str(root / "cam2" / "big.png"), str(root / "cam2" / "img001.png")}
    assert top[0]["score"] >= top[1]["score"]  # the parts with a white blob, highest score first


@pytest.mark.parametrize("tile_size", [None, 16])
def test_pipeline_scores_equal_the_python_api(tmp_path: Path, model, tile_size):
    from adcore.data import load_image

    detector, model_file = model
    if tile_size is not None:  # a tiling detector gets full-resolution images (load_size None)
        detector = BrightnessDetector(tile_size=tile_size).fit(torch.rand(2, 3, 32, 32) * 0.3)
        detector.calibrate(torch.rand(4, 3, 48, 48) * 0.3)
        assert detector.load_size is None
    root = _folder(tmp_path)
    run_predictions(detector, model_file, collect_inputs([str(root)]),
                    PredictOptions(out=tmp_path / "out", batch_size=3, heatmaps=False), echo=None,
                    warn=lambda text: None)
    for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines():
        result = json.loads(line)
        if result["error"] is None:
            expected = detector.predict(load_image(result["path"])[None])
            assert result["score"] == pytest.approx(float(expected.pred_score[0]), rel=1e-5, abs=1e-6)
            assert result["normalized_score"] == pytest.approx(float(expected.normalized_score[0]), abs=1e-6)
            assert result["anomalous"] == bool(expected.pred_label[0])


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused_before_any_image(tmp_path: Path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match="cannot write in the output folder .*read-only"):
            RunOutputs(folder, {}, resume=False)
    finally:
        folder.chmod(0o755)


def test_a_full_disk_is_refused_before_any_image(tmp_path: Path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100, 100, 0))
    with pytest.raises(OutputPathError, match="disk .* is full"):
        RunOutputs(tmp_path / "out", {}, resume=False)
