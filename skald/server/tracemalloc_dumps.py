"""A debug-only way to see where memory grows: ``SKALD_TRACEMALLOC=1`` and ``SIGUSR1``.

With the ``tracemalloc`` setting on, ``skald serve`` starts :mod:`tracemalloc` before it builds the app
and, on each ``SIGUSR1``, writes ``tracemalloc-<pid>-<n>.txt`` into the data folder: the allocations
that grew most since the previous signal (the first compares with the moment serving began), by line
and by call stack. Off by default: tracing every allocation costs CPU and memory (roughly 2x on a
busy server), so it is for finding a leak, never for production (see docs/operations.md).
"""

from __future__ import annotations

import linecache
import os
import signal
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import structlog
import trio

log = structlog.get_logger("skald.server.tracemalloc")

FRAMES = 8  # call-stack depth kept per allocation: enough to see which skald caller an allocation is for
TOP_LINES = 25
TOP_STACKS = 8
_IGNORED = (tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, linecache.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"), tracemalloc.Filter(False, "<unknown>"))


def start() -> None:
    """Start tracing (idempotent); call before the allocations worth seeing are made."""
    if not tracemalloc.is_tracing():
        tracemalloc.start(FRAMES)


def snapshot() -> tracemalloc.Snapshot:
    return tracemalloc.take_snapshot().filter_traces(_IGNORED)


def render_diff(current: tracemalloc.Snapshot, previous: tracemalloc.Snapshot) -> str:
    """The top growth from ``previous`` to ``current``, by line and by stack; ends with ``# end``."""
    traced, peak = tracemalloc.get_traced_memory()
    out = [f"# traced now {traced / 1e6:.1f} MB (peak {peak / 1e6:.1f} MB); growth since the previous dump:"]
    for stat in current.compare_to(previous, "lineno")[:TOP_LINES]:
        out.append(f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks  {stat.traceback[0]}")
    out.append("# the largest growth by call stack (innermost last):")
    for stat in current.compare_to(previous, "traceback")[:TOP_STACKS]:
        out.append(f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks")
        out.extend(f"      {frame}" for frame in stat.traceback)
    out.append("# end")
    return "\n".join(out) + "\n"


def write_dump(folder: Path, number: int, text: str) -> Path:
    """Write ``text`` as dump ``number`` whole (a reader never sees half a file)."""
    path = folder / f"tracemalloc-{os.getpid()}-{number}.txt"
    partial = path.with_suffix(".part")
    partial.write_text(text)
    partial.replace(path)
    return path


async def serve_tracemalloc_dumps(
    folder: Path,
    *,
    written: Callable[[Path], None] = lambda path: None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Write a dump into ``folder`` on each ``SIGUSR1`` until cancelled; needs :func:`start` called first.

    ``written(path)`` is called after each dump (tests wait on it). Reports readiness once the signal
    is caught and the first snapshot taken: a signal from then on is a dump, never the default action.
    """
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        previous = await trio.to_thread.run_sync(snapshot)
        task_status.started()
        number = 0
        async for _ in signals:
            number += 1
            # Snapshotting walks every traced block: off the event loop (it holds the GIL all the same).
            current = await trio.to_thread.run_sync(snapshot)
            text = await trio.to_thread.run_sync(render_diff, current, previous)
            path = await trio.to_thread.run_sync(write_dump, folder, number, text)
            previous = current
            log.warning("tracemalloc dump written", path=str(path))
            written(path)
