"""Issue 23's gap, one factor at a time: fit one detector at seed 0 on bottle, fed as the former harness
fed it (``--feed loader``: ``make_loader(MVTecDataset(..., image_size=256), 16)``, a DataLoader) or as a
plain list of the same tensors (``--feed tensors``), and score it with adcore's metrics as that harness
did. One JSON line per run (image/pixel AUROC and the SHA-256 of the saved model file).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/ad-recon/diagnose_gap.py --model beta_vae --feed loader
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import torch

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="beta_vae")
    parser.add_argument("--root", default="../shared/data/mvtec_bottle")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--feed", choices=("loader", "tensors", "reversed"), default="loader")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from adcore.data import MVTecDataset, make_loader
    from adcore.factory import get_model
    from adcore.metrics import evaluate

    detector = get_model(args.model, input_size=128, base_channels=16, epochs=12, batch_size=8, learning_rate=0.002,
                         seed=args.seed)
    train = MVTecDataset(args.root, args.category, "train", image_size=256)
    test = MVTecDataset(args.root, args.category, "test", image_size=256)
    if args.feed == "loader":
        detector.fit(make_loader(train, 16))
    else:
        images = torch.stack([train[i]["image"] for i in range(len(train))])
        if args.feed == "reversed":
            images = images.flip(0)
        detector.fit([images[i:i + 16] for i in range(0, images.shape[0], 16)])
    scores, maps, labels, masks = [], [], [], []
    for batch in make_loader(test, 16):
        prediction = detector.predict(batch["image"])
        scores.append(prediction.pred_score)
        maps.append(prediction.anomaly_map)
        labels.append(torch.as_tensor(batch["label"]))
        masks.append(batch["mask"])
    metrics = evaluate(torch.cat(labels), torch.cat(scores), torch.cat(masks), torch.cat(maps))
    with tempfile.TemporaryDirectory() as folder:
        digest = hashlib.sha256(Path(detector.save(Path(folder) / "m.safetensors")).read_bytes()).hexdigest()
    line = json.dumps({"model": args.model, "feed": args.feed, "threads": torch.get_num_threads(), "seed": args.seed,
                       "image_auroc": metrics["image_auroc"], "pixel_auroc": metrics.get("pixel_auroc"),
                       "model_sha256": digest})
    print(line, flush=True)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
