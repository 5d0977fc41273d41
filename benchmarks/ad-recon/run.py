"""Benchmark one ad-recon detector on one MVTec-layout category (one process per run: honest peak RSS).

Fits on all good training images, predicts the whole test split at ``--size`` (maps are compared
with the masks at that size, whatever the detector's own ``input_size``), and reports image AUROC,
pixel AUROC, AUPRO, image F1-max, fit seconds, ms/image at batch 1 and batched, and the process's
peak RSS. Appends one JSON line to ``--out``; ``--figure`` writes input / reconstruction / error
map for a few defective test images (one per defect type, round-robin).

    flock /tmp/adcore-bench.lock env OMP_NUM_THREADS=2 .venv/bin/python benchmarks/ad-recon/run.py \\
        --model vanilla_ae --root /work/shared/data/mvtec_bottle --category bottle \\
        --param input_size=128 --param epochs=20 --out benchmarks/ad-recon/results.jsonl
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

__all__ = ["main"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--root", required=True, help="dataset root holding CATEGORY/{train,test,ground_truth}")
    parser.add_argument("--category", required=True)
    parser.add_argument("--size", type=int, default=256, help="image/mask size of the evaluation")
    parser.add_argument("--param", action="append", default=[], help="detector parameter NAME=JSON_VALUE")
    parser.add_argument("--batch", type=int, default=16, help="batch size for prediction and the batched latency")
    parser.add_argument("--out", default=None, help="append a JSON line with the results here")
    parser.add_argument("--figure", default=None, help="write a PNG of input / reconstruction / error map here")
    parser.add_argument("--figure-count", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[],
                        help="also score the fitted model with NAME=JSON_VALUE changed (map/score settings such as "
                             "error=\"ssim\" or image_score=\"max\"; no refit)")
    args = parser.parse_args()

    from adcore.data import MVTecDataset, make_loader
    from adcore.factory import get_model
    from adcore.metrics import evaluate

    params: dict = {}
    for item in args.param:
        name, _, value = item.partition("=")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    detector = get_model(args.model, **params)
    train = MVTecDataset(args.root, args.category, "train", image_size=args.size)
    test = MVTecDataset(args.root, args.category, "test", image_size=args.size)

    started = time.perf_counter()
    detector.fit(make_loader(train, args.batch))
    fit_seconds = time.perf_counter() - started
    rss_after_fit = peak_rss_mb()

    def score_test_set() -> tuple[dict, torch.Tensor, torch.Tensor]:
        scores, maps, labels, masks = [], [], [], []
        for batch in make_loader(test, args.batch):
            prediction = detector.predict(batch["image"])
            scores.append(prediction.pred_score)
            maps.append(prediction.anomaly_map)
            labels.append(torch.as_tensor(batch["label"]))
            masks.append(batch["mask"])
        scores_t, maps_t = torch.cat(scores), torch.cat(maps)
        return evaluate(torch.cat(labels), scores_t, torch.cat(masks), maps_t), scores_t, maps_t

    metrics, scores_t, maps_t = score_test_set()

    sample = torch.stack([test[i]["image"] for i in range(min(args.batch, len(test)))])
    detector.predict(sample[:1])  # warm-up
    started = time.perf_counter()
    for index in range(min(8, sample.shape[0])):
        detector.predict(sample[index:index + 1])
    batch1 = (time.perf_counter() - started) * 1000 / min(8, sample.shape[0])
    started = time.perf_counter()
    detector.predict(sample)
    batched = (time.perf_counter() - started) * 1000 / sample.shape[0]

    variants = {}
    for item in args.variant:  # same fitted weights, other map/score settings
        name, _, value = item.partition("=")
        original = getattr(detector, name)
        detector.set_params(**{name: json.loads(value)})
        found = score_test_set()[0]
        variants[item] = {key: found.get(key) for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")}
        detector.set_params(**{name: original})

    history = getattr(detector, "history_", {}) or {}
    result = {
        "model": args.model, "category": args.category, "size": args.size, "threads": torch.get_num_threads(),
        "train_images": len(train), "test_images": len(test), "params": detector.get_params(),
        "image_auroc": metrics["image_auroc"], "pixel_auroc": metrics.get("pixel_auroc"), "aupro": metrics.get("aupro"),
        "image_f1_max": metrics["image_f1_max"], "fit_seconds": fit_seconds,
        "epochs_run": len(history.get("loss", [])) or None, "final_loss": (history.get("loss") or [None])[-1],
        "ms_batch1": batch1, "ms_batched": batched, "batched_size": sample.shape[0],
        "peak_rss_mb_fit": rss_after_fit, "peak_rss_mb": peak_rss_mb(), "variants": variants,
    }
    line = json.dumps(result)
    print(line)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as handle:
            handle.write(line + "\n")
    if args.figure:
        write_figure(detector, test, scores_t, maps_t, args.figure, args.figure_count, f"{args.model} on {args.category}")


def write_figure(detector, test, scores, maps, path: str, count: int, title: str) -> None:
    """Rows: defective test images (first of each defect type, round-robin); columns: input, reconstruction, error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_type: dict[str, list[int]] = {}
    for index, (_, label, _, defect) in enumerate(test.samples):
        if label == 1:
            by_type.setdefault(defect, []).append(index)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < count and any(depth < len(v) for v in by_type.values()):
        for defect in sorted(by_type):
            if depth < len(by_type[defect]) and len(chosen) < count:
                chosen.append(by_type[defect][depth])
        depth += 1
    images = torch.stack([test[i]["image"] for i in chosen])
    recon = detector.reconstruct(images)
    recon = torch.nn.functional.interpolate(recon, size=images.shape[-2:], mode="bilinear", align_corners=False)
    vmax = float(maps.quantile(0.999)) if maps.numel() < 2**24 else float(maps.max())
    figure, axes = plt.subplots(len(chosen), 3, figsize=(7.5, 2.5 * len(chosen)), squeeze=False)
    for row, index in enumerate(chosen):
        item = test[index]
        axes[row, 0].imshow(item["image"].permute(1, 2, 0).numpy())
        axes[row, 0].set_title(f"{item['defect_type']} (score {float(scores[index]):.3g})", fontsize=8)
        axes[row, 1].imshow(recon[row].clamp(0, 1).permute(1, 2, 0).numpy())
        axes[row, 1].set_title("reconstruction", fontsize=8)
        axes[row, 2].imshow(maps[index].numpy(), cmap="jet", vmin=0, vmax=vmax)
        axes[row, 2].contour(item["mask"].numpy(), levels=[0.5], colors="white", linewidths=0.8)
        axes[row, 2].set_title("error map (mask outlined)", fontsize=8)
        for axis in axes[row]:
            axis.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)


if __name__ == "__main__":
    main()
