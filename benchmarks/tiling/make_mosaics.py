"""High-resolution inspection images from the PIPED sheets: 8×8 mosaics of 128-px sheets (1,024 px).

Writes an MVTec-layout category: ``train/good`` mosaics of good training sheets only;
``test/good`` mosaics of good test sheets; ``test/impurity`` mosaics in which exactly one sheet is a
defective test sheet, with ``ground_truth/impurity/*_mask.png`` carrying that sheet's mask at its
place in the mosaic (every other pixel 0). Sheets are drawn with a fixed seed, with flips and
quarter turns so that neighbouring mosaics do not repeat the same layout. The mosaics are written
under the output folder (default ``runs/tiling/mosaics``), never into the repository.

    python benchmarks/tiling/make_mosaics.py --piped ../shared/data/piped --paper PA_FLR01_TL
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_mosaics", "main"]

GRID = 8


def _load(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(path).convert("RGB")) for path in sorted(folder.glob("*.png"))]


def _augment(sheet: np.ndarray, rng: np.random.Generator, mask: np.ndarray | None = None):
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = np.rot90(sheet, turns)
    out = out[:, ::-1] if flip else out
    if mask is None:
        return out
    mask = np.rot90(mask, turns)
    return out, (mask[:, ::-1] if flip else mask)


def _mosaic(sheets: list[np.ndarray], rng: np.random.Generator, defect: tuple[np.ndarray, np.ndarray] | None):
    side = sheets[0].shape[0]
    canvas = np.zeros((GRID * side, GRID * side, 3), dtype=np.uint8)
    mask = np.zeros((GRID * side, GRID * side), dtype=np.uint8)
    defect_cell = int(rng.integers(GRID * GRID)) if defect is not None else -1
    for cell in range(GRID * GRID):
        row, col = divmod(cell, GRID)
        box = (slice(row * side, (row + 1) * side), slice(col * side, (col + 1) * side))
        if cell == defect_cell:
            image, sheet_mask = _augment(defect[0], rng, defect[1])
            canvas[box], mask[box] = image, sheet_mask
        else:
            canvas[box] = _augment(sheets[int(rng.integers(len(sheets)))], rng)
    return canvas, mask


def make_mosaics(piped: Path, paper: str, out: Path, *, train: int = 16, test_good: int = 12, test_defect: int = 24,
                 seed: int = 0) -> Path:
    """Write the mosaic category ``out/<paper>_mosaic``; returns its folder."""
    rng = np.random.default_rng(seed)
    source = piped / paper
    train_sheets = _load(source / "train" / "good")
    test_sheets = _load(source / "test" / "good")
    defect_paths = sorted((source / "test" / "impurity").glob("*.png"))
    category = out / f"{paper}_mosaic"
    for folder in ("train/good", "test/good", "test/impurity", "ground_truth/impurity"):
        (category / folder).mkdir(parents=True, exist_ok=True)
    for index in range(train):
        image, _ = _mosaic(train_sheets, rng, None)
        Image.fromarray(image).save(category / "train" / "good" / f"{index:03d}.png")
    for index in range(test_good):
        image, _ = _mosaic(test_sheets, rng, None)
        Image.fromarray(image).save(category / "test" / "good" / f"{index:03d}.png")
    for index in range(test_defect):
        path = defect_paths[index % len(defect_paths)]
        sheet = np.asarray(Image.open(path).convert("RGB"))
        sheet_mask = np.asarray(Image.open(source / "ground_truth" / "impurity" / f"{path.stem}_mask.png").convert("L"))
        image, mask = _mosaic(test_sheets, rng, (sheet, sheet_mask))
        Image.fromarray(image).save(category / "test" / "impurity" / f"{index:03d}.png")
        Image.fromarray(mask).save(category / "ground_truth" / "impurity" / f"{index:03d}_mask.png")
    return category


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--piped", type=Path, default=Path("../shared/data/piped"))
    parser.add_argument("--paper", default="PA_FLR01_TL")
    parser.add_argument("--out", type=Path, default=Path("runs/tiling/mosaics"))
    parser.add_argument("--train", type=int, default=16)
    parser.add_argument("--test-good", type=int, default=12)
    parser.add_argument("--test-defect", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    category = make_mosaics(args.piped, args.paper, args.out, train=args.train, test_good=args.test_good,
                            test_defect=args.test_defect, seed=args.seed)
    print(category)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
