"""Benchmark figures (matplotlib, Agg, PNG) drawn from ``adcore benchmark`` records and run artifacts.

Every function takes the benchmark's rows (one dict per (detector, dataset) pair, as in
``results.json``; a pair run over several seeds is one row of means with ``KEY_std`` beside them,
drawn as error bars and ``±`` — see :func:`adcore.benchmark.report.aggregate_seeds`) and, where it needs per-image data, reads the run's ``runs/<slug>.npz`` (scores,
labels, threshold, small images/masks/maps of fixed test images). Detectors keep one colour in
every figure. Runs that did not finish are shown as such (bar charts) or left out (curves).

Figures: ``auroc_<dataset>.png`` (image and pixel AUROC bars), ``auroc_matrix.png`` (image AUROC,
detectors × datasets), ``accuracy_latency.png``, ``roc_<dataset>.png``, ``scores_<dataset>.png``
(good vs defective score histograms with the calibrated threshold) and ``heatmaps_<dataset>.png``
(the same test images under every detector's anomaly map) and, for runs with ``--curve``,
``curves_<dataset>.png`` (test AUROC against epochs, training loss).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "make_figures",
    "figure_caption",
    "plot_auroc_bars",
    "plot_auroc_matrix",
    "plot_accuracy_latency",
    "plot_roc_curves",
    "plot_score_histograms",
    "plot_heatmap_grid",
    "plot_learning_curves",
    "detector_colours",
]

_DPI = 110


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # object API: no pyplot global state, Agg canvas

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _save(fig: Any, path: Path, *, palette: bool = False) -> Path:
    """Write ``fig`` as PNG; ``palette`` quantises photo-like figures to 256 colours (about 4× smaller files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not palette:
        fig.savefig(path, dpi=_DPI)
        return path
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=_DPI, format="png")
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def _wrap(text: str, width_inches: float, fontsize: float) -> str:
    """Wrap a title to the figure's width (about 1 character per 0.6 × fontsize points)."""
    import textwrap

    characters = max(20, int(width_inches * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.wrap(text, characters))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def detector_colours(detectors: Sequence[str]) -> dict[str, Any]:
    """One stable colour per detector (tab20 order; cycles beyond 20)."""
    from matplotlib import colormaps

    palette = colormaps["tab20"].colors
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))  # dark shades first, light ones after
    return {name: palette[order[i % 20]] for i, name in enumerate(detectors)}


def _ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status") == "ok"]


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _artifact(run_root: Path, row: dict[str, Any]) -> dict[str, np.ndarray] | None:
    relative = row.get("artifacts")
    if not relative or not (run_root / relative).is_file():
        return None
    with np.load(run_root / relative, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


# ---------------------------------------------------------------------------------------------
def plot_auroc_bars(rows: list[dict[str, Any]], dataset: str, detectors: Sequence[str], colours: dict[str, Any],
                    path: Path) -> Path:
    """Image AUROC (solid) and pixel AUROC (hatched) per detector on one dataset; unfinished runs labelled."""
    mine = {r["detector"]: r for r in rows if r["dataset"] == dataset}
    names = [d for d in detectors if d in mine]
    fig = _figure(max(6.0, 0.62 * len(names) + 2.0), 4.2)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    width = 0.38
    values = [v for r in mine.values() for v in (_number(r.get("image_auroc")), _number(r.get("pixel_auroc"))) if v is not None]
    low = max(0.0, math.floor((min(values + [0.9]) - 0.05) * 10) / 10)
    for i, name in enumerate(names):
        row = mine[name]
        if row.get("status") != "ok":
            ax.text(i, (low + 1.0) / 2, row.get("status", "?"), rotation=90, ha="center", va="center", fontsize=8,
                    color="dimgray", bbox={"facecolor": "whitesmoke", "edgecolor": "lightgray", "boxstyle": "round"})
            continue
        for offset, key, hatch in ((-width / 2, "image_auroc", None), (width / 2, "pixel_auroc", "///")):
            value = _number(row.get(key))
            if value is None:
                continue
            spread = _number(row.get(f"{key}_std"))
            ax.bar(i + offset, value - low, width, bottom=low, color=colours[name], hatch=hatch,
                   edgecolor="white" if hatch else colours[name], linewidth=0,
                   yerr=spread, error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "black"})
            label = f"{value:.3f}" if spread is None else f"{value:.3f}±{spread:.3f}"
            ax.text(i + offset, value + (spread or 0.0) + 0.004, label, rotation=90, ha="center", va="bottom",
                    fontsize=6.5)
    ax.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(low, 1.0 + 0.14 * (1.0 - low) + 0.02)  # room for the value labels above bars at 1.0
    ax.set_yticks([t for t in ax.get_yticks() if low <= t <= 1.0 + 1e-9])
    ax.set_ylabel("AUROC")
    ax.set_title(f"{dataset}: image and pixel AUROC per detector", fontsize=10, loc="left")
    ax.grid(axis="y", alpha=0.3)
    ax.set_xlim(-0.6, len(names) - 0.4)
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(facecolor="gray", label="image AUROC"),
                        Patch(facecolor="gray", hatch="///", edgecolor="white", label="pixel AUROC")],
               loc="outside upper right", ncols=2, fontsize=8)
    return _save(fig, path)


