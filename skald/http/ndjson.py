"""NDJSON streams: one request carries many operations, one acknowledgement line answers each.

``POST …/messages/stream`` and ``POST …/query/stream`` read ``application/x-ndjson`` (one JSON
object per line) in one long request and answer ``application/x-ndjson``: one line per input
line, in input order, each written once its operation committed (``{"line": n, ...}``) or
failed (``{"line": n, "problem": {RFC 9457 fields}}``). Blank lines are skipped (no ack).

How the work flows (:class:`AckStream`): one reader task takes lines off the request body and
hands each to a ``start`` function, which validates it and *queues* its operation on the
document (in line order: ``DocumentActor.enqueue_write``) and returns something to await;
the response side awaits those in order and writes each acknowledgement. At most ``window``
lines are in flight: past that the reader stops taking lines, so a client that sends faster
than the document commits is held back, and one that does not read its acknowledgements
stops being read (its unread acknowledgements fill the connection).

The stream ends when the input ends (every line acknowledged), with a final problem line for
input that cannot be read on (a line longer than ``max_line`` bytes), or when the client
disconnects (what was queued still commits).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

import trio
from quart import Response
from quart.wrappers.response import ResponseBody
from werkzeug.exceptions import HTTPException

from skald.errors import InvalidJSON, PayloadTooLarge, SkaldError
from skald.http.json_body import decode_json_body

NDJSON = "application/x-ndjson"
Ack = dict[str, Any]


class Started:
    """What ``start`` returns for a line: ``wait()`` is awaited, in line order, for the line's
    acknowledgement (or raises its :class:`SkaldError`); ``ready()`` says it would not wait, so
    acknowledgements already due go out together in one write."""

    def __init__(self, wait: Callable[[], Awaitable[Ack]], ready: Callable[[], bool] = lambda: True) -> None:
        self.wait = wait
        self.ready = ready


Start = Callable[[Any], Awaitable[Started]]
"""Validate one decoded line and queue its work; raise a :class:`SkaldError` to refuse the line."""


def problem_line(line: int, error: SkaldError) -> Ack:
    return {"line": line, "problem": error.problem()}


def _refused(error: SkaldError) -> Started:
    async def fail() -> Ack:
        raise error

    return Started(fail)


class AckStream(ResponseBody):
    """The response body of an NDJSON stream (Quart enters it around sending, in the request's task,
    so the reader's nursery is a plain nested scope, never one held open across a ``yield``)."""

    def __init__(
        self,
        body: AsyncIterable[bytes],
        opened: Callable[[], AbstractAsyncContextManager[Start]],
        *,
        window: int,
        max_line: int,
    ) -> None:
        self._body = body
        self._opened = opened
        self._start: Start = _unopened
        self._window = window
        self._max_line = max_line
        self._exit = contextlib.AsyncExitStack()

    async def __aenter__(self) -> AsyncIterable[bytes]:
        """Open the stream's resources (``opened()``: the document, held while the stream lasts)
        and start reading. A document that cannot be opened answers every line with its problem."""
        try:
            self._start = await self._exit.enter_async_context(self._opened())
        except SkaldError as exc:
            self._start = _refusing(exc)
        chan: AsyncIterable[bytes] = await self._exit.enter_async_context(_acks(self))
        return chan

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._exit.__aexit__(exc_type, exc, tb)

    async def read(self, send: trio.MemorySendChannel[tuple[int, Started]]) -> None:
        """Split the body into lines and start each, in order; a full ``send`` holds reading back."""
        async with send:
            number = 0
            pending = b""
            try:
                async for chunk in self._body:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for raw in lines:
                        number += 1
                        await send.send((number, await self._begin(number, raw)))
                    if len(pending) > self._max_line:
                        await send.send((number + 1, _refused(_too_long(self._max_line))))
                        return  # where the next line starts is unknown: nothing after it is read
            except HTTPException as exc:  # the body broke off, or passed Quart's buffering limit
                await send.send((number + 1, _refused(InvalidJSON(f"the request body ended: {exc.description}"))))
                return
            if pending.strip():
                number += 1
                await send.send((number, await self._begin(number, pending)))

    async def _begin(self, number: int, raw: bytes) -> Started:
        if len(raw) > self._max_line:
            return _refused(_too_long(self._max_line))
        if not raw.strip():
            return _blank
        try:  # as strict as a JSON body (no lone surrogate, NaN or runaway nesting: each breaks later)
            value = decode_json_body(raw)
        except InvalidJSON as exc:
            return _refused(InvalidJSON(f"line {number} is not JSON: {exc.detail}"))
        try:
            return await self._start(value)
        except SkaldError as exc:
            return _refused(exc)


async def _unopened(value: Any) -> Started:
    raise AssertionError("AckStream used outside its context")


def _refusing(error: SkaldError) -> Start:
    async def start(value: Any) -> Started:
        raise error

    return start


async def _nothing() -> Ack:
    return {}


_blank = Started(_nothing)


def _too_long(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"a line is over {limit} bytes", limit=limit)


@trio.as_safe_channel
async def _acks(stream: AckStream) -> AsyncGenerator[bytes, None]:
    send, receive = trio.open_memory_channel[tuple[int, Started]](stream._window)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.read, send)
        async with receive:
            held: tuple[int, Started] | None = None
            while True:
                if held is None:
                    try:
                        held = await receive.receive()
                    except trio.EndOfChannel:
                        return
                lines = [await _ack_line(*held)]
                held = None
                while True:  # every acknowledgement already due goes out in the same write
                    try:
                        held = receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    if not held[1].ready():
                        break  # written after this chunk
                    lines.append(await _ack_line(*held))
                    held = None
                chunk = b"".join(lines)
                if chunk:
                    yield chunk


async def _ack_line(number: int, started: Started) -> bytes:
    try:
        ack = await started.wait()
        if not ack:
            return b""  # a blank line
        ack = {"line": number, **ack}
    except SkaldError as exc:
        ack = problem_line(number, exc)
    text = json.dumps(ack, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800"; UTF-8 cannot carry it): escaped
        return json.dumps(ack, separators=(",", ":")).encode() + b"\n"


def ndjson_response(stream: AckStream) -> Response:
    response = Response(stream, content_type=NDJSON)
    response.headers["Cache-Control"] = "no-store"
    response.timeout = None  # a stream lasts as long as its input, not Quart's 60 s
    return response
