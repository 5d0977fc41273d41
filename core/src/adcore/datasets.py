"""The one dataset grammar of ``adcore train``, ``eval``, ``predict`` and ``benchmark``.

A dataset is named by a short text (or, in a benchmark config, a dict), parsed into a
:class:`DatasetSpec` by :func:`parse_dataset` (exactly one dataset) or :func:`parse_datasets` (a
list; a parent folder expands to its categories), then opened split by split with
:func:`open_dataset`. The forms:

``ROOT:CATEGORY``
    the MVTec AD layout ``ROOT/CATEGORY/{train/good, test/<type>, ground_truth/<type>}``.
``CATEGORY_DIR``
    a folder with ``train/`` (and ``test/``): one MVTec-layout category.
``PARENT``
    a folder of such category folders: every one of them, sorted (``parse_datasets`` only).
``IMAGES_DIR``
    a plain folder of good images: training data only (``adcore train padim photos/``).
``folder:good=DIR,defect=DIR[,defect=DIR2][,masks=DIR][,test_good=DIR][,name=NAME][,test_fraction=F]``
    generic folders. ``good=`` holds the good images; the good *test* images are ``test_good=``, or,
    when only ``defect=`` folders are given, an evenly spaced share ``test_fraction`` (default 0.2)
    of ``good=`` that is then left out of training. ``masks=`` holds ``<stem>_mask.<ext>`` or
    ``<stem>.<ext>`` for the defect images; without it the test set is evaluated image-level.
    The benchmark's older form ``folder:train=DIR,good=DIR,defect=DIR`` is the same with ``train=``
    as the training images and ``good=`` as the good test images.

A ``NAME=`` prefix names the dataset (``bottle=/data/mvtec:bottle``). Relative paths are taken
from ``data_root`` (the current folder when ``None``). Config dicts take the fields of
:class:`DatasetSpec` (``defect`` or ``defects``) plus ``path`` (any of the text forms).
Malformed specs raise :class:`~adcore.errors.ConfigurationError`; folders that are not what the
spec says raise :class:`~adcore.errors.DatasetLayoutError` when they are opened.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from adcore.errors import ConfigurationError, DatasetLayoutError

__all__ = ["DatasetSpec", "parse_dataset", "parse_datasets", "open_dataset", "training_folder", "SPLITS",
           "DEFAULT_TEST_FRACTION", "SPEC_HELP"]

SPLITS = ("train", "test")
#: share of the good images held out as good test images when a folder spec gives no test_good=
DEFAULT_TEST_FRACTION = 0.2
#: one line for ``--help`` texts
SPEC_HELP = ("ROOT:CATEGORY, a category folder (train/, test/), a plain folder of good images, or "
             "folder:good=DIR,defect=DIR[,defect=DIR2][,masks=DIR][,test_good=DIR]")

_FOLDER_KEYS = ("train", "good", "test_good", "defect", "masks", "name", "test_fraction")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset, as parsed; opening it (:func:`open_dataset`) reads the folders.

    ``kind="mvtec"``: ``root``/``category`` in the MVTec AD layout (``category=None`` when ``root``
    is the category folder itself). ``kind="folder"``: ``train`` (good training images), ``good``
    (good test images, or ``None`` to hold out ``test_fraction`` of ``train`` when there are
    ``defects``), ``defects`` (folders of defective test images) and optional ``masks``.
    ``max_train`` caps the training images (evenly spaced, deterministic); the test set stays full.
    """

    name: str
    kind: str = "mvtec"
    root: str = ""
    category: str | None = None
    train: str | None = None
    good: str | None = None
    defects: tuple[str, ...] = ()
    masks: str | None = None
    max_train: int | None = None
    test_fraction: float = DEFAULT_TEST_FRACTION

    @property
    def holds_out_test_good(self) -> bool:
        """True when the good test images are a share of the training folder (no ``test_good=``)."""
        return self.kind == "folder" and self.good is None and bool(self.defects)

    @property
    def has_test(self) -> bool:
        """Whether a test split can exist (an MVTec ``test/`` folder, or good test or defect folders)."""
        if self.kind == "mvtec":
            return (self.folder / "test").is_dir()
        return bool(self.good or self.defects)

    @property
    def folder(self) -> Path:
        """The MVTec category folder (``kind="mvtec"``) or the training folder (``kind="folder"``)."""
        if self.kind == "mvtec":
            return Path(self.root) / self.category if self.category else Path(self.root)
        return Path(self.train or self.good or "")

    def identity(self) -> dict[str, Any]:
        """What makes two benchmark runs comparable (not the absolute path: ``--data-root`` may move)."""
        return {"name": self.name, "kind": self.kind, "category": self.category, "max_train": self.max_train}

    def describe(self) -> str:
        if self.kind == "mvtec":
            where = str(self.folder)
        elif not self.has_test:
            where = f"good images {self.train} (no test set)"
        else:  # the benchmark's wording, which its reports show
            good = self.good or f"<{self.test_fraction:g} of train, held out>"
            where = f"train={self.train} good={good} defects={list(self.defects)}"
        cap = f" (train capped at {self.max_train})" if self.max_train else ""
        return f"{self.name}: {where}{cap}"

    def load(self, image_size: int | tuple[int, int] | None) -> tuple[Any, Any]:
        """``(train, test)`` datasets at ``image_size`` (see :func:`open_dataset`)."""
        return open_dataset(self, "train", image_size), open_dataset(self, "test", image_size)


