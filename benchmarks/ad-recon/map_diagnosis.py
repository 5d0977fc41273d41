"""Why `vanilla_ae` and `beta_vae` miss pixel AUROC 0.80 on bottle over seeds 0-2 (issue 23): a probe,
not a benchmark. Each (model, seed) is fitted once exactly as the outside harness fits it (same
loading, same sorted list of tensors, same budget: ``outside_harness.py``), then its reconstructions
are turned into anomaly maps several ways and scored with sklearn's AUROC at 256 px:

* ``default`` — the detector's own ``predict`` (mean over RGB of the squared error at the 128-px
  model size, Gaussian σ = 4 px, bilinear to 256);
* ``manual`` — the same map rebuilt here from ``reconstruct`` (must equal ``default``: checks the probe);
* ``sum_rgb`` — squared error summed instead of averaged over RGB (a constant factor 3: same AUROC);
* ``no_smoothing`` — σ = 0, the residual map as Bergmann et al. publish it (no smoothing);
* ``l2_norm`` — the per-pixel ℓ2 distance √Σ_c (x − x̂)² (Bergmann's wording), then σ = 4;
* ``at_256`` — the reconstruction upsampled to 256 and compared with the 256-px input, σ = 8 at 256
  (the same physical smoothing): what the 128-px model loses by the 256 → 128 → 256 round trip;
* ``no_border`` — the default map, pixels of a 16-px frame (at 256) left out of the AUROC, and
  ``border_share_good`` — the share of the good test images' top-1 % map pixels inside that frame
  (a border artefact would put them there);

and, for the VAEs, ``active_units`` — latent dimensions whose posterior mean varies over the training
images (Cov > 0.01, Burda et al. 2016) and the mean KL per image. With ``--save DIR`` the fitted models
are kept (re-scoring needs no refit). One JSON line per (set, model, seed) to ``--out``.

    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python benchmarks/ad-recon/map_diagnosis.py \\
        --data ../shared/data/mvtec_bottle/bottle --models vanilla_ae,beta_vae --seeds 0,1,2 \\
        --out benchmarks/ad-recon/results/map_diagnosis.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from outside_harness import _stream, read_split  # noqa: E402  (the outside harness's own loading)

import adcore  # noqa: E402
from adcore.ops import gaussian_blur  # noqa: E402

__all__ = ["main", "map_variants"]

BUDGET = {"input_size": 128, "base_channels": 16, "epochs": 12, "batch_size": 8, "learning_rate": 2e-3}
FRAME = 16  # px at 256


def _up(maps: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def map_variants(model: object, test: torch.Tensor, size: int, batch: int) -> dict[str, torch.Tensor]:
    """Every map variant of the docstring for the test images ``(M,3,size,size)``, each ``(M,size,size)``."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("default", "manual", "sum_rgb", "no_smoothing", "l2_norm", "at_256")}
    sigma = float(model.sigma)  # type: ignore[attr-defined]
    model_size = model.image_size  # type: ignore[attr-defined]
    scale = size / model_size[0]
    with torch.no_grad():
        for i in range(0, test.shape[0], batch):
            images = test[i:i + batch]
            out["default"].append(model.predict(images).anomaly_map.float())  # type: ignore[attr-defined]
            small = F.interpolate(images, size=model_size, mode="bilinear", align_corners=False, antialias=True)
            recon = model.reconstruct(images)  # type: ignore[attr-defined]
            squared = (small - recon).pow(2)
            out["manual"].append(_up(gaussian_blur(squared.mean(1), sigma), size))
            out["sum_rgb"].append(_up(gaussian_blur(squared.sum(1), sigma), size))
            out["no_smoothing"].append(_up(squared.mean(1), size))
            out["l2_norm"].append(_up(gaussian_blur(squared.sum(1).sqrt(), sigma), size))
            big = F.interpolate(recon, size=(size, size), mode="bilinear", align_corners=False)
            out["at_256"].append(gaussian_blur((images - big).pow(2).mean(1), sigma * scale))
    return {k: torch.cat(v) for k, v in out.items()}


def _latent_stats(model: object, train: torch.Tensor) -> dict[str, float]:
    if not hasattr(model, "_posterior"):
        return {}
    from ad_recon.vae import kl_divergence

    means, kls = [], []
    with torch.no_grad():
        for i in range(0, train.shape[0], 16):
            small = F.interpolate(train[i:i + 16], size=model.image_size, mode="bilinear",  # type: ignore[attr-defined]
                                  align_corners=False, antialias=True)
            mean, logvar = model._posterior(small)  # type: ignore[attr-defined]
            means.append(mean)
            kls.append(kl_divergence(mean, logvar))
    mean = torch.cat(means)
    return {"active_units": int((mean.var(0) > 0.01).sum()), "latent_dim": int(mean.shape[1]),
            "kl_per_image": float(torch.cat(kls).mean())}


