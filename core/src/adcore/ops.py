"""Small tensor operations shared by every detector family (smoothing, resizing, kNN)."""

from __future__ import annotations



import torch
import torch.nn.functional as F

__all__ = ["gaussian_blur", "upsample", "knn_distances", "average_pool_neighbourhood"]


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(4.0 * sigma + 0.5))  # truncate at 4σ, as scipy.ndimage does
    grid = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(grid**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """Separable Gaussian smoothing of ``(B,H,W)`` or ``(B,1,H,W)`` maps with reflect padding."""
    if sigma <= 0:
        return maps
    squeeze = maps.ndim == 3
    x = maps[:, None] if squeeze else maps
    kernel = _gaussian_kernel(sigma).to(device=x.device, dtype=x.dtype)
    radius = kernel.numel() // 2
    pad_h, pad_w = min(radius, x.shape[-2] - 1), min(radius, x.shape[-1] - 1)
    k = kernel.numel()
    if pad_w < radius or pad_h < radius:  # map smaller than the kernel: shrink the kernel to fit
        k_w, k_h = 2 * pad_w + 1, 2 * pad_h + 1
        kern_w = kernel[radius - pad_w: radius + pad_w + 1]
        kern_h = kernel[radius - pad_h: radius + pad_h + 1]
        kern_w, kern_h = kern_w / kern_w.sum(), kern_h / kern_h.sum()
    else:
        k_w = k_h = k
        kern_w = kern_h = kernel
    x = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w else x
    x = F.conv2d(x, kern_w.view(1, 1, 1, k_w))
    x = F.pad(x, (0, 0, pad_h, pad_h), mode="reflect") if pad_h else x
    x = F.conv2d(x, kern_h.view(1, 1, k_h, 1))
    return x[:, 0] if squeeze else x


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(B,H,W)`` or ``(B,C,H,W)`` to ``size``."""
    squeeze = maps.ndim == 3
    x = maps[:, None] if squeeze else maps
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x[:, 0] if squeeze else x


def average_pool_neighbourhood(features: torch.Tensor, patch_size: int = 3, *, zero_padding: bool = False) -> torch.Tensor:
    """Average each position with its ``patch_size``×``patch_size`` neighbourhood (same size out).

    ``zero_padding=False`` averages only the positions inside the map; ``True`` counts the padding
    outside it as zeros, so border features shrink towards the origin (what PatchCore's reference
    code does by unfolding zero-padded neighbourhoods).
    """
    return F.avg_pool2d(features, kernel_size=patch_size, stride=1, padding=patch_size // 2,
                        count_include_pad=zero_padding)


def knn_distances(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances and indices of the ``k`` nearest rows of ``bank`` for every query row.

    Exact and chunked so memory stays ``chunk × len(bank)``; for large banks prefer faiss.
    """
    k = min(k, bank.shape[0])
    bank_sq = (bank * bank).sum(1)
    distances, indices = [], []
    for start in range(0, queries.shape[0], chunk):
        q = queries[start:start + chunk]
        d2 = (q * q).sum(1, keepdim=True) - 2 * q @ bank.T + bank_sq[None]
        values, idx = torch.topk(d2, k, dim=1, largest=False)
        distances.append(values.clamp_min(0).sqrt())
        indices.append(idx)
    return torch.cat(distances), torch.cat(indices)


