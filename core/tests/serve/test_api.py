"""The API through the ASGI test client: answers equal ``adcore predict``'s, errors a client can act on."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="adcore serve needs the serve extra: pip install 'adcore[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from adcore.serve import ServeConfig, create_app  # noqa: E402
from adcore.serve.models import ModelSet, _open_model  # noqa: E402

TOKEN = "s3cret-token-for-tests-0123456789"


def _client(model_file: Path, **config) -> TestClient:
    app = create_app(ServeConfig(models={"line1": model_file}, **config))
    return TestClient(app, raise_server_exceptions=False)


def _ready(client: TestClient) -> TestClient:
    assert client.app.state.models.loaded.wait(60)
    return client


def _files(images: dict[str, bytes], *names: str) -> list:
    return [("images", (f"{name}.png", images[name], "image/png")) for name in names]


def test_predict_answers_what_adcore_predict_writes(tiny_model, images, tmp_path):
    from adcore.line import PredictOptions, collect_inputs, run_predictions

    names = ("good", "defect", "wide", "good2")
    folder = tmp_path / "in"
    folder.mkdir()
    for name in names:
        (folder / f"{name}.png").write_bytes(images[name])
    detector = _open_model(tiny_model)
    run_predictions(detector, tiny_model, collect_inputs([str(folder / f"{n}.png") for n in names]),
                    PredictOptions(out=tmp_path / "out", heatmaps=False), echo=None, warn=lambda text: None)
    expected = {Path(r["path"]).stem: r for r in map(json.loads, (tmp_path / "out" / "results.jsonl").read_text().splitlines())}

    with _client(tiny_model) as client:
        _ready(client)
        response = client.post("/v1/models/line1/predict", files=_files(images, *names))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "line1"
    assert [r["filename"] for r in body["results"]] == [f"{n}.png" for n in names]  # the order sent
    for result in body["results"]:
        cli = expected[Path(result["filename"]).stem]
        assert result["score"] == pytest.approx(cli["score"], rel=1e-5, abs=1e-6)
        assert result["normalized_score"] == pytest.approx(cli["normalized_score"], abs=1e-6)
        assert result["anomalous"] == cli["anomalous"] and result["threshold"] == cli["threshold"]
        assert [r["box"] for r in result["regions"]] == [r["box"] for r in cli["regions"]]
        assert "heatmap_png" not in result
    by_name = {Path(r["filename"]).stem: r for r in body["results"]}
    assert by_name["defect"]["score"] > by_name["good"]["score"]
    assert (by_name["wide"]["width"], by_name["wide"]["height"]) == (80, 48)


def test_raw_body_and_heatmap(tiny_model, images):
    from PIL import Image

    with _client(tiny_model) as client:
        _ready(client)
        raw = client.post("/v1/models/line1/predict?heatmap=true", content=images["wide"],
                          headers={"content-type": "image/png", "x-filename": "cam1-001.png"})
        multipart = client.post("/v1/models/line1/predict", files=_files(images, "wide"))
    assert raw.status_code == 200, raw.text
    result = raw.json()["results"][0]
    assert result["part"] == "body" and result["image"] == "cam1-001.png"
    assert result["score"] == pytest.approx(multipart.json()["results"][0]["score"], rel=1e-6)
    picture = Image.open(io.BytesIO(base64.b64decode(result["heatmap_png"])))
    assert picture.format == "PNG" and picture.size == (80, 48)  # at the image's own size


def test_health_is_503_until_every_model_is_open(tiny_model, images):
    release = threading.Event()

    def slow_open(path):
        release.wait(30)
        return _open_model(path)

    models = ModelSet({"line1": tiny_model, "line2": tiny_model}, opener=slow_open)
    app = create_app(ServeConfig(models={"line1": tiny_model, "line2": tiny_model}), models)
    with TestClient(app) as client:
        loading = client.get("/v1/health")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        early = client.post("/v1/models/line1/predict", files=_files(images, "good"))
        assert early.status_code == 503 and early.json()["error"] == "model loading"
        release.set()
        assert models.loaded.wait(60)
        ready = client.get("/v1/health")
        assert ready.status_code == 200 and ready.json() == {"status": "ready",
                                                              "models": {"line1": "ready", "line2": "ready"}}
        listed = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in listed] == ["line1", "line2"]
    assert listed[0] == {"name": "line1", "detector": "padim", "input_size": [64, 64], "tiled": False,
                         "threshold": listed[0]["threshold"], "score_scale": listed[0]["score_scale"],
                         "pixel_threshold": listed[0]["pixel_threshold"], "calibrated": True}
    assert listed[0]["threshold"] > 0 and listed[0]["score_scale"] > 0


def test_errors_say_what_was_wrong(tiny_model, images):
    with _client(tiny_model, max_request_bytes=20_000, max_images=3) as client:
        _ready(client)
        corrupt = client.post("/v1/models/line1/predict", files=_files(images, "good", "corrupt"))
        unknown = client.post("/v1/models/line9/predict", files=_files(images, "good"))
        traversal = client.post("/v1/models/..%2F..%2Fetc%2Fpasswd/predict", files=_files(images, "good"))
        large = client.post("/v1/models/line1/predict", content=b"x" * 30_000, headers={"content-type": "image/png"})
        chunked = client.post("/v1/models/line1/predict", content=iter([b"x" * 8_000] * 4),
                              headers={"content-type": "image/png"})
        text_part = client.post("/v1/models/line1/predict", data={"images": "/etc/passwd"},
                                files=_files(images, "good"))
        wrong_type = client.post("/v1/models/line1/predict", content=b"{}", headers={"content-type": "application/json"})
        too_many = client.post("/v1/models/line1/predict", files=_files(images, *["corrupt"] * 4))
        bad_query = client.post("/v1/models/line1/predict?min_area=0", files=_files(images, "good"))
        no_route = client.get("/v1/nothing")
        page_file = client.get("/static/..%2Fapp.py")
    assert corrupt.status_code == 400
    assert corrupt.json()["error"] == "cannot read image"
    assert {k: corrupt.json()["detail"][k] for k in ("part", "index", "filename")} == \
        {"part": "images", "index": 1, "filename": "corrupt.png"}
    assert "corrupt.png" in corrupt.json()["detail"]["reason"]
    assert unknown.status_code == 404 and unknown.json()["detail"]["models"] == ["line1"]
    assert traversal.status_code == 404 and traversal.json()["error"] in ("unknown model", "not found")
    assert large.status_code == 413 and "20,000 bytes" in large.json()["detail"]
    assert chunked.status_code == 413 and chunked.json()["error"] == "request too large"
    assert text_part.status_code == 400 and text_part.json()["error"] == "not a file"
    assert "never reads a path" in text_part.json()["detail"]["reason"]
    assert wrong_type.status_code == 415 and "multipart/form-data" in wrong_type.json()["detail"]
    assert too_many.status_code == 413 and too_many.json() == {"error": "too many images",
                                                               "detail": "at most 3 images per request"}
    assert bad_query.status_code == 422 and bad_query.json()["detail"][0]["where"] == "query.min_area"
    assert no_route.status_code == 404 and "/v1/openapi.json" in no_route.json()["detail"]
    assert page_file.status_code == 404
    for response in (corrupt, unknown, large, chunked, text_part, wrong_type, too_many, bad_query, no_route):
        assert set(response.json()) == {"error", "detail"}


def test_token_guards_every_v1_route(tiny_model, images):
    with _client(tiny_model, token=TOKEN) as client:
        _ready(client)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for path in ("/v1/health", "/v1/models", "/v1/openapi.json", "/v1/nothing"):
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert refused.json()["error"] == "unauthorized" and refused.headers["www-authenticate"] == "Bearer"
            assert client.get(path, headers={"Authorization": f"Bearer {TOKEN[:-1]}x"}).status_code == 401
        assert client.post("/v1/models/line1/predict", files=_files(images, "good")).status_code == 401
        assert client.get("/v1/health", headers=bearer).status_code == 200
        assert client.post("/v1/models/line1/predict", files=_files(images, "good"), headers=bearer).status_code == 200
        assert client.get("/").status_code == 200  # the page itself holds nothing; its API calls send the token


class _Broken:
    """A model whose predict fails with a message that must not reach the client."""

    def __init__(self, model):
        self.model = model
        self.load_size, self.tiled, self.is_fitted, self.name = model.load_size, False, True, "broken"
        self.threshold_ = self.score_scale_ = self.pixel_threshold_ = self.pixel_scale_ = None
        self.calls = 0

    def predict(self, images):
        self.calls += 1
        if self.calls > 1:  # the warm-up passes
            raise RuntimeError("internal detail /srv/secret/path")
        return self.model.predict(images)


def test_an_unexpected_failure_is_a_plain_500_and_the_trace_is_logged(tiny_model, images, caplog):
    models = ModelSet({"line1": tiny_model}, opener=lambda path: _Broken(_open_model(path)))
    app = create_app(ServeConfig(models={"line1": tiny_model}), models)
    with caplog.at_level(logging.INFO), TestClient(app, raise_server_exceptions=False) as client:
        _ready(client)
        response = client.post("/v1/models/line1/predict", files=_files(images, "good"))
    assert response.status_code == 500
    assert response.json()["error"] == "internal server error"
    assert "secret" not in response.text and "Traceback" not in response.text
    failures = [r for r in caplog.records if r.name == "adcore.serve" and r.exc_info]
    assert failures and "internal detail" in str(failures[0].exc_info[1])
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "adcore.serve.access"]
    assert {"method": "POST", "path": "/v1/models/line1/predict", "status": 500, "model": "line1",
            "images": 1}.items() <= access[-1].items()


def test_one_access_log_line_per_request(tiny_model, images, caplog):
    with caplog.at_level(logging.INFO, logger="adcore.serve.access"), _client(tiny_model) as client:
        _ready(client)
        client.post("/v1/models/line1/predict", files=_files(images, "good", "defect"))
        client.get("/v1/health")
        client.post("/v1/models/line1/predict", content=b"bad", headers={"content-type": "image/png"})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "adcore.serve.access"]
    assert [(l["method"], l["path"], l["status"], l["model"], l["images"]) for l in lines] == [
        ("POST", "/v1/models/line1/predict", 200, "line1", 2), ("GET", "/v1/health", 200, None, None),
        ("POST", "/v1/models/line1/predict", 400, "line1", 1)]
    assert all(isinstance(l["ms"], float) and l["ms"] >= 0 for l in lines)


def test_openapi_schema_describes_the_api(tiny_model):
    with _client(tiny_model) as client:
        schema = client.get("/v1/openapi.json").json()
    assert {"/v1/models/{name}/predict", "/v1/models", "/v1/health"} <= set(schema["paths"])
    body = schema["paths"]["/v1/models/{name}/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "image/*" in body


def test_concurrent_requests_share_batches_and_score_as_alone(tiny_model, images):
    import asyncio

    import httpx

    from adcore.data import load_image

    model = _open_model(tiny_model)
    slow_calls: list[int] = []
    original = model.predict

    def slow_predict(batch):  # slow enough for the queue to fill while the detector is busy
        slow_calls.append(batch.shape[0])
        threading.Event().wait(0.15)
        return original(batch)

    model.predict = slow_predict
    models = ModelSet({"line1": tiny_model}, max_batch=4, wait_s=0.05, opener=lambda path: model)
    models.load_all()
    app = create_app(ServeConfig(models={"line1": tiny_model}), models)
    order = ["good", "defect", "good2", "wide", "good", "defect", "good2", "good"]

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            return await asyncio.gather(*(client.post("/v1/models/line1/predict", files=_files(images, name))
                                          for name in order))

    responses = asyncio.run(run())
    models.close()
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    batch_sizes = models.slots["line1"].batcher.batch_sizes
    assert max(batch_sizes) > 1 and max(batch_sizes) <= 4 and sum(k * v for k, v in batch_sizes.items()) == 8
    for name, response in zip(order, responses):
        alone = original(load_image("x", data=images[name])[None])
        assert response.json()["results"][0]["score"] == pytest.approx(float(alone.pred_score[0]), rel=1e-5, abs=1e-6)


def test_the_batcher_groups_sizes_and_a_refused_image_fails_alone():
    from adcore.errors import InvalidInputError
    from adcore.serve.batching import MicroBatcher

    seen: list[tuple] = []

    class Mean:
        def predict(self, batch):
            seen.append(tuple(batch.shape))
            if (batch < 0).any():
                raise InvalidInputError("negative pixels")
            from adcore.prediction import Prediction

            return Prediction(batch.mean((1, 2, 3)), batch.mean(1))

    batcher = MicroBatcher(Mean(), max_batch=8, wait_s=0.2)
    batcher.expect(4)
    images = [torch.full((3, 4, 4), 0.25), torch.full((3, 6, 4), 0.5), torch.full((3, 4, 4), -1.0),
              torch.full((3, 4, 4), 0.75)]
    futures = batcher.submit(images, announced=4)
    batcher.close()
    assert futures[0].result().score == pytest.approx(0.25) and futures[3].result().score == pytest.approx(0.75)
    assert futures[1].result().amap.shape == (6, 4)
    with pytest.raises(InvalidInputError):
        futures[2].result()
    # one call per size; the refused 4×4 batch again image by image, before the 6×4 one
    assert seen == [(3, 3, 4, 4), (1, 3, 4, 4), (1, 3, 4, 4), (1, 3, 4, 4), (1, 3, 6, 4)]


def test_the_bomb_guard_holds_per_image_and_per_request(tiny_model, images):
    with _client(tiny_model, max_pixels=2 * 64 * 64 + 100) as client:
        _ready(client)
        two = client.post("/v1/models/line1/predict", files=_files(images, "good", "defect"))
        three = client.post("/v1/models/line1/predict", files=_files(images, "good", "defect", "good2"))
    assert two.status_code == 200
    assert three.status_code == 400 and three.json()["detail"]["index"] == 2
    assert "more than 8,292 pixels together" in three.json()["detail"]["reason"]
    with _client(tiny_model, max_pixels=1000) as client:
        _ready(client)
        big = client.post("/v1/models/line1/predict", files=_files(images, "good"))
    assert big.status_code == 400 and "decompression-bomb" in big.json()["detail"]["reason"]
    assert big.json()["detail"]["filename"] == "good.png"


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "I;16", "P"])
def test_uploaded_bytes_decode_as_the_file_does(tmp_path, mode):
    import numpy as np
    from PIL import Image

    from adcore.data import load_image
    from adcore.errors import ImageLoadError

    rng = np.random.default_rng(0)
    if mode == "I;16":
        picture = Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16))
    else:
        picture = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / "part.png"
    picture.save(path)
    assert torch.equal(load_image("upload", data=path.read_bytes()), load_image(path))
    with pytest.raises(ImageLoadError, match="image upload is empty"):
        load_image("upload", data=b"")


def test_a_tiling_model_scores_each_size_at_full_resolution(images, tmp_path):
    import adcore
    from adcore.data import load_image
    from adcore.testing import make_normal_images

    good = make_normal_images(8, (64, 64), seed=3)
    detector = adcore.get_model("padim", weights=None, input_size=32, num_features=20, tile_size=32).fit(good[:5])
    detector.calibrate(good[5:])
    model_file = detector.save(tmp_path / "tiled.safetensors")
    with _client(model_file) as client:
        _ready(client)
        listed = client.get("/v1/models").json()["models"][0]
        response = client.post("/v1/models/line1/predict", files=_files(images, "good", "wide", "defect"))
    assert listed["tiled"] is True and listed["input_size"] is None
    assert response.status_code == 200, response.text
    for name, result in zip(("good", "wide", "defect"), response.json()["results"]):
        alone = detector.predict(load_image(name, data=images[name])[None])
        assert result["score"] == pytest.approx(float(alone.pred_score[0]), rel=1e-5, abs=1e-6)
    assert (response.json()["results"][1]["width"], response.json()["results"][1]["height"]) == (80, 48)


def test_an_exported_artefact_is_served_beside_its_model_file_with_the_same_scores(tiny_model, images, tmp_path):
    pytest.importorskip("onnxruntime", reason="exporting needs the export extra: pip install 'adcore[export]'")
    import adcore
    from adcore.export import export_detector

    artefact = tmp_path / "line1-onnx"
    export_detector(adcore.load(tiny_model), artefact, format="onnx")
    app = create_app(ServeConfig(models={"torch": tiny_model, "onnx": artefact}))
    with TestClient(app, raise_server_exceptions=False) as client:
        _ready(client)
        listed = {m["name"] for m in client.get("/v1/models").json()["models"]}
        assert listed == {"torch", "onnx"}
        answers = {name: client.post(f"/v1/models/{name}/predict", files=_files(images, "good", "defect")).json()
                   for name in ("torch", "onnx")}
    for served, exported in zip(answers["torch"]["results"], answers["onnx"]["results"]):
        assert exported["score"] == pytest.approx(served["score"], rel=1e-4)
        assert exported["anomalous"] == served["anomalous"]