def measure(name: str, seed: int, data: tuple, batch: int, save: Path | None, set_name: str, params: dict) -> dict:
    train, test, labels, masks = data
    model = adcore.get_model(name, **{**params, "seed": seed})
    started = time.perf_counter()
    model.fit(_stream(train, batch, "sorted", seed))
    fit_seconds = time.perf_counter() - started
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        model.save(save / f"{set_name}_{name}_seed{seed}.safetensors")
    test_t = torch.from_numpy(test)
    maps = map_variants(model, test_t, test.shape[-1], batch)
    scores = model.predict(test_t).pred_score.numpy()
    flat_masks = masks.reshape(-1)
    record: dict = {"set": set_name, "model": name, "seed": seed, "params": params, "threads": torch.get_num_threads(),
                    "fit_seconds": round(fit_seconds, 1), "image_auroc": float(roc_auc_score(labels, scores)),
                    "final_loss": float(model.history_["loss"][-1])}
    for key, value in maps.items():
        record[f"pixel_auroc_{key}"] = float(roc_auc_score(flat_masks, value.numpy().reshape(-1)))
    record["max_abs_manual_vs_default"] = float((maps["manual"] - maps["default"]).abs().max())
    inner = np.zeros(masks.shape[1:], dtype=bool)
    inner[FRAME:-FRAME, FRAME:-FRAME] = True
    default = maps["default"].numpy()
    record["pixel_auroc_no_border"] = float(roc_auc_score(masks[:, inner].reshape(-1), default[:, inner].reshape(-1)))
    good = default[labels == 0].reshape(-1)
    top = good >= np.quantile(good, 0.99)
    frame = np.broadcast_to(~inner, default[labels == 0].shape).reshape(-1)
    record["border_share_good_top1pct"] = float(frame[top].mean())
    record["border_area_share"] = float((~inner).mean())
    record.update(_latent_stats(model, torch.from_numpy(train)))
    return record


def _emit(record: dict, out: str | None) -> None:
    """Print one JSON line and append it to ``out`` (when given)."""
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def rescore(files: list[Path], data: tuple, variants: list[dict], batch: int) -> list[dict]:
    """Saved models (``--save``) re-scored with other parameters (e.g. ``{"error": "l2_distance"}``), no refit:
    image and pixel AUROC of the detector's own ``predict`` under each setting."""
    from adcore.factory import load

    _, test, labels, masks = data
    test_t = torch.from_numpy(test)
    records = []
    for path in files:
        model = load(path)
        for variant in [{}] + variants:
            model.set_params(**variant)
            scores, maps = [], []
            with torch.no_grad():
                for i in range(0, test_t.shape[0], batch):
                    prediction = model.predict(test_t[i:i + batch])
                    scores.append(prediction.pred_score)
                    maps.append(prediction.anomaly_map)
            records.append({"file": path.name, "variant": variant or "as saved",
                            "image_auroc": float(roc_auc_score(labels, torch.cat(scores).numpy())),
                            "pixel_auroc": float(roc_auc_score(masks.reshape(-1), torch.cat(maps).numpy().reshape(-1)))})
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an MVTec-layout category folder")
    parser.add_argument("--models", default="vanilla_ae,beta_vae")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--param", action="append", default=[], help="NAME=JSON_VALUE over the bottle budget")
    parser.add_argument("--save", type=Path, default=None, help="keep the fitted models in this folder")
    parser.add_argument("--out", default=None, help="append one JSON line per (model, seed) here")
    parser.add_argument("--rescore", type=Path, nargs="+", help="saved model files: re-score them (no fit) as saved "
                                                               "and with each --variant")
    parser.add_argument("--variant", action="append", default=[], help="JSON object of parameters for --rescore")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rescore:
        for record in rescore(args.rescore, read_split(Path(args.data), 256), [json.loads(v) for v in args.variant],
                              args.batch):
            _emit(record, args.out)
        return 0
    params = dict(BUDGET)
    for item in args.param:
        key, _, value = item.partition("=")
        params[key] = json.loads(value)
    data = read_split(Path(args.data), 256)
    set_name = Path(args.data).name
    for name in args.models.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            _emit(measure(name, seed, data, args.batch, args.save, set_name, params), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
