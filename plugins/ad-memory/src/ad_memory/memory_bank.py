"""Memory-bank machinery shared by PatchCore and SPADE.

Everything the two detectors have in common beyond the backbone (stages and extractors come from
:class:`adcore.feature_detector.FeatureDetector`) lives here once:

* :class:`FeatureCollector` gathers patch features from a stream batch by batch, keyed by image
  content so the collection does not depend on the stream's order, optionally capped by a uniform
  random sample so a set of any size fits in a fixed amount of memory.
* :func:`greedy_coreset` is the greedy k-center selection of PatchCore, exact but pruned with the
  triangle inequality so it touches only the part of the data a new center can change (it lives in
  :mod:`ad_memory.coreset` and is re-exported here).
* :class:`NearestNeighbourIndex` and :func:`knn` wrap faiss (exact ``IndexFlatL2`` or approximate
  IVF / HNSW) with Euclidean distances out and faiss' thread count tied to torch's. faiss is the
  CPU path (its blocked BLAS search measured about 2× torch's ``matmul`` + ``min`` on this
  project's machines, docs/ad-memory.md); a bank on any other device is searched exactly there by
  :func:`ad_memory.exact_knn.nearest_rows`, with no copy to the CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator

import numpy as np
import torch

from ad_memory.coreset import CoresetStats, greedy_coreset, greedy_coreset_dense, greedy_coreset_reference, random_projection
from ad_memory.exact_knn import nearest_rows, squared_norms
from ad_memory.faiss_loader import import_faiss
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
    "greedy_coreset_dense",
    "greedy_coreset_reference",
]

#: nearest-neighbour index kinds: exact brute force, inverted lists, graph
INDEX_KINDS = ("flat", "ivf", "hnsw")


# -- faiss ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def faiss_threads(count: int | None = None) -> Iterator[None]:
    """Run faiss with ``count`` threads (default: ``torch.get_num_threads()``), restored afterwards."""
    faiss = import_faiss()

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
    faiss = import_faiss()
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
    faiss = import_faiss()
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
        faiss = import_faiss()

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
    second copy is made). With ``max_rows`` it is a uniform random sample of all rows seen:
    memory stays at ``max_rows × dim`` however long the stream, and every row has the same chance
    to be kept.

    ``add(rows, keys=...)`` names the items (images) the rows come from, one content key each
    (:func:`adcore.training.content_keys`), their rows in equal consecutive blocks. Then the
    collection does not depend on the order or batching of the stream: the blocks come out sorted
    by key, and the capped sample is a bottom-k sample whose row priorities are drawn from ``seed``
    and the item's key, not from the stream position (the fitted model must not change when a user
    feeds the same images in another order, issue 23). Without keys the rows keep stream order
    and the cap is Vitter's reservoir (algorithm R, vectorised), drawn from ``generator``.
    """

    def __init__(self, max_rows: int | None = None, generator: torch.Generator | None = None, seed: int = 0) -> None:
        self.max_rows = max_rows
        self.generator = generator
        self.seed = int(seed)
        self.seen = 0
        self._blocks: list[tuple[tuple[bytes, int], torch.Tensor]] = []
        self._reservoir: torch.Tensor | None = None
        self._priority: torch.Tensor | None = None
        self._sorted: list[torch.Tensor] | None = None

    def add(self, rows: torch.Tensor, keys: list[bytes] | None = None) -> None:
        # kept in host memory whatever the extraction device (a no-op on the CPU): the bank is gathered
        # from here, and the coreset gets only the projected copy on the device
        rows = rows.detach().to("cpu", torch.float32)
        self._sorted = None
        if keys is not None and (len(keys) == 0 or rows.shape[0] % len(keys)):
            if len(keys) == 0 and rows.shape[0] == 0:
                return
            raise InvalidInputError(f"{rows.shape[0]} rows cannot be split evenly over {len(keys)} keyed items")
        if self.max_rows is None:
            if keys is None:
                self._blocks.append(((b"", len(self._blocks)), rows.contiguous()))
            else:
                per_item = rows.shape[0] // len(keys)
                for number, key in enumerate(keys):  # views into the batch: no copy
                    self._blocks.append(((key, len(self._blocks)), rows[number * per_item:(number + 1) * per_item]))
            self.seen += rows.shape[0]
            return
        if keys is None:
            self._add_reservoir(rows)
        else:
            self._add_bottom_k(rows, keys)

    def _add_bottom_k(self, rows: torch.Tensor, keys: list[bytes]) -> None:
        """Keep the ``max_rows`` rows of smallest priority seen so far; a row's priority is a uniform
        draw seeded by ``seed`` and its item's key, so the kept set is the same for any stream order."""
        if self._reservoir is None:
            self._reservoir = torch.empty(self.max_rows, rows.shape[1])
            self._priority = torch.full((self.max_rows,), math.inf, dtype=torch.float64)
        per_item = rows.shape[0] // len(keys)
        priority = torch.cat([torch.rand(per_item, dtype=torch.float64, generator=self._item_generator(key)) for key in keys])
        self.seen += rows.shape[0]
        candidates = (priority < self._priority.max()).nonzero().flatten()
        if candidates.numel() == 0:
            return
        combined = torch.cat([self._priority, priority[candidates]])
        winners = combined.topk(self.max_rows, largest=False).indices
        evicted = torch.ones(self.max_rows, dtype=torch.bool)
        evicted[winners[winners < self.max_rows]] = False
        slots = evicted.nonzero().flatten()
        entering = candidates[winners[winners >= self.max_rows] - self.max_rows]
        self._reservoir[slots] = rows[entering]
        self._priority[slots] = priority[entering]

    def _item_generator(self, key: bytes) -> torch.Generator:
        digest = hashlib.sha256(self.seed.to_bytes(8, "little", signed=True) + key).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))

    def _add_reservoir(self, rows: torch.Tensor) -> None:
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
        """The kept rows as a list of ``(n_i, dim)`` tensors: keyed items sorted by key, the rest in
        stream order; a keyed sample sorted by priority (both independent of the stream order)."""
        if self._sorted is None:
            if self.max_rows is None:
                self._sorted = [block for _, block in sorted(self._blocks, key=lambda entry: entry[0])]
            elif self._reservoir is None:
                self._sorted = []
            elif self._priority is not None:  # sorted in place of the unsorted sample, not beside it
                order = self._priority.argsort()
                self._reservoir, self._priority = self._reservoir[order], self._priority[order]
                self._sorted = [self._reservoir[:len(self)]]
            else:
                self._sorted = [self._reservoir[:len(self)]]
        return self._sorted

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        """Rows at global ``indices`` (into the concatenation of :meth:`chunks`)."""
        chunks = self.chunks()
        offsets = torch.tensor([0] + [c.shape[0] for c in chunks]).cumsum(0)
        out = torch.empty(indices.numel(), chunks[0].shape[1])
        # the indices grouped by the chunk that holds them, in one sort: keyed collections hold one
        # chunk per image (hundreds), so a mask over every index per chunk would cost chunks × indices
        owner = torch.searchsorted(offsets[1:], indices, right=True)
        groups = torch.argsort(owner, stable=True).split(torch.bincount(owner, minlength=len(chunks)).tolist())
        for number, inside in enumerate(groups):
            if inside.numel():
                out[inside] = chunks[number][indices[inside] - offsets[number]]
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
