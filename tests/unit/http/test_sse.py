"""The one SSE encoder (skald/http/sse.py): what it writes is what a real SSE parser reads back."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import given
from hypothesis import strategies as st

from skald.http.sse import encode_event, json_event, sse_response, wait_first


def _decode(frame: bytes) -> list[tuple[str, str, str]]:
    """(event, id, data) of every event httpx_sse parses out of ``frame``."""
    lines, decoder = SSELineDecoder(), SSEDecoder()
    events = []
    for line in [*lines.decode(frame.decode("utf-8")), *lines.flush()]:
        sse = decoder.decode(line)
        if sse is not None:
            events.append((sse.event, sse.id, sse.data))
    return events


_field = st.text(st.characters(exclude_characters="\r\n", codec="utf-8"))
_ids = st.none() | st.integers(min_value=0) | _field.filter(lambda s: "\0" not in s)


@given(event=_field.filter(bool), event_id=_ids, data=st.text())
def test_any_frame_reads_back_as_one_event_with_its_fields(event: str, event_id: str | int | None, data: str) -> None:
    expected_data = data.replace("\r\n", "\n").replace("\r", "\n")  # how the spec reads line breaks
    expected_id = "" if event_id is None else str(event_id)
    assert _decode(encode_event(event, data, event_id)) == [(event, expected_id, expected_data)]
    assert _decode(encode_event(event, data.encode("utf-8"), event_id)) == [(event, expected_id, expected_data)]


def test_id_zero_is_written_and_none_writes_no_id_line() -> None:
    assert encode_event("change", "{}", 0) == b"event: change\nid: 0\ndata: {}\n\n"
    assert encode_event("heartbeat", "{}") == b"event: heartbeat\ndata: {}\n\n"


@pytest.mark.parametrize(
    ("event", "event_id"), [("a\nb", None), ("a\rb", None), ("", None), ("ok", "1\n2"), ("ok", "1\r"), ("ok", "a\0")]
)
def test_a_field_that_would_corrupt_the_stream_is_refused(event: str, event_id: str | None) -> None:
    with pytest.raises(ValueError):
        encode_event(event, "{}", event_id)


_json: Any = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(value=_json)
def test_json_events_read_back_as_the_same_value(value: Any) -> None:
    [(_, _, data)] = _decode(json_event("message", value, 7))
    assert json.loads(data) == value


def test_a_lone_surrogate_does_not_break_the_frame() -> None:
    # json.loads('"\\ud800"') is valid JSON and yields a lone surrogate, which UTF-8 cannot encode.
    [(_, _, data)] = _decode(json_event("error", {"detail": "\ud800"}))
    assert json.loads(data) == {"detail": "\ud800"}


def test_the_response_streams_uncached_unbuffered_and_without_a_timeout() -> None:
    async def frames() -> Any:
        yield b""

    response = sse_response(frames())
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.timeout is None


@pytest.mark.parametrize("which", [0, 1, 2])
async def test_wait_first_returns_when_any_one_is_set_and_leaves_no_waiter(which: int) -> None:
    events = [trio.Event(), None, trio.Event(), trio.Event()]
    chosen = [e for e in events if e is not None][which]
    woken = trio.Event()
    async with trio.open_nursery() as nursery:

        async def waiter() -> None:
            await wait_first(*events)
            woken.set()

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not woken.is_set()
        chosen.set()
    assert woken.is_set()  # the nursery could close: no task was left waiting on the other events


async def test_wait_first_with_one_already_set_returns_at_once(autojump_clock: trio.testing.MockClock) -> None:
    done = trio.Event()
    done.set()
    start = trio.current_time()
    with trio.fail_after(1):  # blocking would let the clock jump here and raise
        await wait_first(trio.Event(), done)
    assert trio.current_time() == start


async def test_wait_first_with_no_event_waits_until_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    with trio.move_on_after(30) as scope:
        await wait_first(None, None)
    assert scope.cancelled_caught
