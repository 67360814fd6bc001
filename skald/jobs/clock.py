"""The jobs clock: Unix milliseconds, and a way to wait until a given time.

``run_at``, backoff and lease expiry are all read from one injectable clock, so
tests move time by hand (:class:`ManualJobClock`) instead of sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol

import trio


class JobClock(Protocol):
    def now_ms(self) -> int:
        """Current time in Unix milliseconds."""
        ...

    async def sleep_until(self, ms: int) -> None:
        """Return once :meth:`now_ms` has reached ``ms`` (cancel it to stop waiting)."""
        ...


class SystemJobClock:
    """Wall-clock time; waits are trio sleeps (so ``autojump_clock`` drives them in tests)."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    async def sleep_until(self, ms: int) -> None:
        await trio.sleep(max(0, ms - self.now_ms()) / 1000)
        # time.time() can lag trio's clock by a little: never report "due" before it is
        await trio.sleep(max(0, ms - self.now_ms()) / 1000)


class ManualJobClock:
    """A clock tests move with :meth:`advance`; waiters wake when it passes their time."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.ms = start_ms
        self._moved = trio.Event()

    def now_ms(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)
        self._moved.set()
        self._moved = trio.Event()

    async def sleep_until(self, ms: int) -> None:
        while self.ms < ms:
            await self._moved.wait()
