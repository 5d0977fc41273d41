"""Learning-curve plot and Markdown table from the JSON records written by ``run.py``.

    .venv/bin/python benchmarks/ad-flow/report.py benchmarks/ad-flow/results/*.json \
        --plot docs/img/ad-flow-learning-curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["main"]


def _fmt(value: object, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+")
    parser.add_argument("--plot", required=True)
    args = parser.parse_args()
    records = [json.loads(Path(path).read_text()) for path in args.records]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in records})
    figure, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for axis, model in zip(axes[0], models, strict=True):
        for record in (r for r in records if r["model"] == model):
            loss = record["loss"]
            label = f"{record['category']} (batch {record['params']['batch_size']})"
            axis.plot(range(1, len(loss) + 1), loss, marker="o", markersize=3, label=label)
        axis.set_title(f"{model}: training loss per epoch")
        axis.set_xlabel("epoch")
        axis.set_ylabel("NLL" + (" per feature dimension" if model == "differnet" else " (sum over levels)"))
        # DifferNet's first epochs on small sets reach 1e7..1e12 per dimension before settling near 0
        axis.set_yscale("symlog", linthresh=1.0)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.plot, dpi=110)

    print("| set | model | epochs (batch) | img AUROC | px AUROC | AUPRO | F1-max | fit s (s/epoch) | ms/img bs1 / batched | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(records, key=lambda r: (r["category"], r["model"])):
        print(f"| {r['category']} ({r['train_images']} train) | {r['model']} | {r['epochs']} ({r['params']['batch_size']}) | {_fmt(r['image_auroc'])} | "
              f"{_fmt(r['pixel_auroc'])} | {_fmt(r['aupro'])} | {_fmt(r['image_f1_max'])} | "
              f"{r['fit_s']:.1f} ({r['train_s_per_epoch']:.1f}) | {r['ms_per_image_bs1']:.0f} / "
              f"{r['ms_per_image_batched']:.0f} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
