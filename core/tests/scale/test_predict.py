"""``adcore predict --executor ray`` against the local predict: same scores, same files, resumable,
and an actor killed mid-run loses nothing (every input exactly once)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

IMAGES = 20


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    """A calibrated PaDiM (weights=None, 32 px) and 20 parts in two cameras."""
    import torch
    from PIL import Image

    import adcore
    from adcore.testing import make_normal_images, paste_defects

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ray-line")
    good = make_normal_images(IMAGES + 12, (40, 40), seed=3)
    bad, _ = paste_defects(make_normal_images(4, (40, 40), seed=4), seed=5)
    detector = adcore.get_model("padim", weights=None, input_size=32).fit(good[:8])
    detector.calibrate(good[8:12])
    model = detector.save(root / "model.safetensors")
    parts = list(good[12:12 + IMAGES - 4]) + list(bad)
    for index, image in enumerate(parts):
        path = root / "images" / ("cam1" if index % 2 == 0 else "cam2") / f"img{index // 2:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    return model, root / "images"


def _local(model: Path, images: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``adcore predict`` in a process of its own with one thread, as each actor (one CPU) has: the
    same float reductions in torch and BLAS, so the same scores to the last bit."""
    env = dict(os.environ, OMP_NUM_THREADS="1", ADCORE_PROGRESS="0")
    return subprocess.run([sys.executable, "-m", "adcore.cli", "predict", str(model), str(images), "--out", str(out),
                           "--batch-size", "4", "--masks", *extra], env=env, capture_output=True, text=True,
                          timeout=300)


def _on_ray(model: Path, images: Path, out: Path, *, actors: int = 2, runtime_env=None, **options):
    import adcore
    from adcore.line import collect_inputs
    from adcore.line.pipeline import PredictOptions
    from adcore.scale import RayPredictOptions, predict_on_ray

    inputs = collect_inputs([str(images)], exclude=out)
    warnings: list[str] = []
    summary = predict_on_ray(adcore.load(model), model, inputs,
                             PredictOptions(out=out, batch_size=4, masks=True, **options),
                             RayPredictOptions(actors=actors, runtime_env=runtime_env), given=[str(images)],
                             echo=None, warn=warnings.append)
    return summary, warnings


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def _sorted_lines(path: Path, skip_header: bool = False) -> list[str]:
    lines = path.read_text().splitlines()
    return sorted(lines[1:] if skip_header else lines)


@pytest.fixture(scope="module")
def local_run(line, tmp_path_factory):
    model, images = line
    out = tmp_path_factory.mktemp("local") / "out"
    done = _local(model, images, out)
    assert done.returncode == 0, done.stderr
    return out


def test_ray_predict_writes_exactly_the_local_outputs(local_ray, line, local_run, tmp_path):
    model, images = line
    summary, _ = _on_ray(model, images, tmp_path / "out")
    assert summary.scored == IMAGES and not summary.skipped
    # rows arrive in completion order: the same rows, byte for byte, once sorted
    assert _sorted_lines(tmp_path / "out" / "results.jsonl") == _sorted_lines(local_run / "results.jsonl")
    assert _sorted_lines(tmp_path / "out" / "scores.csv", True) == _sorted_lines(local_run / "scores.csv", True)
    assert (tmp_path / "out" / "scores.csv").read_text().splitlines()[0] == "path,score,normalized_score,threshold,anomalous,regions,error"
    ours, theirs = _files(tmp_path / "out"), _files(local_run)
    assert len(theirs) == 2 * IMAGES and ours.keys() == theirs.keys()  # a heatmap and a mask per scored image
    assert all(ours[name] == theirs[name] for name in theirs)
    scores = [json.loads(line)["score"] for line in _sorted_lines(tmp_path / "out" / "results.jsonl")]
    assert len({s for s in scores if s is not None}) > 1  # real, varying scores


def _rows(path: Path) -> dict[str, dict]:
    return {row["path"]: row for row in map(json.loads, path.read_text().splitlines())}


def _same_rows(ours: dict[str, dict], theirs: dict[str, dict]) -> None:
    """Equal rows, scores to float32 rounding: where the images sharing a detector call differ (a
    resumed run's batches start elsewhere; an unreadable file takes no place in a local batch),
    a detector's batched arithmetic may round the last bit differently."""
    assert ours.keys() == theirs.keys()
    for path, row in theirs.items():
        for key in ("score", "normalized_score"):
            assert ours[path][key] == pytest.approx(row[key], rel=1e-5, abs=1e-6) if row[key] is not None \
                else ours[path][key] is None
        assert {k: v for k, v in ours[path].items() if k not in ("score", "normalized_score", "regions")} == \
            {k: v for k, v in row.items() if k not in ("score", "normalized_score", "regions")}


