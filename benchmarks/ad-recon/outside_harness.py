"""An outside check of docs/ad-recon.md: adcore's detectors measured by a harness that shares none of
adcore's data or metric code (issue 23).

Own image loading (PIL + numpy: RGB, resized to ``--size`` with PIL's bilinear filter, masks with
nearest neighbour), own metrics (``sklearn.metrics.roc_auc_score`` over images and over every pixel),
and a fit through the public API only: ``adcore.get_model(name, **params).fit(stream)`` where the
stream is a plain list of float tensors ``(B,3,size,size)`` in [0, 1], the training images in sorted
file order, in batches of ``--batch``; ``predict`` on the test images at ``--size``. One JSON line per
(model, seed) goes to ``--out`` (image and pixel AUROC, fit seconds, the SHA-256 of the saved model
file: equal hashes mean bit-identical models).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/ad-recon/outside_harness.py \\
        --data ../shared/data/mvtec_bottle/bottle --models vanilla_ae,unet_ae,vae,beta_vae --seeds 0,1,2 \\
        --out benchmarks/ad-recon/results/outside_bottle.jsonl

``--order reversed`` / ``--order shuffled`` and another ``--batch`` feed the same images differently:
since adcore puts the training images into a canonical order itself, the model hashes must not change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

import adcore

__all__ = ["main", "load_rgb", "load_mask", "read_split"]

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def load_rgb(path: Path, size: int) -> np.ndarray:
    """``(3, size, size)`` float32 in [0, 1]."""
    with Image.open(path) as image:
        image = image.convert("RGB").resize((size, size), Image.BILINEAR)
        return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0


def load_mask(path: Path | None, size: int) -> np.ndarray:
    if path is None:
        return np.zeros((size, size), dtype=bool)
    with Image.open(path) as mask:
        return np.asarray(mask.convert("L").resize((size, size), Image.NEAREST)) > 127


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS and not p.name.startswith("."))


def read_split(category: Path, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``train (N,3,s,s)``, ``test (M,3,s,s)``, ``labels (M,)``, ``masks (M,s,s)`` of an MVTec category folder."""
    train = np.stack([load_rgb(p, size) for p in _images(category / "train" / "good")])
    test, labels, masks = [], [], []
    for kind in sorted(d.name for d in (category / "test").iterdir() if d.is_dir()):
        for path in _images(category / "test" / kind):
            test.append(load_rgb(path, size))
            labels.append(int(kind != "good"))
            mask = category / "ground_truth" / kind / f"{path.stem}_mask.png"
            masks.append(load_mask(mask if kind != "good" and mask.exists() else None, size))
    return train, np.stack(test), np.array(labels), np.stack(masks)


def _stream(train: np.ndarray, batch: int, order: str, seed: int) -> list[torch.Tensor]:
    indices = list(range(train.shape[0]))
    if order == "reversed":
        indices.reverse()
    elif order == "shuffled":
        random.Random(1000 + seed).shuffle(indices)
    images = torch.from_numpy(np.ascontiguousarray(train[indices]))
    return [images[i:i + batch] for i in range(0, images.shape[0], batch)]


def _model_hash(model: object) -> str | None:
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = model.save(Path(folder) / "model.safetensors")  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a detector that cannot be saved simply has no hash
            return None
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def measure(name: str, params: dict, seed: int, data: tuple, batch: int, order: str) -> dict:
    train, test, labels, masks = data
    model = adcore.get_model(name, **{**params, "seed": seed})
    started = time.perf_counter()
    model.fit(_stream(train, batch, order, seed))
    fit_seconds = time.perf_counter() - started
    scores, maps = [], []
    with torch.no_grad():
        for i in range(0, test.shape[0], batch):
            prediction = model.predict(torch.from_numpy(test[i:i + batch]))
            scores.append(prediction.pred_score.numpy())
            maps.append(prediction.anomaly_map.numpy())
    scores_np, maps_np = np.concatenate(scores), np.concatenate(maps)
    return {
        "model": name, "seed": seed, "order": order, "batch": batch, "threads": torch.get_num_threads(),
        "train_images": int(train.shape[0]), "test_images": int(test.shape[0]), "params": params,
        "image_auroc": float(roc_auc_score(labels, scores_np)),
        "pixel_auroc": float(roc_auc_score(masks.reshape(-1), maps_np.reshape(-1))),
        "fit_seconds": round(fit_seconds, 2), "model_sha256": _model_hash(model),
        "adcore_version": adcore.__version__, "torch_version": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an MVTec category folder (train/good, test/*, ground_truth/*)")
    parser.add_argument("--models", default="vanilla_ae,unet_ae,vae,beta_vae")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--size", type=int, default=256, help="load and predict at this size")
    parser.add_argument("--batch", type=int, default=16, help="batch size of the fit stream and of predict")
    parser.add_argument("--order", choices=("sorted", "reversed", "shuffled"), default="sorted")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--param", action="append", default=[], help="NAME=JSON_VALUE (the budget below by default)")
    parser.add_argument("--out", default=None, help="append one JSON line per (model, seed) here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = {"input_size": 128, "base_channels": 16, "epochs": 12, "batch_size": 8, "learning_rate": 2e-3}
    for item in args.param:
        key, _, value = item.partition("=")
        params[key] = json.loads(value)
    data = read_split(Path(args.data), args.size)
    for name in args.models.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            line = json.dumps(measure(name, params, seed, data, args.batch, args.order))
            print(line, flush=True)
            if args.out:
                with open(args.out, "a", encoding="utf-8") as handle:
                    handle.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
