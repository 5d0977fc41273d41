"""Dataset folders: every layout mistake is a DatasetLayoutError saying what was expected."""

from __future__ import annotations

import math
import os
import shutil
import warnings

import numpy as np
import pytest
import torch

from adcore.data import FolderDataset, MVTecDataset, load_mask, make_loader
from adcore.errors import DatasetLayoutError, InvalidInputError
from adcore.metrics import UndefinedMetricError, aupro, auroc, evaluate


def test_a_good_tree_loads(mvtec_tree):
    folder = mvtec_tree()
    train = MVTecDataset(folder, split="train", image_size=32)
    test = MVTecDataset(folder.parent, "widget", split="test", image_size=32)
    assert len(train) == 4 and len(test) == 4 and test.labels == [0, 0, 1, 1]
    item = test[3]
    assert item["mask"].sum() > 0 and set(item["mask"].unique().tolist()) == {0.0, 1.0}


# -- missing or empty folders -----------------------------------------------------------------------
def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"dataset folder .*nowhere does not exist; expected the MVTec AD layout"):
        MVTecDataset(tmp_path / "nowhere")


def test_missing_train_folder_lists_what_is_there(mvtec_tree):
    folder = mvtec_tree()
    shutil.rmtree(folder / "train")
    with pytest.raises(DatasetLayoutError, match=r"has no 'train' folder \(found \['ground_truth', 'test'\]\)"):
        MVTecDataset(folder, split="train")


def test_missing_train_good(mvtec_tree):
    folder = mvtec_tree()
    (folder / "train" / "good").rename(folder / "train" / "ok")
    with pytest.raises(DatasetLayoutError, match="has no 'good' folder of defect-free training images"):
        MVTecDataset(folder, split="train")


def test_empty_train_good_says_what_it_found(mvtec_tree):
    folder = mvtec_tree()
    for path in (folder / "train" / "good").iterdir():
        path.rename(path.with_suffix(".heic"))
    with pytest.raises(DatasetLayoutError, match=r"no images found under .*good \(it holds 4 other entries, e\.g\. 000\.heic"):
        MVTecDataset(folder, split="train")
    shutil.rmtree(folder / "train" / "good")
    (folder / "train" / "good").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"\(the folder is empty\)"):
        MVTecDataset(folder, split="train")


def test_images_directly_in_the_split_folder(mvtec_tree):
    folder = mvtec_tree()
    shutil.copy(folder / "train" / "good" / "000.png", folder / "test" / "loose.png")
    with pytest.raises(DatasetLayoutError, match=r"holds 1 image\(s\) directly \(e\.g\. loose\.png\); put them in"):
        MVTecDataset(folder, split="test")


def test_empty_generic_folder(tmp_path):
    (tmp_path / "good").mkdir()
    with pytest.raises(DatasetLayoutError, match="contains no images"):
        FolderDataset(tmp_path / "good")
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        FolderDataset(tmp_path / "missing")


def test_bad_arguments(mvtec_tree):
    folder = mvtec_tree()
    with pytest.raises(InvalidInputError, match="split must be 'train' or 'test', got 'val'"):
        MVTecDataset(folder, split="val")
    with pytest.raises(InvalidInputError, match="missing_masks must be 'error' or 'empty'"):
        MVTecDataset(folder, split="test", missing_masks="skip")
    with pytest.raises(InvalidInputError, match="input_size must be between 16 and 4096"):
        MVTecDataset(folder, image_size=4)
    with pytest.raises(InvalidInputError, match="batch_size must be a positive integer"):
        make_loader(MVTecDataset(folder), 0)


# -- masks ------------------------------------------------------------------------------------------------
def test_defect_image_without_mask(mvtec_tree):
    folder = mvtec_tree()
    (folder / "ground_truth" / "scratch" / "001_mask.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"defect image .*scratch.001\.png has no mask at .*001_mask\.png; "
                                                 r"add it, or pass missing_masks='empty'"):
        MVTecDataset(folder, split="test")
    dataset = MVTecDataset(folder, split="test", missing_masks="empty", image_size=32)
    assert dataset.labels == [0, 0, 1, 1] and float(dataset[3]["mask"].sum()) == 0.0


def test_mask_named_like_its_image_is_found(mvtec_tree):
    folder = mvtec_tree()
    truth = folder / "ground_truth" / "scratch"
    (truth / "000_mask.png").rename(truth / "000.png")
    assert MVTecDataset(folder, split="test").samples[2][2] == truth / "000.png"


