"""Ray stays an optional extra: ``import adcore`` and a plain ``adcore predict`` never import it; the
command line's ``--executor ray`` branch starts its own local Ray and writes the usual outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from .conftest import require_ray


@pytest.fixture(scope="module")
def small_line(tmp_path_factory) -> tuple[Path, Path]:
    from PIL import Image

    import adcore
    from adcore.testing import make_normal_images

    root = tmp_path_factory.mktemp("ray-cli")
    good = make_normal_images(14, (40, 40), seed=3)
    detector = adcore.get_model("example_gaussian", input_size=32).fit(good[:6])
    detector.calibrate(good[6:8])
    model = detector.save(root / "model.safetensors")
    for index, image in enumerate(good[8:]):
        path = root / "images" / f"img{index:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    return model, root / "images"


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", ADCORE_PROGRESS="0")


def test_import_adcore_and_a_local_predict_never_import_ray(small_line, tmp_path):
    model, images = small_line
    probe = textwrap.dedent(f"""
        import sys
        import adcore
        assert "ray" not in sys.modules, "import adcore imported ray"
        from adcore.cli import main
        code = main(["predict", {str(model)!r}, {str(images)!r}, "--out", {str(tmp_path / "out")!r}])
        assert code == 0, code
        assert "ray" not in sys.modules and "adcore.scale" not in sys.modules, "adcore predict imported ray"
        print("no ray")
    """)
    done = subprocess.run([sys.executable, "-c", probe], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "no ray" in done.stdout
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == 6


def test_the_ray_driver_reaches_ray_start_before_importing_torch(small_line, tmp_path):
    # torch's import (seconds) is meant to run beside ray.init's start of a local head, not before it
    model, images = small_line
    probe = textwrap.dedent(f"""
        import sys
        import adcore.scale.cluster as cluster
        from adcore.cli import main

        def connect_while(work, options):
            print("torch" in sys.modules, "adcore.scale.predict" in sys.modules)
            raise SystemExit(0)

        cluster.connect_while = connect_while
        main(["predict", {str(model)!r}, {str(images)!r}, "--out", {str(tmp_path / "out")!r}, "--executor", "ray"])
    """)
    done = subprocess.run([sys.executable, "-c", probe], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_predict_executor_ray_on_the_command_line(small_line, tmp_path):
    require_ray()
    model, images = small_line
    command = [sys.executable, "-m", "adcore.cli", "predict", str(model), str(images), "--batch-size", "4",
               "--no-heatmaps"]
    local = subprocess.run([*command, "--out", str(tmp_path / "local")], env=_env(), capture_output=True, text=True,
                           timeout=300)
    assert local.returncode == 0, local.stderr
    timings = tmp_path / "timings.json"
    on_ray = subprocess.run([*command, "--out", str(tmp_path / "ray"), "--executor", "ray", "--actors", "1"],
                            env=dict(_env(), ADCORE_RAY_TIMINGS=str(timings)), capture_output=True, text=True,
                            timeout=300)
    assert on_ray.returncode == 0, on_ray.stderr
    assert "6 of 6 images scored" in on_ray.stderr
    timeline = json.loads(timings.read_text())  # where the run's time went, in the order it went there
    marks = [timeline["marks"][name] for name in ("connect_start", "connected", "stream_start", "first_result",
                                                  "last_result", "outputs_closed", "finished", "disconnected")]
    assert marks == sorted(marks) and marks[1] - marks[0] > 0.1  # ray.init of a local head takes a while
    (actor,) = timeline["actors"]
    assert actor["init_start"] <= actor["model_ready"] <= actor["first_done"]
    assert marks[2] <= actor["init_start"] and actor["first_done"] <= marks[3]
    rows = lambda out: sorted((out / "results.jsonl").read_text().splitlines())  # noqa: E731
    assert rows(tmp_path / "ray") == rows(tmp_path / "local")
    assert json.loads((tmp_path / "ray" / "run.json").read_text())["model_sha256"]
    assert not (tmp_path / "ray" / "heatmaps").exists()


def test_too_many_actors_for_the_cluster_is_refused_with_what_to_do(small_line, tmp_path):
    require_ray()
    model, images = small_line
    done = subprocess.run([sys.executable, "-m", "adcore.cli", "predict", str(model), str(images), "--out",
                           str(tmp_path / "out"), "--executor", "ray", "--actors", "64"], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "do not fit the Ray cluster" in done.stderr and "--actors" in done.stderr
    assert not (tmp_path / "out" / "run.json").exists()  # refused before the folder holds a run


def test_without_ray_the_executor_says_how_to_install_it(monkeypatch):
    from adcore.errors import ConfigurationError
    from adcore.scale import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` raises ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'adcore\[ray\]'"):
        require_ray()


def test_a_missing_model_is_refused_before_ray_starts(small_line, tmp_path):
    require_ray()
    _, images = small_line
    timings = tmp_path / "timings.json"
    done = subprocess.run([sys.executable, "-m", "adcore.cli", "predict", str(tmp_path / "nope.safetensors"),
                           str(images), "--out", str(tmp_path / "out"), "--executor", "ray"],
                          env=dict(_env(), ADCORE_RAY_TIMINGS=str(timings)), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0 and "nope.safetensors does not exist" in done.stderr
    assert not timings.exists()  # no ray.init was marked: Ray never started


def test_what_the_preparation_raises_is_raised_once_ray_is_up(local_ray):
    from adcore.errors import ModelFileError
    from adcore.scale.cluster import connect_while

    def prepare():
        raise ModelFileError("deliberate: the model cannot be opened")

    with pytest.raises(ModelFileError, match="deliberate"):
        with connect_while(prepare) as (_, prepared):
            raise AssertionError(f"the block ran with {prepared!r}")
    assert local_ray.is_initialized()  # a Ray this call did not start is left as it was
    with connect_while(lambda: 42) as (ray, prepared):
        assert prepared == 42 and ray is local_ray
