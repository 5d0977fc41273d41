"""Memory-bank machinery shared by PatchCore and SPADE.

Everything the two detectors have in common beyond the backbone (stages and extractors come from
:class:`adcore.feature_detector.FeatureDetector`) lives here once:

* :class:`FeatureCollector` gathers patch features from a stream batch by batch, optionally
  capped by uniform reservoir sampling so a set of any size fits in a fixed amount of memory.
* :func:`greedy_coreset` is the greedy k-center selection of PatchCore, exact but pruned with the
  triangle inequality so it touches only the part of the data a new center can change.
* :class:`NearestNeighbourIndex` and :func:`knn` wrap faiss (exact ``IndexFlatL2`` or approximate
  IVF / HNSW) with Euclidean distances out and faiss' thread count tied to torch's. faiss is the
  CPU path (its blocked BLAS search measured about 2× torch's ``matmul`` + ``min`` on this
  project's machines, docs/ad-memory.md); a bank on any other device is searched exactly there by
  :func:`ad_memory.exact_knn.nearest_rows`, with no copy to the CPU.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ad_memory.exact_knn import nearest_rows, squared_norms
from adcore.errors import InvalidInputError

__all__ = [
    "INDEX_KINDS",
    "faiss_threads",
    "knn",
    "batched_knn",
    "NearestNeighbourIndex",
    "FeatureCollector",
    "random_projection",
    "CoresetStats",
    "greedy_coreset",
    "greedy_coreset_reference",
]

#: nearest-neighbour index kinds: exact brute force, inverted lists, graph
INDEX_KINDS = ("flat", "ivf", "hnsw")


# -- faiss ----------------------------------------------------------------------------------------
def _faiss():
    """Import faiss with its OpenMP runtime set to sleep, not spin, between parallel regions.

    faiss wheels bundle their own OpenMP runtime (and an OpenMP OpenBLAS) next to torch's. Two
    runtimes whose idle threads busy-wait steal the few cores from each other: on a 2-core
    machine the backbone forward after a faiss search ran up to 20x slower. The policy is read
    when the runtime loads, so it is set (unless the user chose one) just before faiss is imported.
    Setting ``OMP_WAIT_POLICY=PASSIVE`` before starting Python also calms torch's own runtime.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import faiss

    return faiss


@contextlib.contextmanager
def faiss_threads(count: int | None = None) -> Iterator[None]:
    """Run faiss with ``count`` threads (default: ``torch.get_num_threads()``), restored afterwards."""
    faiss = _faiss()

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(count if count is not None else torch.get_num_threads()))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _as_faiss(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to(dtype=torch.float32, device="cpu").numpy())


