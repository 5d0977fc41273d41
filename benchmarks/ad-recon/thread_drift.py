"""How far one autoencoder's weights drift between 1 and 2 torch threads (same seed, same images), and
what that does to the test metrics (issue 23).

Fits ``--model`` twice on the first ``--train`` bottle training images (adcore's loader at 256 px,
fed as one tensor), once under ``torch.set_num_threads(1)`` and once under 2, then prints one JSON
line: the largest absolute and relative weight difference, the scores' largest relative difference
and each fit's image/pixel AUROC on the whole test split.

    .venv/bin/python benchmarks/ad-recon/thread_drift.py --model vanilla_ae --epochs 12 --train 209
"""

from __future__ import annotations

import argparse
import json

import torch

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vanilla_ae")
    parser.add_argument("--root", default="../shared/data/mvtec_bottle")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train", type=int, default=209, help="how many training images (the first, sorted)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from adcore.data import MVTecDataset
    from adcore.factory import get_model
    from adcore.metrics import evaluate

    train_set = MVTecDataset(args.root, args.category, "train", image_size=256)
    test_set = MVTecDataset(args.root, args.category, "test", image_size=256)
    train = torch.stack([train_set[i]["image"] for i in range(min(args.train, len(train_set)))])
    test = [test_set[i] for i in range(len(test_set))]
    images = torch.stack([item["image"] for item in test])
    labels = torch.tensor([int(item["label"]) for item in test])
    masks = torch.stack([item["mask"] for item in test])
    fits = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        detector = get_model(args.model, input_size=128, base_channels=16, epochs=args.epochs, batch_size=8,
                             learning_rate=0.002, seed=args.seed).fit(train)
        torch.set_num_threads(2)  # score both fits the same way: only the training threads differ
        prediction = detector.predict(images)
        metrics = evaluate(labels, prediction.pred_score, masks, prediction.anomaly_map)
        fits[threads] = (detector.network_.state_dict(), prediction, metrics)
    (w1, p1, m1), (w2, p2, m2) = fits[1], fits[2]
    floats = [name for name in w1 if w1[name].is_floating_point()]
    abs_diff = max(float((w1[n] - w2[n]).abs().max()) for n in floats)
    rel_diff = max(float(((w1[n] - w2[n]).abs() / w1[n].abs().clamp_min(1e-3)).max()) for n in floats)
    score_rel = float(((p1.pred_score - p2.pred_score).abs() / p1.pred_score.abs().clamp_min(1e-12)).max())
    line = json.dumps({"model": args.model, "epochs": args.epochs, "train_images": int(train.shape[0]), "seed": args.seed,
                       "max_abs_weight_diff": abs_diff, "max_rel_weight_diff": rel_diff, "max_rel_score_diff": score_rel,
                       "identical": abs_diff == 0.0,
                       "threads_1": {k: m1[k] for k in ("image_auroc", "pixel_auroc")},
                       "threads_2": {k: m2[k] for k in ("image_auroc", "pixel_auroc")}})
    print(line, flush=True)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
