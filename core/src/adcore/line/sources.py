"""What to score: image files and folders given on the command line, each with a unique name.

Every input is named by its path relative to the *base*: the common folder of what was given (a
folder given counts as itself, a file as the folder holding it). So ``line/`` holding
``cam1/img001.png`` and ``cam2/img001.png``, or ``line/cam1 line/cam2`` given together, name them
``cam1/img001.png`` and ``cam2/img001.png``; ``a.png`` beside ``a.jpg`` stay two names. Outputs
are named after these names, never after a bare stem, so two inputs can never share a heatmap.

Folders are walked recursively in sorted order (hidden entries skipped, symbolic links to folders
not followed); the output folder is never scanned. A file given explicitly is scored whatever its
extension (a bad one is reported, not skipped silently).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["InputImage", "collect_inputs"]


@dataclass(frozen=True)
class InputImage:
    """``path``: the input as the user gave it (joined with what the folder walk found); ``name``:
    its path relative to the base, with ``/`` separators (see the module docstring)."""

    path: str
    name: str


def _walk(folder: Path, exclude: Path | None) -> Iterator[Path]:
    from adcore.data import IMAGE_EXTENSIONS

    for root, dirs, files in os.walk(folder, followlinks=False):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (exclude is None or (here / d).resolve() != exclude))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield here / name


def collect_inputs(items: Iterable[str], *, exclude: Path | None = None) -> list[InputImage]:
    """The images to score, in order, each once (a file reached twice keeps its first place)."""
    from adcore.errors import InvalidInputError

    items = list(items)
    found: list[tuple[str, Path]] = []
    anchors = []
    excluded = exclude.resolve() if exclude is not None else None
    for raw in items:
        path = Path(raw)
        if path.is_dir():
            anchors.append(path.resolve())
            found.extend((str(p), p.parent.resolve() / p.name) for p in _walk(path, excluded))
        elif path.exists() or path.is_symlink():
            anchors.append(path.parent.resolve())
            found.append((raw, path.parent.resolve() / path.name))
        else:
            raise InvalidInputError(f"{raw} does not exist; give image files or folders holding them")
    if not found:
        raise InvalidInputError(f"no images found in {', '.join(items)}; give image files or folders holding them "
                                f"(extensions looked for in folders: .png .jpg .jpeg .bmp .tif .tiff .webp)")
    base = Path(os.path.commonpath([str(a) for a in anchors]))
    images, seen = [], set()
    for given, absolute in found:
        try:
            name = absolute.relative_to(base).as_posix()
        except ValueError:  # cannot happen for a common path; kept total for odd file systems
            name = absolute.as_posix().lstrip("/")
        if name in seen:
            continue
        seen.add(name)
        images.append(InputImage(given, name))
    return images
