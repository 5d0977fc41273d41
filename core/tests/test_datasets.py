"""The one dataset grammar (adcore.datasets): every form, what each split holds, and its errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adcore import benchmark as bench
from adcore.datasets import DatasetSpec, open_dataset, parse_dataset, parse_datasets
from adcore.errors import ConfigurationError, DatasetLayoutError


def _write(path: Path, value: int, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)


def _category(root: Path, name: str, *, masks: bool = True) -> Path:
    folder = root / name
    for i in range(6):
        _write(folder / "train" / "good" / f"{i:03d}.png", 100 + i)
    for i in range(2):
        _write(folder / "test" / "good" / f"{i:03d}.png", 120 + i)
        _write(folder / "test" / "scratch" / f"{i:03d}.png", 200 + i)
        if masks:
            mask = folder / "ground_truth" / "scratch" / f"{i:03d}_mask.png"
            mask.parent.mkdir(parents=True, exist_ok=True)
            array = np.zeros((16, 16), dtype=np.uint8)
            array[4:8, 4:8] = 255
            Image.fromarray(array).save(mask)
    return folder


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    _category(root, "widget")
    _category(root, "gadget")
    for i in range(10):
        _write(root / "photos" / "ok" / f"{i:03d}.png", 50 + i)
    for i in range(3):
        _write(root / "photos" / "bad" / f"{i:03d}.png", 250)
    return root


def test_every_benchmark_form_parses_into_the_one_grammar(data: Path):
    assert bench.parse_datasets is parse_datasets and bench.DatasetSpec is DatasetSpec  # one grammar, not two
    items = [f"{data}:widget", str(data / "gadget"), str(data), "named=widget", "widget", {"path": "widget", "max_train": 4},
             f"folder:train={data}/widget/train/good,good={data}/widget/test/good,defect={data}/widget/test/scratch,"
             f"masks={data}/widget/ground_truth/scratch,name=w",
             "folder:train=widget/train/good,good=widget/test/good,defect=widget/test/scratch",
             "ok=folder:train=photos/ok,good=widget/test/good,defect=photos/bad",
             {"kind": "folder", "train": "photos/ok", "good": "widget/test/good", "defects": ["photos/bad"]}]
    specs = parse_datasets(items, data, max_train=7)
    assert [spec.name for spec in specs][:5] == ["widget", "gadget", "gadget-2", "widget-2", "named"]
    assert (specs[0].kind, specs[0].root, specs[0].category, specs[0].max_train) == ("mvtec", str(data), "widget", 7)
    # the parent folder gives one dataset per category (gadget-2, widget-2); a bare category folder is its own root
    assert (specs[5].root, specs[5].category) == (str(data / "widget"), None)
    assert (specs[7].kind, specs[7].name, specs[7].masks) == ("folder", "w", f"{data}/widget/ground_truth/scratch")
    assert specs[8].train == str(data / "widget/train/good") and specs[8].defects == (str(data / "widget/test/scratch"),)
    assert (specs[9].name, specs[9].good) == ("ok", str(data / "widget/test/good"))
    assert specs[10].defects == (str(data / "photos/bad"),) and len(specs) == 11


def test_mvtec_splits_match_the_benchmark_loader(data: Path):
    for text in (f"{data}:widget", str(data / "widget")):
        train, test = parse_dataset(text).load(16)
        reference_train, reference_test = bench.parse_datasets([text])[0].load(16)
        assert [item["path"] for item in train] == [item["path"] for item in reference_train]
        assert [item["path"] for item in test] == [item["path"] for item in reference_test]
        assert test.masks_given and len(train) == 6 and sum(test.labels) == 2


def test_folder_spec_with_only_defects_holds_out_an_even_share_of_the_good_images(data: Path):
    spec = parse_dataset("folder:good=photos/ok,defect=photos/bad", data)
    assert (spec.kind, spec.train, spec.good, spec.name) == ("folder", str(data / "photos/ok"), None, "photos")
    assert spec.holds_out_test_good
    train, test = spec.load(16)
    train_paths = {Path(item["path"]).name for item in train}
    test_items = [test[i] for i in range(len(test))]
    good_test = {Path(item["path"]).name for item in test_items if item["label"] == 0}
    assert good_test == {"002.png", "007.png"}  # 20 % of 10, evenly spaced
    assert train_paths.isdisjoint(good_test) and len(train_paths | good_test) == 10
    assert sum(item["label"] for item in test_items) == 3
    from adcore.evaluation import masks_given

    assert not masks_given(test)  # no masks= given: image-level only
    bigger = parse_dataset("folder:good=photos/ok,defect=photos/bad,test_fraction=0.5", data)
    assert len(open_dataset(bigger, "train", 16)) == 5


def test_folder_spec_with_test_good_and_masks(data: Path):
    spec = parse_dataset(f"folder:good=photos/ok,test_good=widget/test/good,defect=widget/test/scratch,"
                         f"masks=widget/ground_truth/scratch", data)
    assert (spec.train, spec.good) == (str(data / "photos/ok"), str(data / "widget/test/good"))
    train, test = spec.load(16)
    assert len(train) == 10 and len(test) == 4 and test.masks_given


def test_a_plain_folder_of_good_images_is_training_data_only(data: Path):
    spec = parse_dataset(str(data / "photos" / "ok"))
    assert (spec.kind, spec.train, spec.has_test, spec.name) == ("folder", str(data / "photos/ok"), False, "ok")
    assert len(open_dataset(spec, "train", 16)) == 10
    with pytest.raises(DatasetLayoutError, match="good images only, nothing to test on; give defect images"):
        open_dataset(spec, "test", 16)


def test_an_mvtec_category_without_ground_truth_is_evaluated_image_level(tmp_path: Path):
    folder = _category(tmp_path, "plain", masks=False)
    test = open_dataset(parse_dataset(str(folder)), "test", 16)
    assert len(test) == 4 and not test.masks_given


def test_a_parent_of_categories_is_one_dataset_only_in_lists(data: Path):
    assert [spec.category for spec in parse_datasets([str(data)])] == ["gadget", "widget"]
    with pytest.raises(ConfigurationError, match="holds 2 categories"):
        parse_dataset(str(data))


@pytest.mark.parametrize("text,message", [
    ("folder:good=a,colour=b", "unknown key 'colour'"),
    ("folder:good=a,oops", "expected key=value parts"),
    ("folder:defect=a", "needs good=DIR"),
    ("folder:good=a,good=b", "good= is given twice"),
    ("folder:train=a,good=b,test_good=c", "drop test_good="),
    ("folder:good=a,defect=b,test_fraction=1.5", "test_fraction must be a number between 0 and 1"),
    ("nowhere", "does not exist"),
])
def test_malformed_specs_say_what_is_wrong(data: Path, text: str, message: str):
    with pytest.raises(ConfigurationError, match=message):
        parse_dataset(text, data)


def test_too_few_good_images_to_hold_out(tmp_path: Path):
    _write(tmp_path / "ok" / "a.png", 1)
    _write(tmp_path / "bad" / "b.png", 2)
    spec = parse_dataset(f"folder:good={tmp_path}/ok,defect={tmp_path}/bad")
    with pytest.raises(DatasetLayoutError, match="too few to hold a share out"):
        open_dataset(spec, "test", 16)


def test_a_folder_of_fifty_other_files_is_listed_capped(tmp_path: Path):
    from adcore.data import FolderDataset, MVTecDataset

    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(50):
        (junk / f"file_{i:02d}.txt").write_text("not an image")
    expected = r"file_00\.txt, .*file_09\.txt, \.\.\. and 40 more"
    with pytest.raises(ConfigurationError, match=r"it holds 50 entries: " + expected) as parsed:
        parse_dataset(str(junk))
    with pytest.raises(DatasetLayoutError, match=r"it holds 50 other entries, e\.g\. " + expected) as opened:
        FolderDataset(junk)
    with pytest.raises(DatasetLayoutError, match=r"has no 'train' folder \(found \['file_00\.txt'.*'file_09\.txt'\] "
                                                 r"and 40 more\)") as layout:
        MVTecDataset(junk, split="train")
    for error in (parsed, opened, layout):
        assert "file_10.txt" not in str(error.value) and len(str(error.value)) < 800
