"""Tiny served models and images: a calibrated PaDiM with random backbone weights at 64 px."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest


def png(image) -> bytes:
    """A ``(3,H,W)`` float tensor in [0, 1] as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    import adcore
    from adcore.testing import make_normal_images

    root = tmp_path_factory.mktemp("serve-model")
    good = make_normal_images(12, (64, 64), seed=3)
    detector = adcore.get_model("padim", weights=None, input_size=64, num_features=20).fit(good[:8])
    detector.calibrate(good[8:])
    return detector.save(root / "line1.safetensors")


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    """``good``, ``defect`` (a pasted defect) and ``wide`` (another size) as PNG bytes; ``corrupt``."""
    from adcore.testing import make_normal_images, paste_defects

    good = make_normal_images(3, (64, 64), seed=7)
    bad, _ = paste_defects(make_normal_images(1, (64, 64), seed=8), seed=9)
    wide = make_normal_images(1, (48, 80), seed=10)
    return {"good": png(good[0]), "good2": png(good[1]), "defect": png(bad[0]), "wide": png(wide[0]),
            "corrupt": png(good[2])[:60]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python -m adcore serve ARGS`` on a free loopback port, its output in ``log``."""

    def __init__(self, args: list[str], folder: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / f"server-{self.port}.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen([sys.executable, "-m", "adcore", "serve", *args, "--port", str(self.port)],
                                        stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "ADCORE_PROGRESS": "0", **(env or {})})

    def wait_ready(self, timeout: float = 90) -> ServerProcess:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited before it was ready:\n{self.output()}"
            try:
                if httpx.get(f"{self.base}/v1/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the server was not ready in time:\n{self.output()}")

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture
def start_server(tmp_path):
    """``start_server(args, env=None)``: a :class:`ServerProcess`, stopped after the test."""
    started: list[ServerProcess] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> ServerProcess:
        started.append(ServerProcess([str(a) for a in args], tmp_path, env))
        return started[-1]

    yield start
    for server in started:
        server.stop()
