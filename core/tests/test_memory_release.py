"""adcore.memory.release_free_memory hands freed heap pages back (glibc) and is harmless elsewhere."""

from __future__ import annotations

import sys

import pytest

from adcore.memory import release_free_memory


def _rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_freed_small_blocks_are_returned_to_the_system() -> None:
    import ctypes

    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    blocks = [libc.malloc(64 * 1024) for _ in range(3000)]  # 192 MB in blocks below the mmap threshold
    for block in blocks:
        libc.memset(block, 1, 64 * 1024)
    keep = blocks[-1]  # one live block at the top: plain free() cannot shrink the heap past it
    for block in blocks[:-1]:
        libc.free(block)
    before = _rss_kb()
    assert release_free_memory() in (True, False)
    after = _rss_kb()
    libc.free(keep)
    assert before - after > 100_000  # most of the 192 MB went back


def test_it_is_safe_to_call_repeatedly() -> None:
    for _ in range(3):
        release_free_memory()
