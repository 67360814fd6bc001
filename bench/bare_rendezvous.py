"""A bare rendezvous relay on stock hypercorn (trio worker): what the server stack gives on its own.

A bare ASGI app, no skald: a GET waits for the POST/PUT to the same path and
streams its body through a two-slot trio channel, one ``receive()`` to one
``send()`` (the body's length passed on when the producer declared one); the
producer is answered once the consumer's answer is out. ``bench/relay.py`` serves
it with ``hypercorn -k trio`` (none of skald's patches) and drives it exactly
like skald and piping-server, so the run shows how much of skald's figure is
the server stack.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _Meeting:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.posted = trio.Event()
        self.answered = trio.Event()
        self.send, self.receive = trio.open_memory_channel[bytes](2)


_meetings: dict[str, _Meeting] = {}


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


async def app(scope: Message, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    meeting = _meetings.setdefault(scope["path"], _Meeting())
    if scope["method"] == "GET":
        await meeting.posted.wait()
        await send({"type": "http.response.start", "status": 200, "headers": meeting.headers})
        async for chunk in meeting.receive:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        meeting.answered.set()
        return
    meeting.headers = [(k, v) for k, v in scope["headers"] if k == b"content-length"]
    meeting.posted.set()
    async with meeting.send:
        while True:
            message = await receive()
            if message.get("body"):
                await meeting.send.send(message["body"])
            if not message.get("more_body", False):
                break
    await meeting.answered.wait()
    _meetings.pop(scope["path"], None)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})
