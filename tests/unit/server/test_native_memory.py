"""Native memory freed on a thread goes back to the system once trimmed (glibc)."""

from __future__ import annotations

import ctypes
import re
import threading
from pathlib import Path

import pytest

from skald.server import native_memory

glibc = pytest.mark.skipif(native_memory._LIBC is None, reason="malloc_trim is glibc's")


def _rss_mb() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text())[1]) / 1024  # type: ignore[index]


def _fragment_a_thread_arena(blocks: int) -> None:
    """What a closed document leaves: many small blocks freed on its thread, one kept at the end."""
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    held = [libc.malloc(4096) for _ in range(blocks)]
    for pointer in held[:-1]:
        ctypes.memset(pointer, 1, 4096)  # touched: resident, as a page cache is
    for pointer in held[:-1]:
        libc.free(pointer)
    _kept.append(held[-1])  # the arena's top stays in use: glibc cannot shrink it on its own


_kept: list[int] = []


@glibc
def test_pages_freed_on_a_thread_are_given_back_by_a_trim() -> None:
    worker = threading.Thread(target=_fragment_a_thread_arena, args=(20_000,))  # ~80 MB
    worker.start()
    worker.join()
    before = _rss_mb()
    assert native_memory.trim()
    after = _rss_mb()
    assert before - after > 40  # MB of the ~80 MB freed: resident until trimmed, given back by it


@glibc
def test_an_explicit_environment_setting_wins_over_the_arena_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert native_memory.limit_arenas(2) is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert native_memory.limit_arenas(0) is False  # 0: glibc's default kept