# -- parsing -----------------------------------------------------------------------------------
def _resolve_path(path: str | Path, base: Path | str | None) -> Path:
    path = Path(os.path.expanduser(str(path)))
    return path if path.is_absolute() or base is None else Path(base) / path


def _unique_name(name: str, taken: set[str]) -> str:
    candidate, counter = name, 2
    while candidate in taken:
        candidate, counter = f"{name}-{counter}", counter + 1
    taken.add(candidate)
    return candidate


def _fraction(value: Any, text: Any) -> float:
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = -1.0
    if not 0.0 < fraction < 1.0:
        raise ConfigurationError(f"dataset {text!r}: test_fraction must be a number between 0 and 1, got {value!r}")
    return fraction


def _folder_spec(fields: dict[str, Any], data_root: Path | str | None, max_train: int | None, text: Any) -> DatasetSpec:
    """A ``kind="folder"`` spec from ``train``/``good``/``test_good``/``defects``/``masks``/``name`` fields."""
    def resolve(value: Any) -> str | None:
        return None if value in (None, "") else str(_resolve_path(value, data_root))

    defects = fields.get("defects", fields.get("defect", []))
    defects = [defects] if isinstance(defects, (str, Path)) else list(defects)
    train, good, test_good = resolve(fields.get("train")), resolve(fields.get("good")), resolve(fields.get("test_good"))
    if train and good and test_good:
        raise ConfigurationError(f"dataset {text!r}: with train= given, good= already names the good test images; "
                                 "drop test_good= (or use good= for training and test_good= for testing)")
    if not train:  # the new form: good= are the good images to learn from
        train, good = good, test_good
    elif test_good:
        good = test_good
    if not train:
        raise ConfigurationError(f"dataset {text!r}: a folder dataset needs good=DIR (the defect-free images); "
                                 "e.g. folder:good=images/ok,defect=images/scratch")
    named_by = resolve(fields.get("good"))  # the benchmark's rule: the dataset is named after good='s parent
    name = fields.get("name") or (Path(named_by).parent.name if named_by else "folder")
    fraction = _fraction(fields.get("test_fraction", DEFAULT_TEST_FRACTION), text)
    return DatasetSpec(str(name), "folder", "", None, train, good, tuple(resolve(d) or "" for d in defects),
                       resolve(fields.get("masks")), fields.get("max_train", max_train), fraction)


