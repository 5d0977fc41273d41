"""``adcore-runtime predict``: Contract B's files, bad files reported and skipped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adcore_runtime.cli import main
from adcore_runtime.outputs import CSV_FIELDS


def _grey(height: int, width: int, box=None) -> np.ndarray:
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        image[y0:y1, x0:x1] = 255
    return image


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "cam1").mkdir(parents=True)
    (root / "cam2").mkdir()
    Image.fromarray(_grey(64, 96, (40, 20, 60, 40))).save(root / "cam1" / "img001.png")
    Image.fromarray(_grey(64, 96)).save(root / "cam2" / "img001.png")
    Image.fromarray(_grey(50, 50)).save(root / "top.jpg")
    (root / "cam2" / "broken.png").write_bytes(b"\x89PNG truncated")
    (root / "notes.txt").write_text("not an image: ignored")
    return root


def _read(out: Path) -> tuple[list[dict], list[dict]]:
    with open(out / "scores.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == CSV_FIELDS
        rows = list(reader)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return rows, records


def test_predict_writes_contract_b(artefact: Path, images: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(artefact), str(images), "--out", str(out)]) == 0
    rows, records = _read(out)
    expected = [str(images / "cam1" / "img001.png"), str(images / "cam2" / "broken.png"),
                str(images / "cam2" / "img001.png"), str(images / "top.jpg")]
    assert [r["path"] for r in rows] == expected == [r["path"] for r in records]
    by_path = {r["path"]: r for r in records}
    defect = by_path[expected[0]]
    assert set(defect) == {"path", "score", "normalized_score", "threshold", "anomalous", "regions", "error"}
    assert defect["anomalous"] is True and defect["threshold"] == 0.2 and defect["error"] is None
    assert defect["normalized_score"] == pytest.approx(1 / (1 + np.exp(-(defect["score"] - 0.2) / 0.05)), rel=1e-5)
    assert len(defect["regions"]) == 1
    region = defect["regions"][0]
    x0, y0, x1, y1 = region["box"]
    assert x0 <= 40 and y0 <= 20 and x1 >= 60 and y1 >= 40 and x1 <= 96 and y1 <= 64  # around the white square
    assert region["area"] > 0 and region["peak"] >= 0.25
    assert by_path[expected[2]]["anomalous"] is False and by_path[expected[2]]["regions"] == []
    broken = by_path[expected[1]]
    assert broken["score"] is None and broken["regions"] == [] and "cannot read image" in broken["error"]
    csv_row = {r["path"]: r for r in rows}
    assert csv_row[expected[0]]["anomalous"] == "true" and csv_row[expected[0]]["regions"] == "1"
    assert float(csv_row[expected[0]]["score"]) == defect["score"]
    assert csv_row[expected[1]]["score"] == "" and "cannot read image" in csv_row[expected[1]]["error"]
    heatmaps = sorted(p.relative_to(out).as_posix() for p in (out / "heatmaps").rglob("*.png"))
    assert heatmaps == ["heatmaps/cam1/img001.png.png", "heatmaps/cam2/img001.png.png", "heatmaps/top.jpg.png"]
    assert Image.open(out / "heatmaps" / "cam1" / "img001.png.png").size == (96, 64)
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.png" in err and "1 of 4 files could not be read" in err


def test_without_pixel_threshold_regions_are_empty_with_a_note(tmp_path: Path, make_artefact, images: Path, capsys):
    folder = make_artefact(tmp_path / "nopix", pixel_threshold=None, pixel_scale=None, threshold=None,
                           score_scale=None)
    out = tmp_path / "out"
    assert main(["predict", str(folder), str(images / "cam1" / "img001.png"), "--out", str(out),
                 "--no-heatmaps"]) == 0
    rows, records = _read(out)
    assert records[0]["regions"] == [] and records[0]["anomalous"] is None and records[0]["threshold"] is None
    assert rows[0]["anomalous"] == "" and rows[0]["regions"] == "" and rows[0]["normalized_score"] == ""
    assert rows[0]["path"] == str(images / "cam1" / "img001.png")
    assert not (out / "heatmaps").exists()
    assert "no pixel threshold" in capsys.readouterr().err


def test_same_names_in_two_inputs_do_not_overwrite(artefact: Path, images: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert main(["predict", str(artefact), str(images / "cam1"), str(images / "cam1" / "img001.png"),
                 "--out", str(out)]) == 0
    assert len(list((out / "heatmaps").rglob("*.png"))) == 2


def test_errors_exit_2_with_a_message(tmp_path: Path, capsys, images: Path):
    assert main(["predict", str(tmp_path / "missing"), str(images), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_results_are_flushed_per_image(artefact: Path, images: Path, tmp_path: Path, monkeypatch):
    from adcore_runtime import runtime as runtime_module

    out, seen = tmp_path / "out", []
    original = runtime_module.Runtime.predict_each

    def spy(self, batch):
        seen.append(len((out / "results.jsonl").read_text().splitlines()) if (out / "results.jsonl").exists() else 0)
        yield from original(self, batch)

    monkeypatch.setattr(runtime_module.Runtime, "predict_each", spy)
    assert main(["predict", str(artefact), str(images), "--out", str(out), "--no-heatmaps"]) == 0
    assert seen == [0, 2, 3]  # before each scored image, every earlier line is already on disk
