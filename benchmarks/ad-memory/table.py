"""Markdown tables from the JSON lines written by ``run.py`` (``python table.py results.jsonl``)."""

from __future__ import annotations

import json
import sys

__all__ = ["main"]


def _fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def main() -> None:
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    print("| set (train) | model | threads | img AUROC | px AUROC | AUPRO | F1-max | fit s | ms/img bs1 / bs8 | backbone ms bs1 / bs8 | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "image_auroc" not in r:  # fit-only (scaling) runs appear in the second table only
            continue
        print(f"| {r['category']} ({r['train_images']}) | {r['model']} | {r['threads']} | {_fmt(r['image_auroc'])} | {_fmt(r['pixel_auroc'])} | "
              f"{_fmt(r['aupro'])} | {_fmt(r['image_f1_max'])} | {r['fit_seconds']:.1f} | "
              f"{r['ms_per_image_batch1']:.0f} / {r['ms_per_image_batched']:.0f} | "
              f"{r['backbone_ms_batch1']:.0f} / {r['backbone_ms_batched']:.0f} | {r['peak_rss_mb']:.0f} |")
    coreset = [r for r in rows if r.get("model") == "patchcore"]
    if coreset:
        print()
        print("| set (train) | threads | patches | bank | coreset s | it/s | touched/step | fit s | RSS after fit MB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in coreset:
            c = r["coreset"]
            print(f"| {r['category']} ({r['train_images']}) | {r['threads']} | {c['patches_used']} | {r['bank'][0]} | {_fmt(c.get('seconds'), 1)} | "
                  f"{_fmt(c.get('iterations_per_second'), 0)} | {_fmt(c.get('touched_fraction'), 3)} | {r['fit_seconds']:.1f} | "
                  f"{r['rss_after_fit_mb']:.0f} |")
    extra = [(r, kind) for r in rows for kind in ("flat", "ivf", "hnsw") if f"index_{kind}" in r]
    if extra:
        print()
        print("| set | index | img AUROC | px AUROC | AUPRO | ms/img bs1 / bs8 |")
        print("|---|---|---|---|---|---|")
        for r, kind in extra:
            e = r[f"index_{kind}"]
            print(f"| {r['category']} | {kind} | {_fmt(e['image_auroc'])} | {_fmt(e['pixel_auroc'])} | {_fmt(e['aupro'])} | "
                  f"{e['ms_per_image_batch1']:.0f} / {e['ms_per_image_batched']:.0f} |")


if __name__ == "__main__":
    main()
