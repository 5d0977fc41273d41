"""Markdown table from benchmarks/ad-distill/results.jsonl (one row per run, newest last)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["main"]


def main(path: str = "benchmarks/ad-distill/results.jsonl") -> None:
    print("| set | model | budget | img AUROC | px AUROC | AUPRO | F1-max | teacher s | fit s | ms/img bs1 / bs8 | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        p = r["params"]
        training = r["training"] if isinstance(r["training"], list) else [r["training"]]
        budget = (f"teacher {p.get('teacher_steps')}×{p.get('teacher_batch_size')} @ lr {p.get('teacher_learning_rate', p.get('teacher_lr', 1e-4))}; "
                  f"student {training[0]['steps']}×{p.get('batch_size')} @ lr {p.get('learning_rate', p.get('lr'))}")
        print(f"| {r['category']} ({r['train_images']} train) | {r['model']} | {budget} | {r['image_auroc']:.3f} | "
              f"{r['pixel_auroc']:.3f} | {r['aupro']:.3f} | {r['image_f1_max']:.3f} | {r['teacher_seconds']:.0f} | "
              f"{r['fit_seconds']:.0f} | {r['ms_batch1']:.0f} / {r['ms_batched']:.0f} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
