"""How much memory this machine has left, and a refusal that says what a step would cost.

Detectors whose state grows with a parameter (PaDiM's covariances: positions × d² × 4 bytes) and
the image decoder ask here before allocating, so a value whose memory would not fit is refused
with the estimate instead of ending in an allocator error or the kernel's OOM killer.
"""

from __future__ import annotations

import os

from adcore.errors import InvalidInputError

__all__ = ["available_memory_bytes", "total_memory_bytes", "check_memory", "format_bytes"]


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
