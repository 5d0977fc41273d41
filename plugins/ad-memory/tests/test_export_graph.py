"""The export graphs of PatchCore and SPADE: exact chunked kNN as tensor ops, the same numbers as faiss."""

from __future__ import annotations

import pytest
import torch

from ad_memory.exact_knn import direct_knn, exact_knn
from ad_memory.memory_bank import knn
from ad_memory.patchcore import PatchCore
from ad_memory.spade import SPADE
from adcore.testing import make_normal_images, paste_defects

SIZE = 64


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_exact_knn_is_the_brute_force_answer_in_any_chunking(chunk: int) -> None:
    generator = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(50, 16, generator=generator), torch.randn(300, 16, generator=generator)
    distance, index = exact_knn(queries, bank, 5, chunk)
    want = torch.cdist(queries.double(), bank.double()).topk(5, dim=1, largest=False)
    torch.testing.assert_close(distance.double(), want.values, rtol=1e-4, atol=1e-4)
    assert torch.equal(index, want.indices)


def test_exact_knn_over_one_bank_is_one_gemm_per_chunk(tmp_path) -> None:
    """PatchCore's exported search: query sets (B, P, D) against one bank, each chunk's block made by a
    single Gemm (the bank's norms its bias), |q|² added to the survivors, not a pass over the block."""
    onnx = pytest.importorskip("onnx")
    generator = torch.Generator().manual_seed(3)
    bank, queries = torch.randn(300, 16, generator=generator), torch.randn(2, 50, 16, generator=generator)
    distance, index = exact_knn(queries, bank, 2, chunk=128)
    want = torch.cdist(queries.double(), bank.double()).topk(2, dim=-1, largest=False)
    torch.testing.assert_close(distance.double(), want.values, rtol=1e-4, atol=1e-4)
    assert torch.equal(index, want.indices)

    class Search(torch.nn.Module):
        def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return exact_knn(rows, bank, 1, chunk=128)

    path = tmp_path / "search.onnx"
    torch.onnx.export(Search(), (queries,), str(path), input_names=["rows"], dynamic_axes={"rows": {0: "batch"}},
                      opset_version=17, dynamo=False)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("Gemm") == 3  # 300 rows in chunks of 128
    assert "Sub" not in ops and "MatMul" not in ops, ops


@pytest.mark.parametrize("budget", [1 << 20, 40])  # one chunk, and chunks of 2 rows of 20 values
def test_direct_knn_keeps_small_distances_that_the_gemm_form_loses(budget: int) -> None:
    # rows of norm ~100 that differ by ~1e-2: SPADE's pooled features of two similar images
    generator = torch.Generator().manual_seed(7)
    centre = 10 * torch.randn(20, generator=generator)
    bank = centre + 1e-2 * torch.randn(9, 20, generator=generator)
    queries = centre + 1e-2 * torch.randn(5, 20, generator=generator)
    exact = torch.cdist(queries.double(), bank.double())
    expected, expected_index = exact.topk(3, largest=False)
    got, index = direct_knn(queries, bank, 3, budget=budget)
    assert torch.equal(index, expected_index)
    assert float(((got.double() - expected) / expected).abs().max()) < 1e-5
    gemm, _ = exact_knn(queries, bank, 3)
    assert float(((gemm.double() - expected) / expected).abs().max()) > 1e-3  # what the direct sum avoids


def test_exact_knn_batched_bank_and_faiss_agree() -> None:
    generator = torch.Generator().manual_seed(1)
    queries, banks = torch.randn(3, 20, 8, generator=generator), torch.randn(3, 90, 8, generator=generator)
    distance, index = exact_knn(queries, banks, 4, chunk=32)
    for row in range(3):
        faiss_distance, faiss_index = knn(queries[row], banks[row], 4)
        torch.testing.assert_close(distance[row], faiss_distance, rtol=1e-5, atol=1e-5)
        assert torch.equal(index[row], faiss_index)


@pytest.mark.parametrize("make", [lambda: PatchCore(input_size=SIZE, coreset_ratio=0.25),
                                  lambda: SPADE(input_size=SIZE)], ids=["patchcore", "spade"])
def test_export_predict_gives_predict(make) -> None:
    detector = make().fit(make_normal_images(6, (SIZE, SIZE)))
    images, _ = paste_defects(make_normal_images(3, (SIZE, SIZE), seed=4))
    with torch.inference_mode():
        scores, maps = detector._predict(images)
        graph_scores, graph_maps = detector._export_predict(images)
    torch.testing.assert_close(graph_scores, scores, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(graph_maps, maps, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: PatchCore(input_size=SIZE, coreset_ratio=0.25),
                                  lambda: SPADE(input_size=SIZE)], ids=["patchcore", "spade"])
def test_the_sidecar_declares_one_image_per_graph_call(make) -> None:
    # their exact kNN's distance blocks are sized per image at trace time: a batch of 8 holds 8x the memory
    from adcore.export import metadata_for

    detector = make().fit(make_normal_images(4, (SIZE, SIZE)))
    assert metadata_for(detector, "onnx", "model.onnx")["max_batch"] == 1
