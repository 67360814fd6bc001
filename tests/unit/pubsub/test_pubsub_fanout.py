from __future__ import annotations

import pytest
import trio
import trio.testing

from skald.errors import PayloadTooLarge, ValidationFailed
from skald.pubsub import service as pubsub_module
from skald.pubsub.service import Message, Subscriber, parse_publish
from skald.pubsub.topics import TopicFilter


def _msg(i: int, topic: str = "a/b", size: int = 1) -> Message:
    return Message(i, topic, "text", b"x" * size, None, "2026-01-01T00:00:00.000Z")


def test_subscriber_filters_and_prefixes() -> None:
    sub = Subscriber([TopicFilter.parse("a/+")], ["a/"], 10)
    assert sub.wants(_msg(1, "a/b"))
    assert not sub.wants(_msg(2, "a/b/c"))
    open_sub = Subscriber([], ["x/"], 10)
    assert open_sub.wants(_msg(3, "x/y")) and not open_sub.wants(_msg(4, "a/b"))


def test_overflow_by_count_drops_the_buffer_and_remembers_the_gap() -> None:
    sub = Subscriber([], None, 3)
    assert all(sub.offer(_msg(i)) for i in (5, 6, 7))
    assert not sub.offer(_msg(8))
    assert sub.overflowed and sub.closed
    assert sub.first_lost_id == 5  # the buffered messages were freed too
    assert sub.buffered_bytes == 0
    assert sub.take_nowait() == []


def test_overflow_by_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pubsub_module, "SUBSCRIBER_BUFFER_BYTES", 100)
    sub = Subscriber([], None, 1000)
    assert sub.offer(_msg(1, size=60))
    assert [m.id for m in sub.take_nowait()] == [1]
    assert sub.offer(_msg(2, size=60))
    assert not sub.offer(_msg(3, size=60))  # 120 bytes would be buffered
    assert sub.first_lost_id == 2


def test_a_single_message_larger_than_the_byte_budget_still_fits_an_empty_buffer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pubsub_module, "SUBSCRIBER_BUFFER_BYTES", 10)
    sub = Subscriber([], None, 1000)
    assert sub.offer(_msg(1, size=50))


def test_message_json_keeps_the_payload_form() -> None:
    assert Message(1, "t", "json", b'{"a":1}', None, "c").to_json()["payload"] == {"a": 1}
    assert Message(1, "t", "text", "é".encode(), "text/plain", "c").to_json()["payload_text"] == "é"
    assert Message(1, "t", "base64", b"\xff", None, "c").to_json()["payload_base64"] == "/w=="
    frame = Message(7, "t", "json", b"1", None, "c").sse()
    assert frame.startswith(b"event: message\nid: 7\ndata: {") and frame.endswith(b"\n\n")


def test_parse_publish_limits() -> None:
    topic, form, payload, _, _ = parse_publish({"topic": "a", "payload_base64": "AAE="}, 2)
    assert (topic, form, payload) == ("a", "base64", b"\0\1")
    with pytest.raises(PayloadTooLarge):
        parse_publish({"topic": "a", "payload_text": "abc"}, 2)
    with pytest.raises(ValidationFailed):
        parse_publish({"topic": "a", "payload_text": 5}, 100)
    with pytest.raises(ValidationFailed):
        parse_publish({"topic": "a", "payload": 1, "dedupe_key": ""}, 100)


async def test_take_waits_for_a_message_and_takes_all_that_is_buffered() -> None:
    sub = Subscriber([], None, 10)
    taken: list[list[int]] = []

    async def reader() -> None:
        while batch := await sub.take():
            taken.append([m.id for m in batch])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        for i in (1, 2, 3):
            assert sub.offer(_msg(i))
        await trio.testing.wait_all_tasks_blocked()
        assert sub.offer(_msg(4))
        await trio.testing.wait_all_tasks_blocked()
        sub.close()  # ends the reader: take() answers [] once closed and empty
    assert taken == [[1, 2, 3], [4]]
    assert sub.buffered == 0 and sub.buffered_bytes == 0


async def test_a_cancelled_take_leaves_the_buffer_and_a_later_take_gets_it() -> None:
    sub = Subscriber([], None, 10)
    with trio.move_on_after(0):
        await sub.take()
    assert sub.offer(_msg(1)) and sub.offer(_msg(2))
    assert [m.id for m in await sub.take(limit=1)] == [1]
    assert sub.buffered == 1 and sub.buffered_bytes == 1
    assert [m.id for m in await sub.take()] == [2]