def test_ray_predict_resumes_a_run_stopped_midway(local_ray, line, local_run, tmp_path):
    model, images = line
    out = tmp_path / "out"
    assert _local(model, images, out).returncode == 0
    kept = (out / "results.jsonl").read_text().splitlines(keepends=True)[:8]
    (out / "results.jsonl").write_text("".join(kept[:7]) + kept[7][:10])  # and a line cut short by a kill
    summary, warnings = _on_ray(model, images, out, resume=True)
    assert summary.already_done == 7 and summary.scored == IMAGES - 7
    assert any("resuming: 7 of 20" in text for text in warnings)
    _same_rows(_rows(out / "results.jsonl"), _rows(local_run / "results.jsonl"))
    with open(out / "scores.csv", newline="") as handle:
        paths = [row["path"] for row in csv.DictReader(handle)]
    assert len(paths) == len(set(paths)) == IMAGES


def test_ray_predict_reports_a_broken_file_as_the_local_predict_does(local_ray, line, tmp_path):
    model, images = line
    folder = tmp_path / "parts"
    folder.mkdir()
    for name in ("img000.png", "img001.png", "img002.png"):
        (folder / name).write_bytes((images / "cam1" / name).read_bytes())
    (folder / "img001b.png").write_bytes(b"not a png")
    assert _local(model, folder, tmp_path / "local").returncode == 3
    summary, _ = _on_ray(model, folder, tmp_path / "ray")
    assert summary.scored == 3 and [path for path, _ in summary.skipped] == [str(folder / "img001b.png")]
    ours, theirs = _rows(tmp_path / "ray" / "results.jsonl"), _rows(tmp_path / "local" / "results.jsonl")
    _same_rows(ours, theirs)
    assert ours[str(folder / "img001b.png")]["error"] == theirs[str(folder / "img001b.png")]["error"]
    assert "cannot read image" in ours[str(folder / "img001b.png")]["error"]


#: installed in the actors only (their runtime_env): the first actor to get img005.png of cam1 dies
#: on it, once (the marker file), as a worker killed mid-run (os._exit: no clean-up, no exception)
DYING_ACTOR = textwrap.dedent('''
    import os
    marker = os.environ.get("ADCORE_TEST_DIE_MARKER")
    if marker:
        import adcore.scale.predict as predict
        _call = predict._Scorer.__call__
        def dying(self, batch):
            names = [str(n) for names in batch["names"] for n in names]
            if "cam1/img005.png" in names and not os.path.exists(marker):
                open(marker, "w").write(str(os.getpid()))
                os._exit(1)
            return _call(self, batch)
        predict._Scorer.__call__ = dying
''')


def test_an_actor_killed_mid_run_loses_nothing_and_duplicates_nothing(local_ray, line, local_run, tmp_path):
    model, images = line
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(DYING_ACTOR)
    marker = tmp_path / "died"
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
                        "ADCORE_TEST_DIE_MARKER": str(marker), "OMP_NUM_THREADS": "1", "ADCORE_PROGRESS": "0"}}
    summary, _ = _on_ray(model, images, tmp_path / "out", runtime_env=env)
    assert marker.is_file()  # an actor did die mid-run, holding a batch
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    paths = [json.loads(line)["path"] for line in lines]
    assert len(paths) == len(set(paths)) == IMAGES  # every input exactly once
    assert sorted(lines) == _sorted_lines(local_run / "results.jsonl")
    assert summary.scored == IMAGES


# -- an exported artefact: actors with adcore-runtime only (no torch, no adcore) -----------------------------
#: installed in the actors only (their runtime_env): torch and adcore cannot be imported there (as on
#: a worker with adcore-runtime alone), and each call of the runtime's actor records what is loaded
NO_TORCH_WORKER = textwrap.dedent('''
    import os, sys
    marker = os.environ.get("ADCORE_TEST_NO_TORCH_MARKER")
    if marker:
        sys.modules["torch"] = None  # `import torch` raises ImportError in this process
        sys.modules["adcore"] = None
        import adcore_runtime.batches as batches
        _call = batches.BatchScorer.__call__
        def reporting(self, batch):
            loaded = sorted(m for m, v in sys.modules.items()
                            if v is not None and m.split(".")[0] in ("torch", "adcore"))
            with open(os.path.join(marker, str(os.getpid())), "w") as handle:
                handle.write(",".join(loaded) or "none")
            return _call(self, batch)
        batches.BatchScorer.__call__ = reporting
''')


