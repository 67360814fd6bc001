"""``SKALD_TRACEMALLOC=1``: a SIGUSR1 writes where memory grew since the previous one, naming the line."""

from __future__ import annotations

import os
import signal
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from skald.config import load_settings
from skald.server import tracemalloc_dumps


@pytest.fixture
def tracing() -> Iterator[None]:
    tracemalloc_dumps.start()
    yield
    tracemalloc.stop()  # tracing slows every allocation: not for the rest of the suite


def test_the_setting_comes_from_the_environment() -> None:
    assert load_settings(env={"SKALD_TRACEMALLOC": "1"}).tracemalloc is True
    assert load_settings(env={}).tracemalloc is False


async def test_sigusr1_writes_the_growth_since_the_previous_dump(tracing: None, tmp_path: Path) -> None:
    dumps: list[Path] = []
    each = trio.Event()

    def written(path: Path) -> None:
        nonlocal each
        dumps.append(path)
        each.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: tracemalloc_dumps.serve_tracemalloc_dumps(
            tmp_path, written=written, task_status=task_status))
        held = [bytes(1000) + bytes([n % 256]) for n in range(5000)]  # ~5 MB grows here
        os.kill(os.getpid(), signal.SIGUSR1)
        await each.wait()
        each = trio.Event()
        os.kill(os.getpid(), signal.SIGUSR1)  # nothing new held since: this line is no top growth
        await each.wait()
        nursery.cancel_scope.cancel()
    del held
    first, second = (path.read_text() for path in dumps)
    top = first.splitlines()[1]
    assert "test_tracemalloc_dumps.py" in top and "+" in top.split("KiB")[0]
    assert float(top.split("KiB")[0]) > 4000  # KiB: the 5,000 blocks held
    assert first.endswith("# end\n") and second.endswith("# end\n")
    assert "test_tracemalloc_dumps.py" not in second.splitlines()[1]
    assert [p.name for p in dumps] == [f"tracemalloc-{os.getpid()}-1.txt", f"tracemalloc-{os.getpid()}-2.txt"]
