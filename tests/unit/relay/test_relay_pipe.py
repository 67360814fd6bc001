"""The relay's body pipe: bounded by bytes, drained whole, and failing the producer once the consumer left."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from skald.relay.channels import JOIN_BELOW, BodyPipe


async def test_producer_waits_once_the_limit_is_passed_and_the_consumer_takes_everything_at_once() -> None:
    pipe = BodyPipe(limit=10)
    sent: list[int] = []

    async def produce() -> None:
        for i in range(4):
            await pipe.put(b"x" * 4)
            sent.append(i)
        pipe.end()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        await trio.testing.wait_all_tasks_blocked()
        assert sent == [0, 1]  # 12 bytes waiting > 10: the third put is parked
        assert await pipe.take() == b"x" * 12  # three chunks leave as one piece
        await trio.testing.wait_all_tasks_blocked()
        assert sent == [0, 1, 2, 3]
        assert await pipe.take() == b"x" * 4
        assert await pipe.take() is None


async def test_consumer_leaving_fails_the_producer_and_frees_what_waits() -> None:
    pipe = BodyPipe(limit=4)
    failures: list[BaseException] = []

    async def produce() -> None:
        try:
            while True:
                await pipe.put(b"y" * 8)
        except trio.BrokenResourceError as error:
            failures.append(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        await trio.testing.wait_all_tasks_blocked()
        pipe.abandon()
    assert len(failures) == 1


async def test_take_waits_for_the_first_chunk() -> None:
    pipe = BodyPipe()
    got: list[bytes | None] = []

    async def consume() -> None:
        got.append(await pipe.take())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        await pipe.put(b"first")
    assert got == [b"first"]


async def test_put_after_abandon_raises_at_once() -> None:
    pipe = BodyPipe()
    pipe.abandon()
    with pytest.raises(trio.BrokenResourceError):
        await pipe.put(b"late")


async def test_large_chunks_leave_one_at_a_time_as_they_came_and_small_ones_between_them_join() -> None:
    pipe = BodyPipe(limit=10 * JOIN_BELOW)
    big, small = b"b" * JOIN_BELOW, b"s" * 10
    for chunk in (big, small, small, big):
        await pipe.put(chunk)
    pipe.end()
    assert await pipe.take() is big  # not copied
    assert await pipe.take() == small * 2
    assert await pipe.take() is big
    assert pipe.drained
    assert await pipe.take() is None
