"""The real server process over HTTP on loopback: ready, answers, logs, and finishes in-flight work on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="adcore serve needs the serve extra: pip install 'adcore[serve]'")
pytest.importorskip("uvicorn", reason="adcore serve needs the serve extra: pip install 'adcore[serve]'")

from adcore.cli import main  # noqa: E402


def _slow_site(tmp_path: Path) -> Path:
    """A sitecustomize that makes each detector call of the server take 1.5 s once FLAG exists, after
    touching STARTED: so a test knows a request is in flight."""
    site = tmp_path / "slow_site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent("""
        import os, pathlib, time
        import adcore.serve.batching as batching
        _score = batching.MicroBatcher._score
        def slow(self, group):
            if pathlib.Path(os.environ["SERVE_SLOW_FLAG"]).exists():
                pathlib.Path(os.environ["SERVE_STARTED"]).touch()
                time.sleep(1.5)
            return _score(self, group)
        batching.MicroBatcher._score = slow
    """))
    return site


def test_real_server_over_http_and_graceful_sigterm(tiny_model, images, tmp_path, start_server):
    from adcore.data import load_image
    from adcore.serve.models import _open_model

    flag, started = tmp_path / "slow-now", tmp_path / "started"
    site = _slow_site(tmp_path)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "SERVE_SLOW_FLAG": str(flag), "SERVE_STARTED": str(started)}
    server = start_server([f"cell={tiny_model}"], env).wait_ready()
    base, process = server.base, server.process
    assert httpx.get(f"{base}/v1/models").json()["models"][0]["name"] == "cell"
    page = httpx.get(f"{base}/")
    assert page.status_code == 200 and "adcore" in page.text
    answer = httpx.post(f"{base}/v1/models/cell/predict",
                        files=[("images", ("d.png", images["defect"], "image/png"))], timeout=30)
    assert answer.status_code == 200, answer.text
    expected = _open_model(tiny_model).predict(load_image("d", data=images["defect"])[None])
    assert answer.json()["results"][0]["score"] == pytest.approx(float(expected.pred_score[0]), rel=1e-5)

    flag.touch()  # from now on each detector call takes 1.5 s
    in_flight: dict = {}

    def post() -> None:
        in_flight["response"] = httpx.post(f"{base}/v1/models/cell/predict",
                                           files=[("images", ("g.png", images["good"], "image/png"))], timeout=60)

    client = threading.Thread(target=post)
    client.start()
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert started.exists(), "the request never reached the detector"
    process.send_signal(signal.SIGTERM)
    client.join(60)
    assert in_flight["response"].status_code == 200  # answered although SIGTERM came while it was scored
    # uvicorn re-raises the signal once the server has shut down: killed by SIGTERM (143 in a shell), after
    # the request above was answered; an older uvicorn exits 0
    assert process.wait(30) in (0, -signal.SIGTERM)
    output = server.output()
    assert "Finished server process" in output and "Traceback" not in output
    access = [json.loads(line) for line in output.splitlines() if line.startswith('{"method"')]
    posts = [a for a in access if a["method"] == "POST"]
    assert [(a["status"], a["model"], a["images"]) for a in posts] == [(200, "cell", 1), (200, "cell", 1)]
    assert posts[1]["ms"] >= 1500


def test_a_model_that_cannot_be_opened_stops_the_server(tmp_path, start_server):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a model file at all")
    server = start_server([broken])
    assert server.process.wait(90) == 1
    assert "model broken" in server.output() and "stopping" in server.output()


def test_other_addresses_need_a_token(tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ADCORE_SERVE_TOKEN", raising=False)
    assert main(["serve", str(tiny_model), "--host", "0.0.0.0"]) == 1
    assert "needs a token" in capsys.readouterr().err
    short = tmp_path / "token"
    short.write_text("abc\n")
    assert main(["serve", str(tiny_model), "--host", "0.0.0.0", "--token-file", str(short)]) == 1
    assert "at least 16 characters" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing.safetensors")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_model_names(tmp_path):
    from adcore.errors import ConfigurationError
    from adcore.serve.config import parse_model_specs

    (tmp_path / "a").mkdir()
    for name in ("line1.safetensors", "a/line1.safetensors"):
        (tmp_path / name).write_bytes(b"")
    export = tmp_path / "deploy" / "padim"
    export.mkdir(parents=True)
    (export / "adcore-export.json").write_text("{}")
    assert parse_model_specs([str(tmp_path / "line1.safetensors"), f"cam2={tmp_path / 'a/line1.safetensors'}",
                              str(export)]) == {"line1": tmp_path / "line1.safetensors",
                                                "cam2": tmp_path / "a/line1.safetensors", "padim": export}
    assert parse_model_specs([str(export / "adcore-export.json")]) == {"padim": export / "adcore-export.json"}
    with pytest.raises(ConfigurationError, match="two models are named 'line1'.*NAME=MODEL"):
        parse_model_specs([str(tmp_path / "line1.safetensors"), str(tmp_path / "a/line1.safetensors")])
    with pytest.raises(ConfigurationError, match="not usable in a URL"):
        parse_model_specs([f"bad name={tmp_path / 'line1.safetensors'}"])
    with pytest.raises(ConfigurationError, match="two models are named 'padim'"):
        parse_model_specs([str(export), str(export / "adcore-export.json")])
