"""Native memory: fewer malloc arenas, and what SQLite and the threads freed given back to the system.

Under a steady mixed load ``bench/soak.py`` saw RSS climb ~10 MB a minute while tracemalloc counted
~3 MB of live Python objects: the growth was native. Each document's actor runs SQLite on its own
threads, and glibc gives threads their own malloc arenas (up to 8 per core); pages SQLite frees there
(page caches of closed connections, statement memory) stay in the arena, fragmented, and count in RSS
long after every document closed. Two settings, both glibc only (elsewhere they do nothing):

- ``malloc_arena_max`` (default 2): ``mallopt(M_ARENA_MAX)`` at start, before any actor thread exists,
  so threads share two arenas instead of sixteen (what ``MALLOC_ARENA_MAX`` does; an explicit
  ``MALLOC_ARENA_MAX`` in the environment wins). 0 leaves glibc's default.
- ``malloc_trim_seconds`` (default 30): every so often ``malloc_trim(0)`` on a worker thread hands the
  free pages of every arena back (``madvise``); it takes a few milliseconds and never runs on the
  event loop. 0 turns it off.

Figures: docs/performance.md#memory.
"""

from __future__ import annotations

import ctypes
import os

import structlog
import trio

log = structlog.get_logger("skald.server.native_memory")

_M_ARENA_MAX = -8  # glibc's malloc.h


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _glibc()


def limit_arenas(count: int) -> bool:
    """Cap glibc's malloc arenas at ``count`` (0: leave the default); whether a cap was set."""
    if _LIBC is None or count <= 0 or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    return bool(_LIBC.mallopt(_M_ARENA_MAX, count))


def trim() -> bool:
    """Give free malloc pages back to the system; whether any were (``False`` without glibc)."""
    return _LIBC is not None and bool(_LIBC.malloc_trim(0))


async def serve_memory_trims(
    every: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Call :func:`trim` on a worker thread every ``every`` seconds until cancelled."""
    task_status.started()
    if _LIBC is None:
        log.info("no glibc: native memory is not trimmed")
        return
    while True:
        await trio.sleep(every)
        await trio.to_thread.run_sync(trim)
