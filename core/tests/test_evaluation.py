"""Evaluation helpers keep what detectors return: values, precision, order."""

from __future__ import annotations

import torch

from adcore.evaluation import collect_predictions
from adcore.prediction import Prediction


class _LargeMapDetector:
    """Maps with raw values beyond float16's range (DifferNet's input gradients reach them)."""

    def predict(self, images: torch.Tensor) -> Prediction:
        count = images.shape[0]
        maps = torch.linspace(1e5, 1e5 + 1.0, images.shape[-2] * images.shape[-1]).view(1, *images.shape[-2:])
        return Prediction(pred_score=torch.full((count,), 7.0), anomaly_map=maps.repeat(count, 1, 1))


def test_collected_maps_stay_finite_and_keep_full_precision() -> None:
    batch = {"image": torch.rand(2, 3, 8, 8), "label": torch.tensor([0, 1]), "mask": torch.zeros(2, 8, 8),
             "path": ["a.png", "b.png"]}
    outputs = collect_predictions(_LargeMapDetector(), [batch])
    maps = outputs["maps"]
    assert torch.isfinite(maps).all()
    # neighbouring pixels differ by 1/63 at 1e5: float16 (spacing 64 there) would make them all equal
    assert maps[0].unique().numel() == 64


class _BrightnessDetector:
    """Scores an image by its mean brightness, its map by the pixels' brightness (no training)."""

    def fit(self, loader):
        return self

    def predict(self, images: torch.Tensor) -> Prediction:
        maps = images.mean(1)
        return Prediction(pred_score=maps.flatten(1).mean(1), anomaly_map=maps)


def _folders(tmp_path, with_masks: bool):
    import numpy as np
    from PIL import Image

    from adcore.data import FolderDataset

    def write(path, array):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)

    for i in range(4):
        write(tmp_path / "good" / f"{i}.png", np.full((16, 16, 3), 40 + i, dtype=np.uint8))
        spot = np.full((16, 16, 3), 40, dtype=np.uint8)
        spot[2:6 + i, 2:6] = 250
        write(tmp_path / "bad" / f"{i}.png", spot)
        mask = np.zeros((16, 16), dtype=np.uint8)
        mask[2:6 + i, 2:6] = 255
        write(tmp_path / "masks" / f"{i}_mask.png", mask)
    return FolderDataset(tmp_path / "good", [tmp_path / "bad"], tmp_path / "masks" if with_masks else None, image_size=16)


def test_a_test_set_without_masks_gets_image_level_metrics_and_the_reason(tmp_path) -> None:
    from adcore.evaluation import NO_MASKS_NOTE, evaluate_detector
    from adcore.metrics import evaluate

    with_masks, without = _folders(tmp_path, True), _folders(tmp_path, False)
    assert with_masks.masks_given and not without.masks_given
    good = torch.zeros(4, 3, 16, 16)
    full, outputs = evaluate_detector(_BrightnessDetector(), good, with_masks, calibration_set=[], latency=False)
    image_only, _ = evaluate_detector(_BrightnessDetector(), good, without, calibration_set=[], latency=False)
    reference = evaluate(outputs["labels"], outputs["scores"], outputs["masks"], outputs["maps"])
    assert (full.image_auroc, full.pixel_auroc, full.aupro) == (reference["image_auroc"], reference["pixel_auroc"],
                                                                reference["aupro"])
    assert full.pixel_auroc is not None and full.aupro is not None and not full.notes
    assert image_only.image_auroc == full.image_auroc and image_only.image_f1_max == full.image_f1_max
    assert image_only.pixel_auroc is None and image_only.aupro is None
    assert image_only.notes == {"pixel_auroc": NO_MASKS_NOTE, "aupro": NO_MASKS_NOTE}
    assert "no masks given" in NO_MASKS_NOTE


class _MeanDetector:
    """Map = the image's mean over channels, score = its maximum: each item's outputs are recognisable."""

    def predict(self, images: torch.Tensor) -> Prediction:
        maps = images.mean(1)
        return Prediction(pred_score=maps.flatten(1).amax(1), anomaly_map=maps.half())


def test_collected_outputs_are_the_same_written_in_place_or_gathered() -> None:
    from adcore.data import make_loader

    class Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 5

        def __getitem__(self, index: int) -> dict:
            generator = torch.Generator().manual_seed(index)
            return {"image": torch.rand(3, 6, 7, generator=generator), "label": index % 2,
                    "mask": (torch.rand(6, 7, generator=generator) > 0.5).float(), "path": f"{index}.png"}

    in_place = collect_predictions(_MeanDetector(), make_loader(Items(), 2))  # knows its length: one tensor each
    gathered = collect_predictions(_MeanDetector(), list(make_loader(Items(), 2)))  # a plain list: lists + cat
    for key in ("scores", "labels", "masks", "maps"):
        assert torch.equal(in_place[key], gathered[key]), key
    assert in_place["maps"].dtype == torch.float32 and in_place["masks"].dtype == torch.bool
    assert in_place["maps"].shape == (5, 6, 7) and in_place["paths"] == [f"{i}.png" for i in range(5)]
    expected = torch.stack([Items()[i]["image"].mean(0).half().float() for i in range(5)])
    assert torch.equal(in_place["maps"], expected)
