"""Helpers for relay tests: wait (bounded, woken by the relay's own changes) until sides wait on a channel."""

from __future__ import annotations

import trio

from skald.relay.channels import RelayHub, RequestChannels


def channel_key(db_id: str, namespace: str, path: str) -> str:
    return f"{db_id}\x00{namespace}\x00{path}"


async def wait_for_waiters(
    hub: RelayHub, key: str, *, consumers: int = 0, producers: int = 0, limit: float = 10
) -> None:
    """Until at least that many consumers/producers wait on ``key`` (fails after ``limit`` s)."""

    def ready() -> bool:
        waiting_consumers, waiting_producers = hub.waiting_on(key)
        return waiting_consumers >= consumers and waiting_producers >= producers

    with trio.fail_after(limit):
        await hub.wait_until(ready)


async def wait_until_nobody_waits(hub: RelayHub, key: str, limit: float = 10) -> None:
    with trio.fail_after(limit):
        await hub.wait_until(lambda: hub.waiting_on(key) == (0, 0))


async def wait_for_requests(
    channels: RequestChannels, key: str, *, requesters: int = 0, responders: int = 0, limit: float = 10
) -> None:
    """Until at least that many requesters/responders wait on ``key`` (fails after ``limit`` s)."""

    def ready() -> bool:
        waiting_requesters, waiting_responders = channels.waiting_on(key)
        return waiting_requesters >= requesters and waiting_responders >= responders

    with trio.fail_after(limit):
        await channels.wait_until(ready)