def test_mask_of_other_resolution_same_aspect_is_resized(mvtec_tree, write_image):
    folder = mvtec_tree(size=(24, 32))
    mask = np.zeros((12, 16), dtype=np.uint8)
    mask[1:4, 2:5] = 255
    write_image(folder / "ground_truth" / "scratch" / "000_mask.png", mask)
    item = MVTecDataset(folder, split="test", image_size=None)[2]
    assert tuple(item["mask"].shape) == (24, 32)
    assert float(item["mask"].sum()) == 36.0  # 3×3 block at half resolution → 6×6


def test_mask_of_other_aspect_ratio_is_an_error(mvtec_tree, write_image):
    folder = mvtec_tree(size=(24, 32))
    write_image(folder / "ground_truth" / "scratch" / "000_mask.png", np.zeros((32, 24), dtype=np.uint8))
    dataset = MVTecDataset(folder, split="test")
    with pytest.raises(DatasetLayoutError, match=r"mask .*000_mask\.png is 24×32 but its image .*000\.png is 32×24 "
                                                 r"\(a different aspect ratio\)"):
        dataset[2]


def test_mask_without_image_warns(mvtec_tree, write_image):
    folder = mvtec_tree()
    write_image(folder / "ground_truth" / "scratch" / "077_mask.png", np.zeros((24, 32), dtype=np.uint8))
    with pytest.warns(UserWarning, match=r"1 mask\(s\) under .* have no test image, e\.g\. .*077_mask\.png"):
        MVTecDataset(folder, split="test")


