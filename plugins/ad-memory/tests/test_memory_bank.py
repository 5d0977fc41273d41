"""The shared memory-bank machinery: coreset, streaming collection, faiss search."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from ad_memory.memory_bank import (
    CoresetStats,
    FeatureCollector,
    NearestNeighbourIndex,
    greedy_coreset,
    greedy_coreset_reference,
    knn,
    random_projection,
)
from adcore.errors import InvalidInputError


def _clustered(count: int, dim: int, clusters: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, dim, generator=generator) * 6
    labels = torch.randint(0, clusters, (count,), generator=generator)
    return centers[labels] + torch.randn(count, dim, generator=generator)


def _pick_distances(points: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Distance of every pick to the picks before it (the greedy's covering radius sequence)."""
    return torch.stack([torch.cdist(points[chosen[i:i + 1]], points[chosen[:i]]).min() for i in range(1, chosen.numel())])


def test_pruned_coreset_equals_textbook_greedy() -> None:
    points = _clustered(6000, 16, 30)
    stats = CoresetStats()
    fast = greedy_coreset(points, 400, start=5, stats=stats)
    slow = greedy_coreset_reference(points, 400, start=5)
    # identical picks until the first float-level tie, and the same farthest-first distances throughout
    assert torch.equal(fast[:200], slow[:200])
    assert torch.allclose(_pick_distances(points, fast), _pick_distances(points, slow), rtol=1e-5)
    # the pruning is what makes it fast: far from every block being touched each step
    assert stats.touched_fraction < 0.5
    assert stats.iterations == 400


def test_unpruned_path_agrees() -> None:
    points = _clustered(3000, 8, 10, seed=3)
    plain = greedy_coreset(points, 150, start=0, prune=False)
    assert torch.allclose(_pick_distances(points, plain),
                          _pick_distances(points, greedy_coreset(points, 150, start=0)), rtol=1e-5)


