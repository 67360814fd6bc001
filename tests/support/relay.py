"""Helpers for relay tests: wait (bounded) until a side is waiting on a channel."""

from __future__ import annotations

import trio

from skald.relay import RelayHub


def channel_key(db_id: str, namespace: str, path: str) -> str:
    return f"{db_id}\x00{namespace}\x00{path}"


async def wait_for_waiters(
    hub: RelayHub, key: str, *, consumers: int = 0, producers: int = 0, limit: float = 10
) -> None:
    """Poll the hub until at least that many consumers/producers wait on ``key`` (fails after ``limit`` s)."""
    with trio.fail_after(limit):
        while True:
            waiting_consumers, waiting_producers = hub.waiting_on(key)
            if waiting_consumers >= consumers and waiting_producers >= producers:
                return
            await trio.sleep(0.005)
