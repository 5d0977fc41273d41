"""PaDiM's exported graph: per engine, the formulation that engine runs without copying its weights."""

from __future__ import annotations

import pytest
import torch

from ad_stat.padim import Padim
from adcore.export import export_detector
from adcore.export.graph import export_target, exporting_for
from adcore.testing import make_normal_images

SIZE = 64


@pytest.fixture(scope="module")
def fitted() -> Padim:
    return Padim(input_size=SIZE, num_features=24, seed=5).fit(make_normal_images(8, (SIZE, SIZE), seed=3))


def test_export_target_is_set_only_while_tracing() -> None:
    assert export_target() is None
    with exporting_for("openvino"):
        assert export_target() == "openvino"
    assert export_target() is None


def test_the_openvino_formulation_gives_predict(fitted: Padim) -> None:
    images = make_normal_images(3, (SIZE, SIZE), seed=9)
    with torch.no_grad():
        want_scores, want_maps = fitted._predict(images)
        with exporting_for("openvino"):
            scores, maps = fitted._export_predict(images)
    torch.testing.assert_close(scores, want_scores, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(maps, want_maps, rtol=1e-5, atol=1e-5 * float(want_maps.abs().max()))


def test_openvino_ir_applies_each_whitening_matrix_from_the_left(fitted: Padim, tmp_path) -> None:
    """A constant right-hand MatMul operand is repacked by OpenVINO's CPU plugin for every input shape."""
    openvino = pytest.importorskip("openvino")
    export_detector(fitted, tmp_path / "ov", "openvino")
    model = openvino.Core().read_model(str(tmp_path / "ov" / "model.xml"))
    whitening = [op for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"
                 and any(i.get_source_output().get_node().get_type_name() == "Constant" for i in op.inputs())]
    assert whitening, "the PaDiM graph should multiply by its stored whitening matrices"
    for op in whitening:
        left, right = (i.get_source_output().get_node().get_type_name() for i in op.inputs())
        assert left == "Constant" and right != "Constant", op.get_friendly_name()
