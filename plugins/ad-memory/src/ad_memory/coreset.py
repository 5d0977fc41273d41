"""PatchCore's greedy k-center coreset, exact but pruned, and the random projection it runs in.

Moved out of :mod:`ad_memory.memory_bank` (which re-exports these names) to keep both modules small.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from adcore.errors import InvalidInputError

__all__ = ["random_projection", "CoresetStats", "greedy_coreset", "greedy_coreset_dense", "greedy_coreset_reference"]


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


def greedy_coreset_dense(points: torch.Tensor, count: int, *, start: int = 0, stats: CoresetStats | None = None,
                         desc: str = "coreset") -> torch.Tensor:
    """The textbook greedy k-center loop on whatever device ``points`` live on (a GPU's).

    One full distance pass per pick, as :func:`greedy_coreset_reference`, but the picks stay on
    the device (no host round trip per iteration): on a GPU the N×d pass is cheap and the pruned
    CPU search's scalar bookkeeping is not. Same picks as :func:`greedy_coreset` up to float-level
    ties. Returns CPU indices in selection order, starting with ``start``.
    """
    from adcore.progress import progress

    total = points.shape[0]
    count = int(count)
    if count >= total:
        return torch.arange(total)
    if count < 1:
        raise InvalidInputError(f"coreset size must be >= 1, got {count}")
    began = time.perf_counter()
    points = points.to(torch.float32)
    norms = points.square().sum(1)
    closest = torch.full((total,), math.inf, device=points.device)
    chosen = torch.empty(count, dtype=torch.long, device=points.device)
    chosen[0] = int(start)
    for step in progress(range(1, count), desc=desc, total=count - 1):
        center = points.index_select(0, chosen[step - 1:step])  # (1, d), no host sync
        distance = (norms - 2.0 * (points @ center[0])).add_(norms.index_select(0, chosen[step - 1:step]))
        torch.minimum(closest, distance, out=closest)
        chosen[step:step + 1] = torch.argmax(closest).view(1)
    if stats is not None:
        stats.iterations, stats.seconds, stats.touched_fraction = count - 1, time.perf_counter() - began, 1.0
    return chosen.cpu()
