"""Exact k-nearest-neighbour search as plain tensor ops: exported graphs and non-CPU devices.

faiss cannot live in an ONNX or OpenVINO graph, and it runs on the CPU only, so an exported
PatchCore or SPADE, and one whose bank lives on another device, searches with these instead:
squared distances ``|q|² - 2 q·b + |b|²`` (one GEMM per chunk, the bank's norms computed once),
the ``k`` smallest of each chunk, then the ``k`` smallest of those, ``|q|²`` added to those alone.
Same formula and float32 as faiss' exact ``IndexFlatL2``, so the scores match the faiss-scored
detector to float rounding.

* :func:`exact_knn` is traceable (no data-dependent Python control flow; the chunk count is fixed
  by the bank, so the loop unrolls into the graph).
* :func:`direct_knn` sums ``(q - b)²`` itself, for a small bank whose distances are small beside
  the rows' norms (SPADE's pooled image features): the GEMM form loses about 1e-4 of such a
  distance to cancellation, this one nothing. Traceable too; eager and exported use the same.
* :func:`nearest_rows` is the eager version for ``predict``: chunks over the queries (each chunk's
  distance block stays near a fixed budget), in-place arithmetic, ``min`` instead of ``topk`` for
  ``k=1``, and the bank's squared norms passed in by a caller that keeps them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["exact_knn", "direct_knn", "bank_chunk", "nearest_rows", "squared_norms"]


def bank_chunk(queries_per_image: int, budget: int = 1 << 24) -> int:
    """Bank rows per chunk so one chunk's distance block stays near ``budget`` floats per image."""
    return max(1024, budget // max(1, queries_per_image))


def squared_norms(rows: torch.Tensor) -> torch.Tensor:
    """``|row|²`` of every row of ``(..., M, D)``, as ``(..., M)`` (what :func:`nearest_rows` takes)."""
    return (rows * rows).sum(-1)


def exact_knn(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances and indices (ascending) of the ``k`` nearest ``bank`` rows.

    ``queries`` ``(..., Q, D)`` and ``bank`` ``(M, D)`` or batched ``(..., M, D)``; ``k`` is clamped
    to ``M``. Traceable: no data-dependent Python control flow.

    Each chunk's block is ``|b|² - 2 q·b``; ``|q|²`` is added to the ``k`` survivors only (it does not
    change which rows are nearest). Against one bank the block is then a single ``Gemm`` with the
    bank's norms as its bias, so an engine makes no further pass over it: on bottle's PatchCore bank
    (1,024 patches × 21,402 rows) the two elementwise passes of the full formula were ~20 % of
    ONNX Runtime's graph time (docs/deployment.md).
    """
    if bank.dim() == 2:
        rows = queries.reshape(-1, queries.shape[-1])

        def partial(part: torch.Tensor) -> torch.Tensor:
            return torch.addmm(squared_norms(part), rows, part.transpose(0, 1), alpha=-2.0)
    else:
        rows = queries

        def partial(part: torch.Tensor) -> torch.Tensor:
            return torch.matmul(queries, part.transpose(-1, -2)).mul(-2.0).add(squared_norms(part).unsqueeze(-2))

    value, index = _nearest_by_chunk(bank, k, chunk, partial)
    value = value + squared_norms(rows).unsqueeze(-1)
    shape = (*queries.shape[:-1], value.shape[-1])
    return value.clamp_min(0).sqrt().reshape(shape), index.reshape(shape)


def direct_knn(queries: torch.Tensor, bank: torch.Tensor, k: int = 1,
               budget: int = 1 << 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances and indices (ascending) of the ``k`` nearest rows of ``bank``, summed directly.

    ``queries`` ``(Q, D)``, ``bank`` ``(M, D)``; ``k`` is clamped to ``M``. Memory: ``Q`` differences of
    ``budget`` floats per bank chunk (the chunk is fixed by ``D``, so a traced graph takes any ``Q``).
    """
    chunk = max(1, budget // max(1, int(bank.shape[-1])))
    value, index = _nearest_by_chunk(bank, k, chunk, lambda part: (queries.unsqueeze(-2) - part).pow(2).sum(-1))
    return value.sqrt(), index


def _nearest_by_chunk(bank: torch.Tensor, k: int, chunk: int,
                      squared_distance: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest squared distances and their rows, one ``chunk`` of bank rows at a time, then the
    ``k`` smallest of those (traceable: the chunk count is fixed by the bank)."""
    rows = bank.shape[-2]
    k = min(int(k), int(rows))
    values, indices = [], []
    for start in range(0, rows, chunk):
        part = bank[..., start:start + chunk, :]
        v, i = torch.topk(squared_distance(part), min(k, part.shape[-2]), dim=-1, largest=False)
        values.append(v)
        indices.append(i + start)
    value, index = torch.cat(values, -1), torch.cat(indices, -1)
    if len(values) > 1:
        value, position = torch.topk(value, k, dim=-1, largest=False)
        index = torch.gather(index, -1, position)
    return value, index


def nearest_rows(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, *, bank_sq: torch.Tensor | None = None,
                 budget: int = 1 << 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Euclidean distances and indices ``(..., Q, k)`` of the ``k`` nearest rows of ``bank``.

    ``queries`` ``(..., Q, D)``; ``bank`` ``(M, D)`` or batched ``(..., M, D)`` (one bank per leading
    index: SPADE's per-image galleries as one batched GEMM). Runs on whatever device the tensors are
    on. ``bank_sq`` (``squared_norms(bank)``) saves recomputing the bank's norms on every call.
    Memory: one ``(..., chunk, M)`` distance block with ``chunk × M × batch`` near ``budget`` floats.
    """
    rows = bank.shape[-2]
    k = min(int(k), int(rows))
    if bank_sq is None:
        bank_sq = squared_norms(bank)
    bank_sq = bank_sq.unsqueeze(-2)  # (..., 1, M)
    bank_t = bank.transpose(-1, -2)
    count = queries.shape[-2]
    batch = 1
    for size in queries.shape[:-2]:
        batch *= int(size)
    chunk = max(1, budget // max(1, rows * batch))
    values, indices = [], []
    for start in range(0, count, chunk):
        part = queries[..., start:start + chunk, :]
        d2 = torch.matmul(part, bank_t).mul_(-2.0).add_(bank_sq)
        if k == 1:
            value, index = d2.min(-1, keepdim=True)
        else:
            value, index = torch.topk(d2, k, dim=-1, largest=False)
        # |q|² last, on the k survivors only: it does not change which rows are nearest
        values.append(value.add_(squared_norms(part).unsqueeze(-1)))
        indices.append(index)
    value = values[0] if len(values) == 1 else torch.cat(values, -2)
    index = indices[0] if len(indices) == 1 else torch.cat(indices, -2)
    return value.clamp_min_(0).sqrt_(), index
