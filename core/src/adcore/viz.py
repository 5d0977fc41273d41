"""Heatmap overlays: the picture an inspector looks at instead of a score."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from adcore.files import atomic_write_bytes

__all__ = ["overlay_heatmap", "save_heatmap_panel"]


def overlay_heatmap(image: torch.Tensor, anomaly_map: torch.Tensor, *, vmin: float, vmax: float,
                    alpha: float = 0.5) -> np.ndarray:
    """Blend a ``(H,W)`` map (scaled by ``vmin..vmax``, jet colours) over a ``(3,H,W)`` image; uint8 ``H×W×3``."""
    from matplotlib import colormaps

    base = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    span = max(vmax - vmin, 1e-12)
    scaled = ((anomaly_map.detach().float().cpu().numpy() - vmin) / span).clip(0, 1)
    colours = colormaps["jet"](scaled)[..., :3]
    blended = (1 - alpha) * base + alpha * colours
    return (blended * 255).round().astype(np.uint8)


def save_heatmap_panel(path: str | Path, image: torch.Tensor, anomaly_map: torch.Tensor, *, vmin: float, vmax: float,
                       mask: torch.Tensor | None = None, title: str = "") -> Path:
    """Write ``image | overlay [| ground truth]`` side by side as a PNG (matplotlib, Agg backend), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if mask is not None and bool(mask.any()) else 2
    figure, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.4))
    axes[0].imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy())
    axes[0].set_title("input", fontsize=9)
    axes[1].imshow(overlay_heatmap(image, anomaly_map, vmin=vmin, vmax=vmax))
    axes[1].set_title("anomaly map", fontsize=9)
    if panels == 3:
        axes[2].imshow(mask.cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        axes[2].set_title("ground truth", fontsize=9)
    for axis in axes:
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=90)
    finally:
        plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())