def plot_auroc_matrix(rows: list[dict[str, Any]], datasets: Sequence[str], detectors: Sequence[str], path: Path,
                      key: str = "image_auroc", label: str = "image AUROC") -> Path:
    """A detectors × datasets matrix of one metric, numbers printed in each cell, unfinished runs named."""
    lookup = {(r["detector"], r["dataset"]): r for r in rows}
    grid = np.full((len(detectors), len(datasets)), np.nan)
    for i, name in enumerate(detectors):
        for j, dataset in enumerate(datasets):
            value = _number(lookup.get((name, dataset), {}).get(key))
            if value is not None and lookup[(name, dataset)].get("status") == "ok":
                grid[i, j] = value
    fig = _figure(1.3 * len(datasets) + 2.8, 0.36 * len(detectors) + 1.6)
    ax = fig.add_subplot()
    finite = grid[np.isfinite(grid)]
    low = min(0.5, float(finite.min())) if finite.size else 0.5
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=low, vmax=1.0, aspect="auto")
    for i, name in enumerate(detectors):
        for j, dataset in enumerate(datasets):
            row = lookup.get((name, dataset), {})
            spread = _number(row.get(f"{key}_std"))
            text = f"{grid[i, j]:.3f}" if np.isfinite(grid[i, j]) else (row.get("status") or "—")
            if spread is not None and np.isfinite(grid[i, j]):
                text += f"\n±{spread:.3f}"
            dark = np.isfinite(grid[i, j]) and not 0.15 < (grid[i, j] - low) / max(1.0 - low, 1e-9) < 0.85
            colour = "white" if dark else ("black" if np.isfinite(grid[i, j]) else "dimgray")
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(datasets)), datasets, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(detectors)), detectors, fontsize=8)
    ax.set_title(f"{label} per detector and dataset", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, label=label)
    return _save(fig, path)