def test_corrupt_mask_names_the_mask(mvtec_tree):
    folder = mvtec_tree()
    (folder / "ground_truth" / "scratch" / "000_mask.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(Exception, match=r"000_mask\.png"):
        MVTecDataset(folder, split="test")[2]


@pytest.mark.parametrize("name, values, expected", [
    ("anti-aliased 0..255", [0, 40, 127, 128, 200, 255], [0, 0, 0, 1, 1, 1]),
    ("0/1", [0, 1, 1, 0, 0, 1], [0, 1, 1, 0, 0, 1]),
    ("class indices", [0, 2, 3, 0, 1, 0], [0, 1, 1, 0, 1, 0]),
    ("all zero", [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]),
])
def test_non_binary_masks_are_binarised_as_documented(tmp_path, write_image, name, values, expected):
    mask = load_mask(write_image(tmp_path / "m.png", np.array([values], dtype=np.uint8)))
    assert mask.dtype == torch.float32 and mask[0].tolist() == expected


def test_colour_sixteen_bit_and_palette_masks(tmp_path, write_image):
    red = np.zeros((2, 3, 3), dtype=np.uint8)
    red[0, 1] = (255, 0, 0)  # luminance 76 would be below a 128 cut: the brightest channel decides
    assert load_mask(write_image(tmp_path / "red.png", red)).tolist() == [[0, 1, 0], [0, 0, 0]]
    sixteen = np.array([[0, 65535, 30000]], dtype=np.uint16)
    assert load_mask(write_image(tmp_path / "m16.png", sixteen)).tolist() == [[0, 1, 0]]
    palette = write_image(tmp_path / "p.png", np.stack([red[..., 0]] * 3, -1), mode="P")
    assert load_mask(palette).tolist() == [[0, 1, 0], [0, 0, 0]]


# -- symbolic links ----------------------------------------------------------------------------------------
def test_symlink_loop_file_is_an_error(mvtec_tree):
    folder = mvtec_tree()
    good = folder / "train" / "good"
    os.symlink(good / "b_loop.png", good / "a_loop.png")
    os.symlink(good / "a_loop.png", good / "b_loop.png")
    with pytest.raises(DatasetLayoutError, match=r"a_loop\.png is a broken symbolic link or a symlink loop"):
        MVTecDataset(folder, split="train")


def test_symlink_loop_folder_is_an_error(mvtec_tree):
    folder = mvtec_tree()
    os.symlink(folder / "test", folder / "test" / "loop")
    with pytest.raises(DatasetLayoutError, match=r"loop is a symbolic link back to .* \(a loop\)"):
        MVTecDataset(folder, split="test")
    (folder / "test" / "loop").unlink()
    os.symlink(folder, folder / "test" / "up")
    with pytest.raises(DatasetLayoutError, match="a loop"):
        MVTecDataset(folder, split="test")


# -- generic folders --------------------------------------------------------------------------------------
def test_folder_dataset_masks(tmp_path, write_image, rgb_array):
    write_image(tmp_path / "good" / "g.png", rgb_array)
    write_image(tmp_path / "bad" / "b1.png", rgb_array)
    write_image(tmp_path / "bad" / "b2.png", rgb_array)
    write_image(tmp_path / "masks" / "b1_mask.png", np.full((20, 30), 255, dtype=np.uint8))
    with pytest.raises(DatasetLayoutError, match=r"mask folder .*nomasks does not exist"):
        FolderDataset(tmp_path / "good", [tmp_path / "bad"], tmp_path / "nomasks")
    with pytest.raises(DatasetLayoutError, match=r"defect image .*b2\.png has no mask in .*looked for b2_mask\.\* and b2\.\*"):
        FolderDataset(tmp_path / "good", [tmp_path / "bad"], tmp_path / "masks")
    dataset = FolderDataset(tmp_path / "good", [tmp_path / "bad"], tmp_path / "masks", missing_masks="empty", image_size=32)
    assert dataset.labels == [0, 1, 1]
    assert float(dataset[1]["mask"].mean()) == 1.0 and float(dataset[2]["mask"].sum()) == 0.0
    with pytest.raises(DatasetLayoutError, match="the same folder is listed twice"):
        FolderDataset(tmp_path / "good", [tmp_path / "good"])


# -- test sets for which a metric is undefined -----------------------------------------------------------
def _no_nan(results: dict) -> None:
    for key, value in results.items():
        assert not (isinstance(value, float) and math.isnan(value)), key


def test_only_good_test_images_say_which_metrics_are_undefined():
    labels, scores = torch.zeros(5), torch.rand(5)
    masks, maps = torch.zeros(5, 8, 8), torch.rand(5, 8, 8)
    with pytest.raises(UndefinedMetricError, match="the data has no anomalous samples"):
        auroc(labels, scores)
    with pytest.raises(UndefinedMetricError, match="no defect region in any ground-truth mask"):
        aupro(masks, maps)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from numpy either
        results = evaluate(labels, scores, masks, maps)
    _no_nan(results)
    assert results["image_auroc"] is None and results["pixel_auroc"] is None and results["aupro"] is None
    assert results["notes"]["image_auroc"] == "ROC is undefined: the data has no anomalous samples"
    assert results["notes"]["aupro"] == "AUPRO is undefined: no defect region in any ground-truth mask"


def test_only_defective_test_images():
    labels, scores = torch.ones(4), torch.rand(4)
    masks = torch.zeros(4, 8, 8)
    masks[:, 2:5, 2:5] = 1
    results = evaluate(labels, scores, masks, torch.rand(4, 8, 8))
    _no_nan(results)
    assert results["image_auroc"] is None and "no normal samples" in results["notes"]["image_auroc"]
    assert isinstance(results["pixel_auroc"], float) and isinstance(results["aupro"], float)  # pixels have both classes


def test_masks_covering_everything_and_empty_inputs():
    with pytest.raises(UndefinedMetricError, match="the masks cover every pixel"):
        aupro(torch.ones(2, 4, 4), torch.rand(2, 4, 4))
    with pytest.raises(UndefinedMetricError, match="there are no samples"):
        auroc([], [])
    with pytest.raises(ValueError, match=r"1 score\(s\) are NaN or Inf \(e\.g\. at index \[2\]\)"):
        auroc([0, 1, 1], [0.1, 0.2, float("nan")])
    with pytest.raises(ValueError, match="masks .* and anomaly maps .* differ in shape"):
        evaluate([0, 1], [0.1, 0.2], torch.zeros(2, 4, 4), torch.zeros(2, 5, 4))


def test_real_loader_on_an_only_good_test_set(mvtec_tree, mean_detector_class):
    folder = mvtec_tree(defects={})
    detector = mean_detector_class().fit(make_loader(MVTecDataset(folder, image_size=32), 2))
    test = MVTecDataset(folder, split="test", image_size=32)
    batch = next(iter(make_loader(test, 8)))
    prediction = detector.predict(batch["image"])
    results = evaluate(batch["label"], prediction.pred_score, batch["mask"], prediction.anomaly_map)
    _no_nan(results)
    assert results["image_auroc"] is None and "no anomalous samples" in results["notes"]["image_auroc"]
