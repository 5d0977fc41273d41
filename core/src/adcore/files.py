"""The one atomic file writer: every file adcore writes goes through :func:`atomic_write_bytes`.

A write goes to a temporary file in the target's folder, is flushed and ``fsync``-ed, then renamed
over the target, so a crash, a full disk, ``SIGTERM`` or Ctrl-C mid-write leaves the previous file
intact. The temporary file is removed on every failure; one left by a killed process (which no
``finally`` can clean) is removed by the next write to the same target.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from adcore.errors import OutputPathError

__all__ = ["atomic_write_bytes", "atomic_write_text"]


def _file_mode() -> int:
    """Permissions of a newly created file under the current umask (mkstemp would give 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


def atomic_write_bytes(path: str | Path, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` via a temporary file, ``fsync`` and ``os.replace``; returns ``path``.

    Raises :class:`~adcore.errors.OutputPathError` naming the path when it is a folder, its parent
    cannot be created, permission is denied or the disk is full; ``path`` is untouched then.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"cannot write {path}: it is a folder; give a file name such as {path / 'model.safetensors'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OutputPathError(f"cannot write {path}: a part of its folder path is a file ({exc.filename})") from exc
    except PermissionError as exc:
        raise OutputPathError(f"cannot create the folder {path.parent}: permission denied") from exc
    _remove_stale_temporaries(path)
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except PermissionError as exc:
        raise OutputPathError(f"cannot write {path}: permission denied in {path.parent}") from exc
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, _FILE_MODE)
        os.replace(temporary, path)
    except BaseException as exc:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise OutputPathError(f"cannot write {path}: the disk is full ({len(payload)} bytes needed); "
                                  f"the previous file, if any, is unchanged") from exc
        if isinstance(exc, PermissionError):
            raise OutputPathError(f"cannot write {path}: permission denied") from exc
        raise
    _fsync_folder(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _remove_stale_temporaries(path: Path) -> None:
    """Remove ``.NAME.*.tmp`` files a killed earlier write to ``path`` left behind (not while in use:
    only files whose writer's process is gone would be safe, so only files older than a minute go)."""
    import time

    cutoff = time.time() - 60.0
    try:
        candidates = list(path.parent.glob(f".{path.name}.*.tmp"))
    except OSError:
        return
    for candidate in candidates:
        try:
            if candidate.stat().st_mtime < cutoff:
                candidate.unlink()
        except OSError:
            continue


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every OS/filesystem allows it)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