@pytest.fixture(scope="module")
def artefact(line, tmp_path_factory):
    """The line's PaDiM exported to ONNX (adcore export's folder)."""
    import adcore
    from adcore.export import export_detector

    model, _ = line
    folder = tmp_path_factory.mktemp("export") / "padim-onnx"
    export_detector(adcore.load(model), folder, "onnx")
    return folder


def _png_pixels(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data))).astype(np.int16)


def test_an_artefact_is_scored_by_actors_without_torch_as_the_local_predict_scores_it(local_ray, line, artefact,
                                                                                       tmp_path):
    from adcore.deployed import open_model
    from adcore.line import collect_inputs
    from adcore.line.pipeline import PredictOptions
    from adcore.scale import RayPredictOptions, predict_on_ray

    _, images = line
    local = tmp_path / "local"
    assert _local(artefact, images, local).returncode == 0
    site, marker = tmp_path / "site", tmp_path / "loaded"
    site.mkdir(), marker.mkdir()
    (site / "sitecustomize.py").write_text(NO_TORCH_WORKER)
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
                        "ADCORE_TEST_NO_TORCH_MARKER": str(marker), "OMP_NUM_THREADS": "1", "ADCORE_PROGRESS": "0"}}
    out = tmp_path / "ray"
    summary = predict_on_ray(open_model(artefact), artefact, collect_inputs([str(images)], exclude=out),
                             PredictOptions(out=out, batch_size=4, masks=True),
                             RayPredictOptions(actors=2, runtime_env=env), given=[str(images)], echo=None,
                             warn=lambda text: None)
    assert summary.scored == IMAGES and not summary.skipped
    reports = [p.read_text() for p in marker.iterdir()]
    assert reports and set(reports) == {"none"}  # the actors ran with neither torch nor adcore loaded

    ours, theirs = _rows(out / "results.jsonl"), _rows(local / "results.jsonl")
    _same_rows(ours, theirs)  # scores to float32 rounding: numpy's resize is torch's to ~1e-7, not to the bit
    for path, row in theirs.items():
        got = ours[path]["regions"]
        assert [(r["box"], r["area"]) for r in got] == [(r["box"], r["area"]) for r in row["regions"]]
        assert [r["peak"] for r in got] == pytest.approx([r["peak"] for r in row["regions"]], rel=1e-5)
    assert sum(bool(row["regions"]) for row in theirs.values()) >= 2  # defects found, so regions are compared
    assert _sorted_lines(out / "scores.csv", True) != [] and (out / "run.json").is_file()
    mine, local_files = _files(out), _files(local)
    assert mine.keys() == local_files.keys() and len(local_files) == 2 * IMAGES
    for name, data in local_files.items():
        if name.startswith("masks/"):
            assert mine[name] == data, name
        elif mine[name] != data:  # a heatmap: a colour a level off where the map rounds differently
            a, b = _png_pixels(mine[name]), _png_pixels(data)
            assert a.shape == b.shape and np.abs(a - b).max() <= 1 and (a != b).any(axis=-1).mean() < 0.01, name
    assert sum(mine[name] == data for name, data in local_files.items()) >= IMAGES  # most files byte for byte


def test_which_actor_scores_which_model(line, artefact, monkeypatch):
    from adcore_runtime.batches import BatchScorer

    import adcore
    from adcore.deployed import open_model
    from adcore.scale.predict import _runtime_scorer, _Scorer

    model, _ = line
    warnings: list[str] = []
    assert _runtime_scorer(adcore.load(model), warnings.append) is _Scorer  # a model file: adcore and torch
    assert _runtime_scorer(open_model(artefact), warnings.append) is BatchScorer and not warnings
    monkeypatch.setitem(sys.modules, "adcore_runtime.batches", None)  # adcore-runtime not installed on the driver
    assert _runtime_scorer(open_model(artefact), warnings.append) is _Scorer
    assert "pip install adcore-runtime" in warnings[0]


def test_blocks_hold_a_few_batches_but_every_actor_gets_several():
    from adcore.scale.predict import BATCHES_PER_BLOCK, MAX_BLOCKS, MIN_BLOCKS_PER_ACTOR, _block_count

    assert _block_count(250, 2) == -(-250 // BATCHES_PER_BLOCK)  # 2,000 images in batches of 8: 63 blocks
    assert _block_count(20, 2) == 2 * MIN_BLOCKS_PER_ACTOR  # a short run still spreads over the pool
    assert _block_count(5, 2) == 5 and _block_count(1, 4) == 1  # never more blocks than batches
    assert _block_count(10**7, 2) == MAX_BLOCKS
