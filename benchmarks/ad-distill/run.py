"""Benchmark one ad-distill detector on one MVTec-layout category at 256 px (CPU).

Fit on the good training images (a fifth held out for the threshold, as ``adcore eval`` does),
predict the test split, and report image AUROC, pixel AUROC, AUPRO, F1-max, teacher distillation
time, fit time (including distillation), ms/image at batch 1 and batched (``torch.inference_mode``
via ``predict``; EfficientAD feeds channels-last tensors), and peak RSS. Prints one JSON line and
appends it to ``--out`` when given. Always run under the shared lock, e.g.::

    flock /tmp/adcore-bench.lock env OMP_NUM_THREADS=2 ADCORE_PROGRESS=0 .venv/bin/python \\
        benchmarks/ad-distill/run.py efficientad /work/shared/data/mvtec_bottle bottle \\
        --params '{"width": 0.25, "teacher_channels": 64}'
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from adcore.data import MVTecDataset
from adcore.evaluation import evaluate_detector, measure_latency, peak_rss_mb
from adcore.factory import get_model

__all__ = ["main"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["efficientad", "student_teacher"])
    parser.add_argument("root")
    parser.add_argument("category")
    parser.add_argument("--params", default="{}", help="JSON detector parameters (the training budget)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8, help="batch size of the batched latency")
    parser.add_argument("--out", default=None, help="append the JSON line to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    params = json.loads(args.params)
    with tempfile.TemporaryDirectory() as cache:  # a fresh cache: the teacher is distilled in this run
        detector = get_model(args.model, input_size=args.size, cache_dir=cache, **params)
        train = MVTecDataset(args.root, args.category, split="train", image_size=args.size)
        test = MVTecDataset(args.root, args.category, split="test", image_size=args.size)
        started = time.perf_counter()
        result, _ = evaluate_detector(detector, train, test, batch_size=8, latency=False)
        total = time.perf_counter() - started
        images = torch.stack([test[i]["image"] for i in range(min(args.batch, len(test)))])
        batch1, batched = measure_latency(detector, images, batch_size=args.batch)
        if args.model == "efficientad":
            row_extra = {"branch_image_auroc": _efficientad_branches(detector, test)}
        else:
            row_extra = {}
    provenance = detector.teacher_provenance_
    teachers = provenance if isinstance(provenance, (list, tuple)) else [provenance]
    row = {"model": args.model, "category": args.category, "size": args.size, "params": params,
           "image_auroc": result.image_auroc, "pixel_auroc": result.pixel_auroc, "aupro": result.aupro,
           "image_f1_max": result.image_f1_max, "teacher_seconds": sum(t.get("seconds", 0.0) for t in teachers),
           "fit_seconds": result.fit_seconds, "ms_batch1": batch1, "ms_batched": batched, "batched_size": args.batch,
           "peak_rss_mb": peak_rss_mb(), "train_images": result.train_images, "test_images": result.test_images,
           "run_seconds": total, "threads": torch.get_num_threads(),
           "training": detector.training_summary_, "teacher_loss": [(t.get("first_loss"), t.get("final_loss")) for t in teachers]}
    row.update(row_extra)
    line = json.dumps(row, default=str)
    print(line)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(line + "\n")


def _efficientad_branches(detector, test) -> dict[str, float]:
    """Image AUROC of the local (teacher–student) and global (autoencoder–student) maps alone."""
    from sklearn.metrics import roc_auc_score

    from adcore.data import make_loader

    local, global_, labels = [], [], []
    qa_st, qb_st, qa_ae, qb_ae = (float(v) for v in detector.quantiles_)
    with torch.inference_mode():
        for batch in make_loader(test, 8):
            st, ae = detector._raw_maps(batch["image"])
            local.append(((st - qa_st) / (qb_st - qa_st)).flatten(1).amax(1))
            global_.append(((ae - qa_ae) / (qb_ae - qa_ae)).flatten(1).amax(1))
            labels.append(torch.as_tensor(batch["label"]))
    y = torch.cat(labels).numpy()
    return {"local": float(roc_auc_score(y, torch.cat(local).numpy())),
            "global": float(roc_auc_score(y, torch.cat(global_).numpy()))}


if __name__ == "__main__":
    main()