def _parse_folder_text(body: str, text: str) -> dict[str, Any]:
    fields: dict[str, Any] = {"defects": []}
    for part in body.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigurationError(f"dataset {text!r}: expected key=value parts ({', '.join(k + '=' for k in _FOLDER_KEYS)})")
        if key == "defect":
            fields["defects"].append(value)
        elif key in _FOLDER_KEYS:
            if key in fields and fields[key] != value:
                raise ConfigurationError(f"dataset {text!r}: {key}= is given twice; only defect= may repeat")
            fields[key] = value
        else:
            raise ConfigurationError(f"dataset {text!r}: unknown key {key!r} (use {', '.join(_FOLDER_KEYS)})")
    return fields


def _folder_contents(path: Path) -> str:
    from adcore.data import summarize_names

    try:
        names = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    except OSError:
        return ""
    return f" (it holds {len(names)} entries: {summarize_names(names)})" if names else " (it is empty)"


def _parse_one(item: Any, data_root: Path | str | None, max_train: int | None) -> list[DatasetSpec]:
    """One spec string or config dict → its specs (several for a parent folder), names not yet unique."""
    options: dict[str, Any] = {}
    if isinstance(item, dict):
        options = dict(item)
        text = options.pop("path", None)
        if text is None and options.get("kind", "mvtec") == "folder":
            return [_folder_spec(options, data_root, max_train, item)]
        if text is None:
            raise ConfigurationError(f"dataset {item!r}: give 'path' (ROOT:CATEGORY or a folder) or kind='folder' "
                                     "with folders")
    else:
        text = str(item)
    name_override = options.get("name")
    if re.match(r"^[A-Za-z0-9_.-]+=", text) and not text.startswith("folder:"):
        name_override, text = text.split("=", 1)
    cap = options.get("max_train", max_train)
    if text.startswith("folder:"):
        fields = _parse_folder_text(text[len("folder:"):], text)
        if name_override:
            fields["name"] = name_override
        return [_folder_spec({**fields, "max_train": cap}, data_root, max_train, text)]
    root_text, sep, category = text.rpartition(":")
    if sep and root_text and "/" not in category and _resolve_path(root_text, data_root).joinpath(category).is_dir():
        root = _resolve_path(root_text, data_root)
        return [DatasetSpec(name_override or category, "mvtec", str(root), category, max_train=cap)]
    path = _resolve_path(text, data_root)
    if (path / "train").is_dir():
        return [DatasetSpec(name_override or path.name, "mvtec", str(path), None, max_train=cap)]
    children = sorted(p for p in path.iterdir() if (p / "train").is_dir()) if path.is_dir() else []
    if children:
        return [DatasetSpec(f"{name_override}/{child.name}" if name_override else child.name, "mvtec", str(path),
                            child.name, max_train=cap) for child in children]
    if path.is_dir():
        from adcore.data import list_images

        if list_images(path):
            return [DatasetSpec(name_override or path.name, "folder", "", None, str(path), None, (), None, cap)]
    hint = ("it does not exist" if not path.exists() else
            f"it has no images, no train/ folder and no sub-folder with one{_folder_contents(path)}")
    raise ConfigurationError(f"dataset {text!r} (resolved to {path}): {hint}; give {SPEC_HELP}")


def parse_datasets(items: list[Any], data_root: Path | str | None = None, *,
                   max_train: int | None = None) -> list[DatasetSpec]:
    """Spec strings or config dicts → :class:`DatasetSpec` list, names made unique (``bottle``, ``bottle-2``).

    A parent folder of MVTec categories expands to every category, sorted. ``max_train`` is the
    default training cap (a dict's ``max_train`` wins).
    """
    specs: list[DatasetSpec] = []
    taken: set[str] = set()
    for item in items:
        for spec in _parse_one(item, data_root, max_train):
            specs.append(replace(spec, name=_unique_name(spec.name, taken)))
    return specs


