"""Server-sent events: the one frame encoder, response and wake-up every stream uses.

Pub/sub subscriptions, query watches, the sync change stream and the shutdown
event all speak through :func:`encode_event`, so they agree on the frame
(``event:``, then ``id:`` when there is one, then one ``data:`` line per line of
data) and on what an id of ``0`` means (it is written: only ``None`` leaves the
``id:`` line out, keeping the client's ``Last-Event-ID`` at the last event sent).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable
from typing import Any

import trio
from quart import Response

_SEPARATORS = (",", ":")


def _field_value(name: str, value: str) -> str:
    # A line break would end the field (and possibly the frame) early; NUL makes a client drop an id.
    if "\n" in value or "\r" in value or (name == "id" and "\0" in value):
        raise ValueError(f"an SSE {name} cannot contain a line break{' or NUL' if name == 'id' else ''}: {value!r}")
    return value


def encode_event(event: str, data: str | bytes, event_id: str | int | None = None) -> bytes:
    """One SSE frame: ``event: <event>``, ``id: <event_id>`` unless it is None, ``data:`` lines, a blank line.

    ``data`` is text, or UTF-8 bytes already encoded (a pub/sub message or a watch result is
    encoded once however many clients receive it). Each of its lines becomes its own ``data:``
    line, so a client reassembles it with ``\\n`` between lines (``\\r\\n`` and ``\\r`` arrive as
    ``\\n``, as the SSE spec reads them). Raises :class:`ValueError` for an empty event name or an
    event name or id containing a line break (an id also NUL): such a frame would corrupt the stream.
    """
    if not event:
        raise ValueError("an SSE event needs a name")
    head = "event: " + _field_value("event", event) + "\n"
    if event_id is not None:
        head += "id: " + _field_value("id", str(event_id)) + "\n"
    body = data if isinstance(data, bytes) else data.encode("utf-8")
    if b"\n" in body or b"\r" in body:
        lines = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        return head.encode("utf-8") + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"
    return head.encode("utf-8") + b"data: " + body + b"\n\n"


def json_event(event: str, value: Any, event_id: str | int | None = None) -> bytes:
    """:func:`encode_event` with ``value`` as compact JSON.

    ASCII-escaped on purpose: a lone surrogate (``"\\ud800"`` in a JSON body is valid and decodes to
    one) cannot be encoded as UTF-8, and would otherwise break the stream mid-way.
    """
    return encode_event(event, json.dumps(value, separators=_SEPARATORS), event_id)


def sse_response(frames: AsyncIterable[bytes]) -> Response:
    """A ``text/event-stream`` response streaming ``frames``.

    Not cached, not buffered by a proxy (``X-Accel-Buffering: no``), and without Quart's
    response timeout (60 s by default), which would otherwise end every stream at that age.
    """
    response = Response(
        frames,
        content_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
    response.timeout = None
    return response


async def wait_first(*events: trio.Event | None) -> None:
    """Return as soon as one of ``events`` is set (``None`` entries are skipped).

    What a stream loop waits on between frames: new data, its document closing, the server
    shutting down. Put it under ``trio.move_on_after(heartbeat)`` for a heartbeat. With no
    event at all it waits until cancelled (nothing can wake it). The waiting tasks live in a
    nursery of their own and are all gone when it returns; a cancellation from outside ends
    them too.
    """
    pending = [event for event in events if event is not None]
    if any(event.is_set() for event in pending):
        await trio.lowlevel.checkpoint()
        return
    if not pending:
        await trio.sleep_forever()
    async with trio.open_nursery() as nursery:

        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel(reason="stream woken")

        for event in pending:
            nursery.start_soon(wait, event)
