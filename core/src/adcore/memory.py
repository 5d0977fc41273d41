"""How much memory this machine has left, and a refusal that says what a step would cost.

Detectors whose state grows with a parameter (PaDiM's covariances: positions × d² × 4 bytes) and
the image decoder ask here before allocating, so a value whose memory would not fit is refused
with the estimate instead of ending in an allocator error or the kernel's OOM killer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from adcore.errors import InvalidInputError

__all__ = ["available_memory_bytes", "total_memory_bytes", "check_memory", "format_bytes", "release_free_memory"]


def _meminfo(field: str) -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _sysconf(pages: str) -> int | None:
    try:
        return int(os.sysconf(pages)) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def available_memory_bytes() -> int | None:
    """Memory the process could still allocate without swapping (``MemAvailable``), or ``None`` if unknown."""
    return _meminfo("MemAvailable") or _sysconf("SC_AVPHYS_PAGES")


def total_memory_bytes() -> int | None:
    """Physical memory of the machine, or ``None`` if unknown."""
    return _meminfo("MemTotal") or _sysconf("SC_PHYS_PAGES")


def format_bytes(count: float) -> str:
    """``1536`` → ``"1.5 KB"``; decimal units, as people read them."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


def check_memory(needed: int, what: str, advice: str) -> None:
    """Raise :class:`InvalidInputError` when ``needed`` bytes exceed the memory available now.

    ``what`` names the allocation with its formula (``"padim: the covariances (4096 positions ×
    100² features × 4 bytes)"``), ``advice`` the parameter to change. Nothing is refused when the
    available memory cannot be read.
    """
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise InvalidInputError(f"{what} need about {format_bytes(needed)}, more than the {format_bytes(available)} "
                                f"of memory available; {advice}")


def release_free_memory() -> bool:
    """Return the C heap's free pages to the operating system (glibc ``malloc_trim``); ``True`` if done.

    torch frees CPU tensors with ``free``; glibc keeps freed blocks below its (dynamically raised,
    up to 32 MB) mmap threshold in its heap, so after a fit that allocated and freed many
    activation-sized tensors the process stays hundreds of MB larger than what it holds, and every
    later peak (predict, evaluation) sits on top of that. A no-op where the C library has no
    ``malloc_trim`` (macOS, Windows, musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(trim(0))
