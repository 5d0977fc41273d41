"""Exact k-nearest-neighbour search as plain tensor ops, for exported graphs.

faiss cannot live in an ONNX or OpenVINO graph, so an exported PatchCore or SPADE searches its bank
with this instead: squared distances ``|q|² - 2 q·b + |b|²`` in chunks of the bank (memory stays
``queries × chunk``; the chunk count is fixed by the bank, so the loop unrolls into the graph), the
``k`` smallest of each chunk, then the ``k`` smallest of those. Same formula and float32 as faiss'
exact ``IndexFlatL2``, so the exported scores match the faiss-scored torch detector.
"""

from __future__ import annotations

import torch

__all__ = ["exact_knn", "bank_chunk"]


def bank_chunk(queries_per_image: int, budget: int = 1 << 24) -> int:
    """Bank rows per chunk so one chunk's distance block stays near ``budget`` floats per image."""
    return max(1024, budget // max(1, queries_per_image))


def exact_knn(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances and indices (ascending) of the ``k`` nearest ``bank`` rows.

    ``queries`` ``(..., Q, D)`` and ``bank`` ``(M, D)`` or batched ``(..., M, D)``; ``k`` is clamped
    to ``M``. Traceable: no data-dependent Python control flow.
    """
    rows = bank.shape[-2]
    k = min(int(k), int(rows))
    query_sq = (queries * queries).sum(-1, keepdim=True)
    values, indices = [], []
    for start in range(0, rows, chunk):
        part = bank[..., start:start + chunk, :]
        d2 = query_sq - 2 * queries @ part.transpose(-1, -2) + (part * part).sum(-1).unsqueeze(-2)
        v, i = torch.topk(d2, min(k, part.shape[-2]), dim=-1, largest=False)
        values.append(v)
        indices.append(i + start)
    value, index = torch.cat(values, -1), torch.cat(indices, -1)
    if len(values) > 1:
        value, position = torch.topk(value, k, dim=-1, largest=False)
        index = torch.gather(index, -1, position)
    return value.clamp_min(0).sqrt(), index
