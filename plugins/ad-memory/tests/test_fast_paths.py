"""The fast scoring paths of issue 21 give the numbers of the implementations they replaced.

* the exact GEMM search (`nearest_rows`, used for banks on non-CPU devices) against faiss' exact
  `IndexFlatL2` and against float64 brute force, for single and batched banks;
* PatchCore's reweighting on the argmax patches (one small product) against the previous second
  index search, and its whole `_predict` with the torch search forced on the CPU against faiss;
* SPADE's batched pixel search (whole batch, and one image per search) against the previous
  per-image, per-stage loop.
"""

from __future__ import annotations

import pytest
import torch

from ad_memory import memory_bank
from ad_memory.exact_knn import nearest_rows, squared_norms
from ad_memory.memory_bank import NearestNeighbourIndex, batched_knn, knn
from ad_memory.patchcore import PatchCore
from ad_memory.spade import SPADE
from adcore.ops import gaussian_blur, upsample
from adcore.testing import make_normal_images, paste_defects

SIZE = 64


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("budget", [50, 1 << 24])  # many query chunks / one
def test_nearest_rows_is_the_exact_search(k: int, budget: int) -> None:
    generator = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(70, 24, generator=generator), torch.randn(400, 24, generator=generator)
    distance, index = nearest_rows(queries, bank, k, bank_sq=squared_norms(bank), budget=budget)
    want = torch.cdist(queries.double(), bank.double()).topk(k, dim=1, largest=False)
    torch.testing.assert_close(distance.double(), want.values, rtol=1e-4, atol=1e-4)
    assert torch.equal(index, want.indices)
    faiss_distance, faiss_index = knn(queries, bank, k)
    torch.testing.assert_close(distance, faiss_distance, rtol=1e-5, atol=1e-5)
    assert torch.equal(index, faiss_index)


def test_batched_knn_is_one_search_per_bank_on_either_path(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(1)
    queries, banks = torch.randn(3, 40, 16, generator=generator), torch.randn(3, 150, 16, generator=generator)
    faiss_distance, faiss_index = batched_knn(queries, banks, 2)
    monkeypatch.setattr(memory_bank, "_on_cpu", lambda *tensors: False)  # the non-CPU (GEMM) path, here on the CPU
    gemm_distance, gemm_index = batched_knn(queries, banks, 2)
    for row in range(3):
        want = torch.cdist(queries[row].double(), banks[row].double()).topk(2, dim=1, largest=False)
        torch.testing.assert_close(faiss_distance[row].double(), want.values, rtol=1e-4, atol=1e-4)
        assert torch.equal(faiss_index[row], want.indices)
    torch.testing.assert_close(gemm_distance, faiss_distance, rtol=1e-5, atol=1e-5)
    assert torch.equal(gemm_index, faiss_index)


@pytest.fixture(scope="module")
def patchcore() -> PatchCore:
    return PatchCore(input_size=SIZE, coreset_ratio=0.25).fit(make_normal_images(8, (SIZE, SIZE), seed=0))


def _previous_patchcore_scores(detector: PatchCore, images: torch.Tensor) -> torch.Tensor:
    """PatchCore's image score as computed before issue 21: faiss for both searches."""
    features = detector._embed(images)
    count, dim = features.shape[:2]
    patches = features.permute(0, 2, 3, 1).reshape(count, -1, dim)
    index = NearestNeighbourIndex(detector.memory_bank_)
    distance, nearest = index.search(patches.reshape(-1, dim), k=1)
    distance, nearest = distance.view(count, -1), nearest.view(count, -1)
    top = distance.argmax(1)
    rows = torch.arange(count)
    best = distance[rows, top]
    neighbours = detector.num_neighbors
    match = nearest[rows, top]
    _, support = index.search(detector.memory_bank_[match], k=neighbours + 1)
    others = torch.stack([row[row != m][: neighbours - 1] for row, m in zip(support, match, strict=True)])
    support = torch.cat([match[:, None], others], 1)
    to_support = (detector.memory_bank_[support] - patches[rows, top][:, None]).norm(dim=2)
    return (1.0 - torch.softmax(to_support, dim=1)[:, 0]) * best


def test_patchcore_scores_equal_the_previous_implementation(patchcore: PatchCore) -> None:
    images, _ = paste_defects(make_normal_images(4, (SIZE, SIZE), seed=5))
    with torch.inference_mode():
        scores, _ = patchcore._predict(images)
        previous = _previous_patchcore_scores(patchcore, images)
    torch.testing.assert_close(scores, previous, rtol=1e-5, atol=1e-6)


def test_patchcore_torch_search_equals_faiss(patchcore: PatchCore, monkeypatch: pytest.MonkeyPatch) -> None:
    images, _ = paste_defects(make_normal_images(3, (SIZE, SIZE), seed=6))
    with torch.inference_mode():
        scores, maps = patchcore._predict(images)
        monkeypatch.setattr(memory_bank, "_on_cpu", lambda *tensors: False)
        patchcore._search = None  # rebuilt: the same bank, searched by the GEMM path
        gemm_scores, gemm_maps = patchcore._predict(images)
    patchcore._search = None
    torch.testing.assert_close(gemm_scores, scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gemm_maps, maps, rtol=1e-5, atol=1e-5)


def _previous_spade(detector: SPADE, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SPADE's `_predict` as it was before issue 21: one pixel search per test image."""
    vector, maps = detector._features(images)
    train_count = detector.image_features_.shape[0]
    k_image = min(detector.num_image_neighbors, train_count)
    k_map = min(detector.num_map_images, train_count)
    distance, nearest = knn(vector, detector.image_features_, max(k_image, k_map))
    scores = distance[:, :k_image].mean(1)
    grid = tuple(maps[0].shape[-2:])
    query = detector._stack(maps, grid)
    pixel_maps = []
    for row in range(images.shape[0]):
        gallery = detector._stack(detector._gallery(nearest[row, :k_map]), grid)
        channels = gallery.shape[1]
        gallery_rows = gallery.permute(0, 2, 3, 1).reshape(-1, channels)
        query_rows = query[row].permute(1, 2, 0).reshape(-1, channels)
        pixel, _ = knn(query_rows, gallery_rows, detector.num_map_neighbors)
        pixel_maps.append(pixel.mean(1).view(grid))
    maps_out = upsample(torch.stack(pixel_maps), tuple(images.shape[-2:]))
    return scores, gaussian_blur(maps_out, detector.sigma)


@pytest.mark.parametrize("params", [{}, {"num_map_images": 3, "num_map_neighbors": 2}])
def test_spade_equals_the_previous_per_image_loop(params: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    detector = SPADE(input_size=SIZE, **params).fit(make_normal_images(7, (SIZE, SIZE), seed=1))
    images, _ = paste_defects(make_normal_images(3, (SIZE, SIZE), seed=2))
    with torch.inference_mode():
        want_scores, want_maps = _previous_spade(detector, images)
        scores, maps = detector._predict(images)
        with monkeypatch.context() as patch:  # one test image per search (the CPU's choice for large galleries)
            patch.setattr(SPADE, "_images_per_search", staticmethod(lambda count, size, device: 1))
            single_scores, single_maps = detector._predict(images)
        monkeypatch.setattr(memory_bank, "_on_cpu", lambda *tensors: False)
        gemm_scores, gemm_maps = detector._predict(images)
    torch.testing.assert_close(single_scores, want_scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(single_maps, want_maps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores, want_scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps, want_maps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gemm_scores, want_scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gemm_maps, want_maps, rtol=1e-4, atol=1e-4)
