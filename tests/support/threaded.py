"""A real skald in a background thread, for synchronous tests (Hypothesis properties).

pytest-trio runs every Hypothesis example in its own ``trio.run``, so an async
``server`` fixture would start a server per example. ``serve_in_thread`` starts
one server (the same :func:`support.live.start_live_server`) in its own
``trio.run`` on a thread; the examples talk to it with a blocking
``httpx.Client`` and it stops, with everything it opened, when the block ends.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import trio

from skald.config import Settings
from support.live import LiveServer, start_live_server

T = TypeVar("T")


class ThreadedServer:
    def __init__(self, live: LiveServer, token: trio.lowlevel.TrioToken) -> None:
        self.live = live
        self.url = live.url
        self._token = token

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` in the server's trio thread and return its result."""
        return trio.from_thread.run(fn, *args, trio_token=self._token)


@contextlib.contextmanager
def serve_in_thread(settings: Settings) -> Iterator[ThreadedServer]:
    started: queue.Queue[ThreadedServer | BaseException] = queue.Queue()
    failure: list[BaseException] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            live = await start_live_server(nursery, settings)
            started.put(ThreadedServer(live, trio.lowlevel.current_trio_token()))
            await live._done.wait()  # until stop() below asks hypercorn to shut down

    def thread_main() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the test thread, never swallowed
            failure.append(exc)
            started.put(exc)

    thread = threading.Thread(target=thread_main, name="skald-test-server", daemon=True)
    thread.start()
    server = started.get(timeout=60)
    if isinstance(server, BaseException):
        thread.join()
        raise server
    try:
        yield server
    finally:
        with contextlib.suppress(trio.RunFinishedError):
            server.run(server.live.stop)
        thread.join(timeout=60)
        if failure:
            raise failure[0]