def parse_dataset(item: Any, data_root: Path | str | None = None) -> DatasetSpec:
    """Exactly one dataset from a spec string or config dict (a parent of several categories is an error)."""
    specs = _parse_one(item, data_root, None)
    if len(specs) != 1:
        names = ", ".join(spec.category or spec.name for spec in specs[:10]) + (", ..." if len(specs) > 10 else "")
        raise ConfigurationError(f"dataset {item!r} holds {len(specs)} categories ({names}); give one, e.g. "
                                 f"{Path(specs[0].root) / (specs[0].category or '')}")
    return specs[0]


def training_folder(spec: DatasetSpec) -> Path:
    """The folder holding ``spec``'s good training images, absolute: ``CATEGORY/train/good`` of an
    MVTec category, the ``good=`` folder of a folder dataset. ``adcore train`` records it in the
    model file so that ``adcore export`` can add training images to its parity check."""
    folder = spec.folder / "train" / "good" if spec.kind == "mvtec" else Path(spec.train or "")
    return folder.resolve()


# -- opening -----------------------------------------------------------------------------------
def _held_out_positions(count: int, fraction: float) -> list[int]:
    """Evenly spaced positions of ``round(fraction * count)`` images (at least one), deterministic."""
    held = min(count - 1, max(1, int(round(fraction * count))))
    return sorted({int((i + 0.5) * count / held) for i in range(held)})


def _cap(dataset: Any, max_train: int | None) -> Any:
    if not max_train or len(dataset) <= max_train:
        return dataset
    from torch.utils.data import Subset

    step = len(dataset) / max_train
    return Subset(dataset, [int(i * step) for i in range(max_train)])


def open_dataset(spec: DatasetSpec, split: str, image_size: int | tuple[int, int] | None = 256) -> Any:
    """The ``"train"`` (good images) or ``"test"`` split of ``spec`` as a dataset of item dicts.

    Items are those of :mod:`adcore.data`. An MVTec category without a ``ground_truth`` folder and
    a folder spec without ``masks=`` give a test set whose ``masks_given`` is False, which
    :func:`adcore.evaluation.evaluate_detector` evaluates image-level. When the good test images
    are held out of ``good=`` (no ``test_good=``), the train split leaves them out.
    """
    from torch.utils.data import Subset

    from adcore.data import FolderDataset, MVTecDataset

    if split not in SPLITS:
        raise ConfigurationError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if spec.kind == "mvtec":
        if split == "train":
            return _cap(MVTecDataset(spec.root, spec.category, "train", image_size=image_size), spec.max_train)
        missing = "error" if (spec.folder / "ground_truth").is_dir() else "empty"
        return MVTecDataset(spec.root, spec.category, "test", image_size=image_size, missing_masks=missing)
    if spec.kind != "folder":
        raise ConfigurationError(f"dataset {spec.name!r}: unknown kind {spec.kind!r} (use 'mvtec' or 'folder')")
    if not spec.train:
        raise ConfigurationError(f"dataset {spec.name!r}: a folder dataset needs good=DIR (the defect-free images)")
    if split == "test" and not spec.has_test:
        raise DatasetLayoutError(f"dataset {spec.name!r} ({spec.train}) has good images only, nothing to test on; "
                                 "give defect images: folder:good=DIR,defect=DIR[,masks=DIR]")
    if not spec.holds_out_test_good:
        if split == "train":
            return _cap(FolderDataset(spec.train, image_size=image_size), spec.max_train)
        return FolderDataset(spec.good, spec.defects, spec.masks, image_size=image_size)
    combined = FolderDataset(spec.train, spec.defects, spec.masks, image_size=image_size)
    good_count = combined.labels.count(0)
    if good_count < 2:
        raise DatasetLayoutError(f"{spec.train} holds {good_count} good image(s): too few to hold a share out as good "
                                 "test images; add images or give test_good=DIR")
    held = _held_out_positions(good_count, spec.test_fraction)
    if split == "test":
        return Subset(combined, held + list(range(good_count, len(combined))))
    kept = sorted(set(range(good_count)) - set(held))
    return _cap(Subset(FolderDataset(spec.train, image_size=image_size), kept), spec.max_train)
