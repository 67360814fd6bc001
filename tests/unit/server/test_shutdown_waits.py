"""Shutdown.unless_stopping: waits that nothing would end in time end at begin(), and only those."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from skald.errors import ShuttingDown, SkaldError
from skald.relay.io import unless_gone
from skald.server.shutdown import Shutdown, final_event


async def test_begin_ends_a_wait_with_shutting_down_and_closes_the_connection() -> None:
    shutdown = Shutdown()
    never = trio.Event()
    failures: list[ShuttingDown] = []

    async def waiter() -> None:
        try:
            await shutdown.unless_stopping(never.wait)
        except ShuttingDown as error:
            failures.append(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        shutdown.begin()
    assert [(e.status, e.code, e.headers.get("Connection")) for e in failures] == [(503, "shutting_down", "close")]
    with pytest.raises(ShuttingDown):  # once stopping, a new wait is refused at once
        await shutdown.unless_stopping(never.wait)


async def test_a_wait_that_already_returned_keeps_its_result() -> None:
    shutdown = Shutdown()
    paired = trio.Event()
    results: list[str] = []

    async def pairing() -> str:
        await paired.wait()
        return "paired"

    async def waiter() -> None:
        results.append(await shutdown.unless_stopping(pairing))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        paired.set()  # the partner came first: the work goes on even though the stop follows at once
        shutdown.begin()
    assert results == ["paired"]


async def test_an_outer_cancellation_is_not_mistaken_for_the_stop() -> None:
    shutdown = Shutdown()
    with trio.move_on_after(0) as outer:
        await shutdown.unless_stopping(trio.sleep_forever)
    assert outer.cancelled_caught and not shutdown.stopping


async def test_an_error_inside_unless_gone_leaves_it_as_it_was_raised() -> None:
    # Outside hypercorn unless_gone watches the client with a task in a nursery; an error raised in
    # its block (the 503 of a wait the stop ended) must reach the error renderer as itself, not as a group.
    async def never_left() -> bool:
        await trio.sleep_forever()
        return False

    with pytest.raises(SkaldError) as raised:
        async with unless_gone(trio.Event(), never_left):
            raise ShuttingDown("stopping")
    assert type(raised.value) is ShuttingDown


def test_the_final_event_is_a_named_sse_event_without_an_id() -> None:
    assert final_event(resume_from=7) == (
        b'event: shutdown\ndata: {"code":"shutting_down","detail":"server is shutting down; reconnect to resume",'
        b'"resume_from":7}\n\n'
    )