def plot_accuracy_latency(rows: list[dict[str, Any]], detectors: Sequence[str], datasets: Sequence[str],
                          colours: dict[str, Any], path: Path) -> Path:
    """Image AUROC against ms/image at batch 1: one marker shape per dataset, one colour per detector."""
    markers = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "*"]
    fig = _figure(9.0, 5.2)
    ax = fig.add_subplot()
    shown_detectors: list[str] = []
    for row in _ok(rows):
        x, y = _number(row.get("ms_per_image_batch1")), _number(row.get("image_auroc"))
        if x is None or y is None or row["dataset"] not in datasets:
            continue
        marker = markers[list(datasets).index(row["dataset"]) % len(markers)]
        ax.scatter(x, y, s=46, marker=marker, color=colours[row["detector"]], edgecolor="black", linewidth=0.4, alpha=0.9)
        spread = _number(row.get("image_auroc_std"))
        if spread is not None:
            ax.errorbar(x, y, yerr=spread, color=colours[row["detector"]], linewidth=0.8, capsize=2)
        if row["detector"] not in shown_detectors:
            shown_detectors.append(row["detector"])
    ax.set_xscale("log")
    values = [_number(r.get("image_auroc")) for r in _ok(rows)]
    values = [v for v in values if v is not None]
    if values:
        ax.set_ylim(max(0.0, min(values) - 0.05), 1.01 if max(values) <= 1.0 else None)
    ax.set_xlabel("ms per image at batch 1 (log scale)")
    ax.set_ylabel("image AUROC")
    ax.set_title("Accuracy versus latency (each point: one detector on one dataset)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    from matplotlib.lines import Line2D

    detector_handles = [Line2D([], [], marker="o", linestyle="", color=colours[d], markeredgecolor="black",
                               markeredgewidth=0.4, label=d) for d in detectors if d in shown_detectors]
    dataset_handles = [Line2D([], [], marker=markers[i % len(markers)], linestyle="", color="lightgray",
                              markeredgecolor="black", label=d) for i, d in enumerate(datasets)]
    fig.legend(handles=detector_handles + [Line2D([], [], linestyle="", label=" ")] + dataset_handles,
               loc="outside right upper", fontsize=8, title="colour: detector\nshape: dataset", title_fontsize=8)
    return _save(fig, path)


def plot_roc_curves(rows: list[dict[str, Any]], dataset: str, detectors: Sequence[str], colours: dict[str, Any],
                    run_root: Path, path: Path) -> Path | None:
    """Image-level ROC curves of every finished detector on one dataset, AUROC in the legend."""
    from adcore.metrics import UndefinedMetricError, roc_curve

    fig = _figure(6.8, 5.4)
    ax = fig.add_subplot()
    drawn = 0
    for name in detectors:
        row = next((r for r in _ok(rows) if r["dataset"] == dataset and r["detector"] == name), None)
        data = _artifact(run_root, row) if row else None
        if data is None:
            continue
        try:
            fpr, tpr, _ = roc_curve(data["labels"], data["scores"])
        except (UndefinedMetricError, ValueError):
            continue
        area = float(np.trapezoid(tpr, fpr))
        ax.plot(fpr, tpr, color=colours[name], linewidth=1.5, label=f"{name} ({area:.3f})", alpha=0.9)
        drawn += 1
    if not drawn:
        return None
    ax.plot([0, 1], [0, 1], linestyle=":", color="gray", linewidth=1)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false-positive rate (good test images flagged)")
    ax.set_ylabel("true-positive rate (defective images found)")
    ax.set_title(f"{dataset}: image-level ROC (legend: AUROC)", fontsize=10)
    ax.legend(loc="lower right", fontsize=7.5, framealpha=0.9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_score_histograms(rows: list[dict[str, Any]], dataset: str, detectors: Sequence[str], run_root: Path,
                          path: Path) -> Path | None:
    """Per detector: scores of good vs defective test images, and the threshold calibrated on held-out good train images."""
    panels = []
    for name in detectors:
        row = next((r for r in _ok(rows) if r["dataset"] == dataset and r["detector"] == name), None)
        data = _artifact(run_root, row) if row else None
        if data is not None and data["scores"].size:
            panels.append((name, row, data))
    if not panels:
        return None
    columns = min(4, len(panels))
    lines = math.ceil(len(panels) / columns)
    fig = _figure(3.3 * columns, 2.5 * lines + 0.5)
    axes = fig.subplots(lines, columns, squeeze=False)
    for index, (name, row, data) in enumerate(panels):
        ax = axes[index // columns][index % columns]
        scores, labels = data["scores"].astype(np.float64), data["labels"] > 0
        threshold = float(data["threshold"]) if np.isfinite(data["threshold"]) else None
        finite = scores[np.isfinite(scores)]
        edges = np.histogram_bin_edges(np.r_[finite, [threshold] if threshold is not None else []], bins=30)
        ax.hist(scores[~labels], bins=edges, color="tab:blue", alpha=0.6, label=f"good ({int((~labels).sum())})")
        ax.hist(scores[labels], bins=edges, color="tab:red", alpha=0.6, label=f"defective ({int(labels.sum())})")
        if threshold is not None:
            ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label="threshold")
        auroc = _number(row.get("image_auroc"))
        ax.set_title(f"{name}  (AUROC {auroc:.3f})" if auroc is not None else name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        ax.xaxis.get_offset_text().set_fontsize(7)
        if index == 0:
            ax.legend(fontsize=7, loc="upper right", framealpha=0.9)
    for index in range(len(panels), lines * columns):
        axes[index // columns][index % columns].set_visible(False)
    fig.suptitle(_wrap(f"{dataset}: image scores of good vs defective test images; dashed = threshold from "
                       "held-out good training images (1 % FPR target)", 3.3 * columns, 10), fontsize=10)
    fig.supxlabel("anomaly score (each detector's own scale)", fontsize=9)
    fig.supylabel("test images", fontsize=9)
    return _save(fig, path)


def plot_heatmap_grid(rows: list[dict[str, Any]], dataset: str, detectors: Sequence[str], run_root: Path,
                      path: Path) -> Path | None:
    """Rows: the same test images; columns: image, ground truth, then each detector's map over the image.

    Each detector's maps share one colour scale (its lowest to highest value over the shown images),
    so within a column the rows compare directly, including the defect-free image at the bottom.
    """
    panels = []
    reference = None
    for name in detectors:
        row = next((r for r in _ok(rows) if r["dataset"] == dataset and r["detector"] == name), None)
        data = _artifact(run_root, row) if row else None
        if data is None or not len(data["sample_index"]):
            continue
        if reference is None:
            reference = data
        if list(data["sample_index"]) != list(reference["sample_index"]):
            continue  # a different test listing (should not happen within one dataset)
        panels.append((name, data))
    if not panels or reference is None:
        return None
    images, masks = reference["sample_images"], reference["sample_masks"]
    count = len(images)
    defect_types = reference["defect_types"]
    columns = 2 + len(panels)
    fig = _figure(1.45 * columns + 0.3, 1.55 * count + 0.7)
    axes = fig.subplots(count, columns, squeeze=False)
    for i in range(count):
        index = int(reference["sample_index"][i])
        kind = str(defect_types[index]) if index < len(defect_types) else ""
        axes[i][0].imshow(images[i])
        axes[i][0].set_ylabel(kind, fontsize=8)
        axes[i][1].imshow(images[i])
        axes[i][1].contour(masks[i].astype(float), levels=[0.5], colors="lime", linewidths=0.9)
    for j, (_, data) in enumerate(panels):
        maps = data["sample_maps"].astype(np.float32)
        # one scale per detector over all shown images (not per image), so the good image's map shows
        # how much the detector reacts to nothing; image thresholds are not on the maps' scale for every
        # method (SPADE, DifferNet, autoencoders score images differently), so they are not used here
        low, high = float(np.nanmin(maps)), float(np.nanmax(maps))
        scaled = (maps - low) / max(high - low, 1e-12)
        for i in range(count):
            ax = axes[i][2 + j]
            ax.imshow(data["sample_images"][i])
            ax.imshow(np.clip(scaled[i], 0, 1), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    titles = ["image", "ground truth"] + [name for name, _ in panels]
    for j, title in enumerate(titles):
        axes[0][j].set_title(title, fontsize=8)
    for row_axes in axes:
        for ax in row_axes:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(_wrap(f"{dataset}: anomaly maps on the same test images (red = more anomalous; one colour scale "
                       "per detector over its column; green outline = ground truth)", 1.45 * columns + 0.3, 9),
                 fontsize=9)
    return _save(fig, path, palette=True)


def plot_learning_curves(rows: list[dict[str, Any]], dataset: str, detectors: Sequence[str], colours: dict[str, Any],
                         path: Path) -> Path | None:
    """Runs recorded with ``--curve``: test-set image and pixel AUROC against epochs (the last point is
    the finished run's own result), and the training loss per epoch beside them."""
    panels = [(name, row) for name in detectors for row in _ok(rows)
              if row["dataset"] == dataset and row["detector"] == name and row.get("curve") is not None]
    if not panels:
        return None
    fig = _figure(11.0, 4.2)
    auroc_ax, loss_ax = fig.subplots(1, 2)
    positive = True
    for name, row in panels:
        points = [p for p in row["curve"] if "error" not in p]
        epochs = [p["epoch"] for p in points] + ([row["epochs_run"]] if row.get("epochs_run") else [])
        for key, style in (("image_auroc", "-"), ("pixel_auroc", ":")):
            values = [_number(p.get(key)) for p in points] + ([_number(row.get(key))] if row.get("epochs_run") else [])
            shown = [(e, v) for e, v in zip(epochs, values, strict=False) if v is not None]
            if shown:
                auroc_ax.plot(*zip(*shown, strict=True), style, marker="o", markersize=3, color=colours[name],
                              label=f"{name} ({'image' if key == 'image_auroc' else 'pixel'})")
        loop = (row.get("training") or [{}])[-1]
        loss = [v for v in loop.get("loss", []) if v is not None]
        if loss:
            loss_ax.plot(range(1, len(loss) + 1), loss, color=colours[name], label=name)
            positive = positive and min(loss) > 0
    auroc_ax.set_xlabel("epoch")
    auroc_ax.set_ylabel("test AUROC")
    auroc_ax.grid(alpha=0.3)
    auroc_ax.legend(fontsize=7)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss (last training loop)")
    # flows' negative log-likelihoods go below zero (and their first epochs reach 1e7 and more): symlog then
    loss_ax.set_yscale("log" if positive else "symlog", **({} if positive else {"linthresh": 1.0}))
    loss_ax.grid(alpha=0.3)
    fig.suptitle(f"{dataset}: learning curves (solid: image AUROC, dotted: pixel AUROC)", fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
_CAPTIONS = {
    "auroc_matrix": "Image AUROC of every detector on every data set (grey text: the run did not finish).",
    "pixel_auroc_matrix": "Pixel AUROC of every detector on every data set.",
    "accuracy_latency": "Image AUROC against milliseconds per image at batch 1 (log scale); colour = detector, "
                        "shape = data set.",
    "auroc": "Image AUROC (solid) and pixel AUROC (hatched) per detector; unfinished runs are named.",
    "roc": "Image-level ROC curves, AUROC in the legend.",
    "scores": "Scores of good (blue) and defective (red) test images; dashed: the threshold calibrated on held-out "
              "good training images at a 1 % false-positive target.",
    "curves": "Test-set AUROC every few epochs of one uninterrupted training (`--curve`) and the training loss.",
    "heatmaps": "The same test images under every detector's anomaly map, one colour scale per detector over its "
                "column (green outline: ground truth; the last row is a defect-free image).",
}


def figure_caption(stem: str) -> str:
    """A one-line caption for a figure written by :func:`make_figures` (from its file stem)."""
    if stem in _CAPTIONS:
        return _CAPTIONS[stem]
    return _CAPTIONS.get(stem.split("_", 1)[0], stem)


def make_figures(rows: list[dict[str, Any]], run_root: str | Path, out_dir: str | Path, *,
                 datasets: Sequence[str] | None = None, detectors: Sequence[str] | None = None) -> list[Path]:
    """Draw every figure for the benchmark's rows into ``out_dir``; returns the PNG paths (overview first)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    run_root, out_dir = Path(run_root), Path(out_dir)
    datasets = list(datasets or dict.fromkeys(r["dataset"] for r in rows))
    detectors = list(detectors or dict.fromkeys(r["detector"] for r in rows))
    colours = detector_colours(detectors)
    figures: list[Path] = []
    if not rows:
        return figures
    figures.append(plot_auroc_matrix(rows, datasets, detectors, out_dir / "auroc_matrix.png"))
    if any(_number(r.get("pixel_auroc")) is not None for r in _ok(rows)):
        figures.append(plot_auroc_matrix(rows, datasets, detectors, out_dir / "pixel_auroc_matrix.png",
                                         key="pixel_auroc", label="pixel AUROC"))
    if _ok(rows):
        figures.append(plot_accuracy_latency(rows, detectors, datasets, colours, out_dir / "accuracy_latency.png"))
    for dataset in datasets:
        slug = _slug(dataset)
        figures.append(plot_auroc_bars(rows, dataset, detectors, colours, out_dir / f"auroc_{slug}.png"))
        for drawn in (plot_roc_curves(rows, dataset, detectors, colours, run_root, out_dir / f"roc_{slug}.png"),
                      plot_score_histograms(rows, dataset, detectors, run_root, out_dir / f"scores_{slug}.png"),
                      plot_heatmap_grid(rows, dataset, detectors, run_root, out_dir / f"heatmaps_{slug}.png"),
                      plot_learning_curves(rows, dataset, detectors, colours, out_dir / f"curves_{slug}.png")):
            if drawn is not None:
                figures.append(drawn)
    return figures
