"""Print the Markdown results table from the JSON lines written by run.py.

    .venv/bin/python benchmarks/ad-recon/table.py benchmarks/ad-recon/results/*.jsonl
"""

from __future__ import annotations

import json
import sys

__all__ = ["main"]


def _fmt(value: object, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def main() -> None:
    print("| set | model | img AUROC | px AUROC | AUPRO | F1-max | fit s | ms/img bs1 / batched | peak RSS MB |"
          " variants (img / px AUROC) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in sys.argv[1:]:
        for line in open(path):
            r = json.loads(line)
            variants = "; ".join(f"{k}: {_fmt(v['image_auroc'])} / {_fmt(v['pixel_auroc'])}"
                                 for k, v in (r.get("variants") or {}).items())
            print(f"| {r['category']} ({r['train_images']} train) | {r['model']} | {_fmt(r['image_auroc'])} | "
                  f"{_fmt(r['pixel_auroc'])} | {_fmt(r['aupro'])} | {_fmt(r['image_f1_max'])} | "
                  f"{_fmt(r['fit_seconds'], 1)} | {_fmt(r['ms_batch1'], 1)} / {_fmt(r['ms_batched'], 1)} | "
                  f"{_fmt(r['peak_rss_mb'], 0)} | {variants or '—'} |")


if __name__ == "__main__":
    main()