def _on_cpu(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" for t in tensors)


def _euclidean(squared: np.ndarray) -> torch.Tensor:
    # faiss returns squared L2 from |x|²+|y|²-2xy, which can dip below zero by rounding
    return torch.from_numpy(squared).clamp_min_(0).sqrt_()


def knn(queries: torch.Tensor, bank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Euclidean distances ``(Q,k)`` and indices ``(Q,k)`` of the ``k`` nearest rows of ``bank``.

    One-off search without keeping an index (faiss' blocked brute force); ``k`` is clamped to
    the bank size.
    """
    k = min(int(k), bank.shape[0])
    if not _on_cpu(queries, bank):
        return nearest_rows(queries, bank, k)
    faiss = _faiss()
    with faiss_threads():
        distances, indices = faiss.knn(_as_faiss(queries), _as_faiss(bank), k)
    return _euclidean(distances), torch.from_numpy(indices)


def batched_knn(queries: torch.Tensor, banks: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``k`` nearest rows of each query set in its own bank: ``(B,Q,D)`` against ``(B,M,D)``.

    On the CPU one faiss search per bank (contiguous slices, no copies); elsewhere one batched
    GEMM search on the tensors' device. Returns distances and indices ``(B,Q,k)``.
    """
    k = min(int(k), banks.shape[-2])
    if not _on_cpu(queries, banks):
        return nearest_rows(queries, banks, k)
    queries, banks = queries.to(torch.float32).contiguous(), banks.to(torch.float32).contiguous()
    distances = torch.empty(*queries.shape[:-1], k)
    indices = torch.empty(*queries.shape[:-1], k, dtype=torch.long)
    faiss = _faiss()
    with faiss_threads():
        for row in range(queries.shape[0]):
            squared, index = faiss.knn(queries[row].numpy(), banks[row].numpy(), k)
            distances[row] = _euclidean(squared)
            indices[row] = torch.from_numpy(index)
    return distances, indices


class NearestNeighbourIndex:
    """A faiss index over ``bank`` rows, built lazily on the first search.

    ``kind="flat"`` is exact. ``"ivf"`` (inverted lists, ``probes`` lists visited, default 8) and
    ``"hnsw"`` (graph, ``probes`` = efSearch, default 64) are approximate and meant for banks too
    large to search exhaustively. Building is deterministic for a given bank, so an index rebuilt
    after loading a saved model answers exactly as the original did.

    A bank on a non-CPU device is searched exactly on that device (the approximate kinds are faiss
    CPU structures; there the exact GEMM search is the fast one), its squared norms kept.
    """

    def __init__(self, bank: torch.Tensor, kind: str = "flat", probes: int | None = None, seed: int = 0) -> None:
        if kind not in INDEX_KINDS:
            raise InvalidInputError(f"index must be one of {INDEX_KINDS}, got {kind!r}")
        self.bank = bank.detach().to(torch.float32).contiguous()
        self.kind = kind
        self.probes = probes
        self.seed = seed
        self._index = None
        self._bank_sq: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.bank.shape[0])

    def bank_norms(self) -> torch.Tensor:
        """``|row|²`` of every bank row, computed once (for searches and reweighting in torch)."""
        if self._bank_sq is None:
            self._bank_sq = squared_norms(self.bank)
        return self._bank_sq

    def _build(self):
        faiss = _faiss()

        data = _as_faiss(self.bank)
        count, dim = data.shape
        if self.kind == "flat" or count < 1024:  # tiny banks: exact search is cheaper than any structure
            index = faiss.IndexFlatL2(dim)
            index.add(data)
        elif self.kind == "ivf":
            # about 4·sqrt(N) lists, at least 39 training points per list (faiss' own guidance)
            lists = max(1, min(count // 39, int(round(4 * math.sqrt(count)))))
            quantizer = faiss.IndexFlatL2(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_L2)
            index.cp.seed = int(self.seed)
            index.train(data)
            index.add(data)
            index.nprobe = int(self.probes or 8)
        else:
            index = faiss.IndexHNSWFlat(dim, 32)
            index.hnsw.efConstruction = 80
            # graph construction order depends on thread scheduling: build single-threaded so a
            # rebuilt index (after load) is the same graph and gives the same answers
            with faiss_threads(1):
                index.add(data)
            index.hnsw.efSearch = int(self.probes or 64)
        return index

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Euclidean distances ``(Q,k)`` and bank indices ``(Q,k)`` of the ``k`` nearest rows."""
        k = min(int(k), len(self))
        if not _on_cpu(self.bank):
            return nearest_rows(queries.to(self.bank.device, torch.float32), self.bank, k, bank_sq=self.bank_norms())
        with faiss_threads():
            if self._index is None:
                self._index = self._build()
            distances, indices = self._index.search(_as_faiss(queries), k)
        if self.kind != "flat" and bool((indices < 0).any()):
            # an approximate index can come back short of k hits; fall back to exact for those rows
            rows = torch.from_numpy((indices < 0).any(1))
            exact_d, exact_i = knn(queries[rows], self.bank, k)
            distances[rows.numpy()] = exact_d.square().numpy()
            indices[rows.numpy()] = exact_i.numpy()
        return _euclidean(distances), torch.from_numpy(indices)


# -- streaming collection -------------------------------------------------------------------------
class FeatureCollector:
    """Rows (patch features) gathered batch by batch from a stream.

    Without ``max_rows`` every row is kept (as the list of batches, never concatenated, so no
    second copy is made). With ``max_rows`` it is a uniform random sample of all rows seen,
    drawn by reservoir sampling (Vitter's algorithm R, vectorised): memory stays at
    ``max_rows × dim`` however long the stream, and every row has the same chance to be kept.
    """

    def __init__(self, max_rows: int | None = None, generator: torch.Generator | None = None) -> None:
        self.max_rows = max_rows
        self.generator = generator
        self.seen = 0
        self._chunks: list[torch.Tensor] = []
        self._reservoir: torch.Tensor | None = None

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.detach().to(torch.float32)
        if self.max_rows is None:
            self._chunks.append(rows.contiguous())
            self.seen += rows.shape[0]
            return
        if self._reservoir is None:
            self._reservoir = torch.empty(self.max_rows, rows.shape[1])
        free = max(0, self.max_rows - self.seen)
        head = rows[:free]
        self._reservoir[self.seen:self.seen + head.shape[0]] = head
        rest = rows[head.shape[0]:]
        start = self.seen + head.shape[0]
        self.seen += rows.shape[0]
        if rest.shape[0] == 0:
            return
        # row number t (0-based) replaces slot j ~ U{0..t} when j < max_rows; later rows win ties,
        # exactly as the sequential algorithm would have it
        position = torch.arange(start, start + rest.shape[0], dtype=torch.float64)
        slot = (torch.rand(rest.shape[0], generator=self.generator, dtype=torch.float64) * (position + 1)).long()
        keep = (slot < self.max_rows).nonzero().flatten()
        if keep.numel() == 0:
            return
        slot = slot[keep]
        order = torch.sort(slot, stable=True).indices
        slot, keep = slot[order], keep[order]
        last = torch.ones_like(slot, dtype=torch.bool)
        last[:-1] = slot[1:] != slot[:-1]
        self._reservoir[slot[last]] = rest[keep[last]]

    def __len__(self) -> int:
        return self.seen if self.max_rows is None else min(self.seen, self.max_rows)

    def chunks(self) -> list[torch.Tensor]:
        """The kept rows as a list of ``(n_i, dim)`` tensors (in stream order without a cap)."""
        if self.max_rows is None:
            return self._chunks
        return [] if self._reservoir is None else [self._reservoir[:len(self)]]

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        """Rows at global ``indices`` (into the concatenation of :meth:`chunks`)."""
        chunks = self.chunks()
        offsets = torch.tensor([0] + [c.shape[0] for c in chunks]).cumsum(0)
        out = torch.empty(indices.numel(), chunks[0].shape[1])
        for number, chunk in enumerate(chunks):
            inside = ((indices >= offsets[number]) & (indices < offsets[number + 1])).nonzero().flatten()
            if inside.numel():
                out[inside] = chunk[indices[inside] - offsets[number]]
        return out

    def project(self, matrix: torch.Tensor | None) -> torch.Tensor:
        """All kept rows times ``matrix`` (or a plain copy), written into one preallocated tensor."""
        chunks = self.chunks()
        width = chunks[0].shape[1] if matrix is None else matrix.shape[1]
        out = torch.empty(len(self), width)
        offset = 0
        for chunk in chunks:
            out[offset:offset + chunk.shape[0]] = chunk if matrix is None else chunk @ matrix
            offset += chunk.shape[0]
        return out


# -- coreset --------------------------------------------------------------------------------------
def random_projection(in_dim: int, out_dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A Gaussian Johnson-Lindenstrauss projection ``(in_dim, out_dim)`` scaled by ``1/sqrt(out_dim)``."""
    return torch.randn(in_dim, out_dim, generator=generator) / math.sqrt(out_dim)


@dataclass
class CoresetStats:
    """What :func:`greedy_coreset` did: iterations, seconds, rate and how much data it touched."""

    iterations: int = 0
    seconds: float = 0.0
    touched_fraction: float = 1.0  # mean share of points whose distances were updated per iteration

    @property
    def iterations_per_second(self) -> float:
        return self.iterations / self.seconds if self.seconds > 0 else float("inf")


def greedy_coreset(points: torch.Tensor, count: int, *, start: int = 0, prune: bool = True, overwrite: bool = False,
                   chunk_rows: int = 65536, stats: CoresetStats | None = None, desc: str = "coreset") -> torch.Tensor:
    """Greedy k-center selection (iterative farthest point) of ``count`` rows of ``points``.

    Returns indices into ``points`` in selection order, starting with ``start``: each next row is
    the one farthest from everything selected so far. Same picks as the textbook loop
    (:func:`greedy_coreset_reference`, up to float-level ties), computed much faster:

    * every row remembers its nearest selected center ``a`` and its distance ``|x - a|`` to it;
    * a new center ``c`` can only bring ``x`` closer if ``|c - a| < 2 |x - a|`` (triangle
      inequality). That is checked for all rows with scalar operations, using the distances from
      ``c`` to the selected centers looked up by owner; only rows that pass have their features
      read. The first picks touch every row; once the selection covers the data a pick touches
      only the rows around it;
    * the distances ``|c - a|`` themselves are only computed for centers whose cell ``c`` can
      reach: the rows are first rotated onto their principal axes (an orthonormal rotation, so
      all distances are unchanged), which makes the first 32 coordinates a tight lower bound
      of the distance, compared with an upper bound of every cell's radius;
    * the farthest row is found through per-block maxima, refreshed only where rows changed;
    * updates run vectorised in chunks of at most ``chunk_rows`` rows, never an N×N matrix:
      memory is the points, a few per-row vectors and one chunk, constant over the loop.

    ``overwrite=True`` rotates ``points`` in place instead of on a copy (the caller's rows change).
    ``prune=False`` updates every row at every step (for comparisons).
    """
    from adcore.progress import progress

    total, dim = points.shape
    count = int(count)
    if count >= total:
        return torch.arange(total)
    if count < 1:
        raise InvalidInputError(f"coreset size must be >= 1, got {count}")
    began = time.perf_counter()
    points = points.to(torch.float32)
    if not overwrite or not points.is_contiguous():
        points = points.clone(memory_format=torch.contiguous_format)
    low = min(dim, 32)
    if prune:
        _rotate_to_principal_axes(points, chunk_rows)
    block = 1024
    blocks = -(-total // block)
    norms = torch.cat([points[i:i + chunk_rows].square().sum(1) for i in range(0, total, chunk_rows)])
    # squared distance of each row to the selection; padding rows sit at -1 so they are never picked
    closest = torch.full((blocks * block,), math.inf)
    closest[total:] = -1.0
    block_max = torch.full((blocks,), math.inf)
    owner = torch.zeros(blocks * block, dtype=torch.int32)  # index of the nearest selected center
    centers = torch.empty(count, dim)
    centers_low = torch.empty(count, low)
    center_norms = torch.empty(count)
    center_low_norms = torch.empty(count)
    radius = torch.zeros(count)  # upper bound of each cell's squared radius (cells only ever shrink)
    reach = torch.empty(count)
    chosen = torch.empty(count, dtype=torch.long)
    cells = _CellLists(total)
    cells_invalid, full_until, backoff = True, 0, 1
    position = int(start)
    touched = 0
    for step in progress(range(count), desc=desc, total=count, mininterval=1.0):
        chosen[step] = position
        center = points[position]
        center_norm = norms[position]
        centers[step], centers_low[step] = center, center[:low]
        center_norms[step], center_low_norms[step] = center_norm, center[:low].square().sum()
        if step == 0 or not prune or step < full_until:
            rows = None
        else:
            if cells_invalid:
                cells.rebuild(owner[:total], step)
                cells_invalid = False
            # cells whose rows c might reach: a lower bound of |c - a| from the leading axes first ...
            bound = (center_low_norms[:step] - 2 * (centers_low[:step] @ center[:low]) + center_low_norms[step])
            maybe = (bound < radius[:step].mul(4 * (1 + 1e-4)).add_(1e-4)).nonzero().flatten()
            # ... then the exact |c - a|² for those only; a row of cell a can come closer only if
            # closest > |c - a|² / 4 (slack so rounding never skips a row it should not)
            between = (center_norms.index_select(0, maybe) - 2 * (centers.index_select(0, maybe) @ center) + center_norm)
            reach[:step] = math.inf
            reach.index_copy_(0, maybe, between.clamp_min_(0).mul_(0.25 * (1 - 1e-4)).sub_(1e-6))
            rows = cells.candidates(maybe, closest, owner, reach)
            if rows.numel() > total // 8:
                # many rows qualify (the data is not yet covered, or too uniform to prune): plain
                # contiguous passes are cheaper, for a number of steps that doubles while it lasts
                rows = None
                full_until, backoff = step + backoff, min(2 * backoff, 256)
            else:
                backoff = 1
        count_rows = total if rows is None else rows.numel()
        touched += count_rows
        for first in range(0, count_rows, chunk_rows):
            last = min(first + chunk_rows, count_rows)
            if rows is None:
                part_points, part_norms = points[first:last], norms[first:last]
                current, current_owner = closest[first:last], owner[first:last]
            else:
                part = rows[first:last]
                # index_select/index_copy_: far faster on CPU than advanced indexing
                part_points, part_norms = points.index_select(0, part), norms.index_select(0, part)
                current, current_owner = closest.index_select(0, part), owner.index_select(0, part)
            distance = (part_norms - 2 * (part_points @ center) + center_norm).clamp_min_(0)
            nearer = distance < current
            updated = torch.where(nearer, distance, current)
            updated_owner = torch.where(nearer, step, current_owner)
            if rows is None:
                closest[first:last] = updated
                owner[first:last] = updated_owner
            else:
                closest.index_copy_(0, part, updated)
                owner.index_copy_(0, part, updated_owner)
                cells.moved(part[nearer])
        closest[position] = 0.0
        if rows is None:
            cells_invalid = True  # owners changed outside the cell lists; rebuilt when pruning resumes
        elif cells.stale():
            cells.rebuild(owner[:total], step + 1)
        if rows is None or step % 256 == 0:
            # exact radii now and then (cheap, and keeps the bounds tight), else only the new cell's
            radius.zero_()
            radius.scatter_reduce_(0, owner[:total].long(), closest[:total], reduce="amax")
            block_max = closest.view(blocks, block).amax(1)
        else:
            radius[step] = 0.0
            radius.scatter_reduce_(0, owner.index_select(0, rows).long(), closest.index_select(0, rows), reduce="amax")
            changed = torch.unique(torch.cat([rows, torch.tensor([position])]).div_(block, rounding_mode="floor"))
            block_max.index_copy_(0, changed, closest.view(blocks, block).index_select(0, changed).amax(1))
        best = int(torch.argmax(block_max))
        position = best * block + int(torch.argmax(closest[best * block:(best + 1) * block]))
        if float(closest[position]) <= 0.0:
            chosen = chosen[:step + 1]  # every remaining row duplicates a selected one
            break
    if stats is not None:
        stats.iterations = int(chosen.numel())
        stats.seconds = time.perf_counter() - began
        stats.touched_fraction = touched / max(1, chosen.numel() * total)
    return chosen


class _CellLists:
    """Which rows belong to which cell, without scanning all rows at every step.

    Rebuilt now and then by sorting rows by owner; cells existing at the rebuild ("old" cells)
    keep their row ranges (rows only ever leave a cell for a newer one), and rows that moved to a
    newer cell since are kept in a short list. A rebuild happens when that list grows past a
    sixteenth of the rows.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.perm = torch.arange(total)
        self.starts = torch.tensor([0, total])
        self.built = 0
        self._moved: list[torch.Tensor] = []
        self._moved_count = 0

    def rebuild(self, owner: torch.Tensor, cell_count: int) -> None:
        self.perm = torch.sort(owner, stable=True).indices
        sizes = torch.bincount(owner.long(), minlength=cell_count)
        self.starts = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        self.built = cell_count
        self._moved, self._moved_count = [], 0

    def moved(self, rows: torch.Tensor) -> None:
        if rows.numel():
            self._moved.append(rows)
            self._moved_count += rows.numel()

    def stale(self) -> bool:
        return self._moved_count > self.total // 16

    def candidates(self, cells: torch.Tensor, closest: torch.Tensor, owner: torch.Tensor,
                   reach: torch.Tensor) -> torch.Tensor:
        """Rows of ``cells`` (plus recently moved rows) with ``closest > reach[owner]``."""
        old = cells[cells < self.built]
        lengths = self.starts.index_select(0, old + 1) - self.starts.index_select(0, old)
        size = int(lengths.sum())
        parts = []
        if size:
            # the concatenated ranges perm[start:start+length] of every old cell, vectorised
            offsets = torch.repeat_interleave(self.starts.index_select(0, old) - (lengths.cumsum(0) - lengths), lengths)
            parts.append(self.perm.index_select(0, offsets + torch.arange(size)))
        if self._moved_count and bool((cells >= self.built).any()):  # moved rows belong to newer cells only
            if len(self._moved) > 1:
                self._moved = [torch.cat(self._moved)]
            parts.append(self._moved[0])
        if not parts:
            return torch.empty(0, dtype=torch.long)
        rows = torch.cat(parts) if len(parts) > 1 else parts[0]
        keep = closest.index_select(0, rows) > reach.index_select(0, owner.index_select(0, rows))
        # a row can be listed twice (in an old range and as moved); process it once
        return torch.unique(rows[keep])


def _rotate_to_principal_axes(points: torch.Tensor, chunk_rows: int) -> None:
    """Center ``points`` and rotate them (in place) so coordinates come in decreasing variance."""
    total, dim = points.shape
    mean = torch.zeros(dim, dtype=torch.float64)
    for i in range(0, total, chunk_rows):
        mean += points[i:i + chunk_rows].double().sum(0)
    mean /= total
    scatter = torch.zeros(dim, dim, dtype=torch.float64)
    for i in range(0, total, chunk_rows):
        centred = points[i:i + chunk_rows].double() - mean
        scatter += centred.T @ centred
    axes = torch.linalg.eigh(scatter).eigenvectors.flip(1).to(torch.float32)
    mean32 = mean.to(torch.float32)
    for i in range(0, total, chunk_rows):
        points[i:i + chunk_rows] = (points[i:i + chunk_rows] - mean32) @ axes


def greedy_coreset_reference(points: torch.Tensor, count: int, start: int = 0) -> torch.Tensor:
    """The textbook greedy k-center loop (one full distance pass per pick); for tests and comparison."""
    points = points.to(torch.float32)
    norms = points.square().sum(1)
    closest = torch.full((points.shape[0],), math.inf)
    chosen = [start]
    for _ in range(count - 1):
        center = points[chosen[-1]]
        closest = torch.minimum(closest, norms - 2 * (points @ center) + norms[chosen[-1]])
        chosen.append(int(torch.argmax(closest)))
    return torch.tensor(chosen)