def test_coreset_picks_far_apart_points() -> None:
    # three tight, far-apart groups: the first three picks must be one from each group
    generator = torch.Generator().manual_seed(1)
    offsets = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    points = torch.cat([offsets[i] + 0.1 * torch.randn(500, 2, generator=generator) for i in range(3)])
    chosen = greedy_coreset(points, 3, start=0)
    assert sorted((chosen // 500).tolist()) == [0, 1, 2]


def test_coreset_covering_radius_shrinks_and_beats_random() -> None:
    points = _clustered(4000, 8, 40, seed=2)
    chosen = greedy_coreset(points, 200, start=0)
    assert chosen.unique().numel() == 200
    greedy_radius = knn(points, points[chosen], 1)[0].max()
    random_pick = torch.randperm(4000, generator=torch.Generator().manual_seed(0))[:200]
    random_radius = knn(points, points[random_pick], 1)[0].max()
    assert greedy_radius < random_radius
    # the distance of each new pick to the earlier ones never increases (farthest-first order)
    steps = _pick_distances(points, chosen)
    assert bool((steps[1:] <= steps[:-1] + 1e-4).all())


def test_coreset_stops_at_duplicates_and_handles_edges() -> None:
    points = torch.cat([torch.zeros(50, 4), torch.ones(50, 4)])
    chosen = greedy_coreset(points, 10, start=0)
    assert chosen.numel() == 2  # only two distinct rows exist
    assert torch.equal(greedy_coreset(points, 100), torch.arange(100))
    with pytest.raises(InvalidInputError):
        greedy_coreset(points, 0)


def _keep_counts(fill: Callable[[int], FeatureCollector]) -> torch.Tensor:
    """How often each of rows 0..999 is kept in 200 samples of 100, ``fill(trial)`` giving one sample."""
    hits = torch.zeros(1000)
    for trial in range(200):
        kept = fill(trial).chunks()[0][:, 0].long()
        assert kept.numel() == 100 and kept.unique().numel() == 100
        hits[kept] += 1
    return hits


def _assert_uniform(hits: torch.Tensor) -> None:
    # every row has chance 0.1; over 200 trials each row is kept ~20 times, early and late alike
    assert abs(hits[:500].mean().item() - 20) < 2 and abs(hits[500:].mean().item() - 20) < 2
    assert hits.min() > 3


def test_reservoir_is_uniform_and_bounded() -> None:
    generator = torch.Generator().manual_seed(0)

    def fill(trial: int) -> FeatureCollector:
        collector = FeatureCollector(max_rows=100, generator=generator)
        for start in range(0, 1000, 37):  # uneven batches
            stop = min(start + 37, 1000)
            collector.add(torch.arange(start, stop, dtype=torch.float32)[:, None].repeat(1, 3))
        return collector

    _assert_uniform(_keep_counts(fill))


def test_collector_gather_and_project() -> None:
    collector = FeatureCollector()
    rows = torch.randn(25, 6)
    for start in range(0, 25, 10):
        collector.add(rows[start:start + 10])
    assert len(collector) == 25
    indices = torch.tensor([24, 0, 13, 9, 10])
    assert torch.equal(collector.gather(indices), rows[indices])
    matrix = torch.randn(6, 2)
    assert torch.allclose(collector.project(matrix), rows @ matrix, atol=1e-5)


def test_random_projection_preserves_distances() -> None:
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(200, 512, generator=generator)
    projected = points @ random_projection(512, 128, generator)
    ratio = torch.pdist(projected) / torch.pdist(points)
    assert abs(ratio.mean().item() - 1) < 0.05 and ratio.std().item() < 0.1


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_matches_brute_force(kind: str) -> None:
    bank = _clustered(5000, 12, 50, seed=4)
    queries = _clustered(300, 12, 50, seed=5)
    expected = torch.cdist(queries, bank).min(1)
    index = NearestNeighbourIndex(bank, kind, probes=16 if kind == "ivf" else None)
    distance, nearest = index.search(queries, 1)
    if kind == "flat":
        assert torch.equal(nearest[:, 0], expected.indices)
        assert torch.allclose(distance[:, 0], expected.values, atol=1e-3)
    else:  # approximate: nearly always right, never closer than the truth
        assert (nearest[:, 0] == expected.indices).float().mean() > 0.9
        assert bool((distance[:, 0] >= expected.values - 1e-3).all())
    rebuilt = NearestNeighbourIndex(bank.clone(), kind, probes=16 if kind == "ivf" else None)
    again, again_nearest = rebuilt.search(queries, 1)
    assert torch.equal(again, distance) and torch.equal(again_nearest, nearest)  # deterministic rebuild


def test_knn_clamps_k_and_is_euclidean() -> None:
    bank = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    distance, index = knn(torch.tensor([[0.0, 0.0]]), bank, 5)
    assert distance.shape == (1, 2)
    assert torch.allclose(distance, torch.tensor([[0.0, 5.0]]))
    assert index.tolist() == [[0, 1]]


def test_faiss_threads_follow_torch() -> None:
    import faiss

    from ad_memory.memory_bank import faiss_threads

    with faiss_threads():
        assert faiss.omp_get_max_threads() == torch.get_num_threads()
    with faiss_threads(1):
        assert faiss.omp_get_max_threads() == 1



def test_dense_coreset_picks_what_the_pruned_and_textbook_loops_pick():
    # the device (GPU) path of PatchCore's coreset: run here on CPU tensors, it must choose the same
    # rows in the same order as the pruned CPU search and the textbook loop
    from ad_memory.memory_bank import CoresetStats, greedy_coreset, greedy_coreset_dense, greedy_coreset_reference

    points = torch.randn(3000, 24, generator=torch.Generator().manual_seed(3)) * torch.linspace(0.2, 3.0, 24)
    stats = CoresetStats()
    dense = greedy_coreset_dense(points, 150, start=17, stats=stats)
    assert dense.device.type == "cpu" and dense[0] == 17 and len(set(dense.tolist())) == 150
    assert torch.equal(dense, greedy_coreset_reference(points, 150, start=17))
    assert torch.equal(dense, greedy_coreset(points, 150, start=17))
    assert stats.iterations == 149 and stats.touched_fraction == 1.0
    assert torch.equal(greedy_coreset_dense(points[:10], 10), torch.arange(10))


def _keyed_batches(rows: torch.Tensor, per_item: int, size: int, order: torch.Tensor) -> list[tuple[torch.Tensor, list[bytes]]]:
    """Items of ``per_item`` rows in ``order``, batched ``size`` items at a time, each keyed by its number."""
    items = [rows[i * per_item:(i + 1) * per_item] for i in order.tolist()]
    keys = [int(i).to_bytes(4, "big") for i in order.tolist()]
    return [(torch.cat(items[b:b + size]), keys[b:b + size]) for b in range(0, len(items), size)]


def test_keyed_rows_come_out_the_same_for_any_order_and_batching() -> None:
    """Issue 23: PatchCore's bank (and so its coreset) must not depend on how the stream is ordered or batched."""
    rows = torch.randn(40 * 4, 5, generator=torch.Generator().manual_seed(0))
    outputs = []
    for cap in (None, 37):
        for seed, size in ((0, 8), (1, 3), (2, 40)):
            order = torch.randperm(40, generator=torch.Generator().manual_seed(seed))
            collector = FeatureCollector(max_rows=cap, seed=5)
            for batch, keys in _keyed_batches(rows, 4, size, order):
                collector.add(batch, keys=keys)
            outputs.append((cap, torch.cat(collector.chunks())))
    for cap in (None, 37):
        same_cap = [out for c, out in outputs if c == cap]
        assert all(torch.equal(out, same_cap[0]) for out in same_cap[1:])
    assert torch.equal(outputs[0][1], rows)  # uncapped: the items sorted by key, i.e. back in item order
    assert outputs[-1][1].shape == (37, 5)
    collector = FeatureCollector(max_rows=37, seed=6)  # another seed draws another sample
    for batch, keys in _keyed_batches(rows, 4, 8, torch.arange(40)):
        collector.add(batch, keys=keys)
    assert not torch.equal(torch.cat(collector.chunks()), outputs[-1][1])


def test_keyed_sample_is_uniform_and_bounded() -> None:
    def fill(trial: int) -> FeatureCollector:
        collector = FeatureCollector(max_rows=100, seed=trial)
        for start in range(0, 1000, 40):  # items of 4 rows, 10 items per batch
            keys = [int(i).to_bytes(4, "big") for i in range(start // 4, start // 4 + 10)]
            collector.add(torch.arange(start, start + 40, dtype=torch.float32)[:, None].repeat(1, 3), keys=keys)
        return collector

    _assert_uniform(_keep_counts(fill))


def test_rows_that_do_not_split_over_their_keys_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="cannot be split evenly"):
        FeatureCollector().add(torch.zeros(7, 2), keys=[b"a", b"b"])
    with pytest.raises(InvalidInputError, match="cannot be split evenly"):
        FeatureCollector().add(torch.zeros(3, 2), keys=[])
    collector = FeatureCollector()
    collector.add(torch.zeros(0, 2), keys=[])  # an empty batch adds nothing
    assert len(collector) == 0
