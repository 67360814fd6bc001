"""The least a rendezvous relay can do on hypercorn's trio worker: the floor under skald's small messages.

A bare ASGI app, no skald: a GET waits for the POST to the same path, takes its
body (buffered, at most 1 KiB in the bench) and answers it; the POST is answered
once the GET's answer is out. ``bench/relay.py`` serves it with
``hypercorn -k trio`` and sends it the same small messages as skald and
piping-server, so the run shows how much of skald's figure is the server stack.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

Message = MutableMapping[str, Any]


class _Meeting:
    def __init__(self) -> None:
        self.body = b""
        self.posted = trio.Event()
        self.answered = trio.Event()


_meetings: dict[str, _Meeting] = {}


async def app(
    scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    meeting = _meetings.setdefault(scope["path"], _Meeting())
    if scope["method"] == "GET":
        await meeting.posted.wait()
        headers = [(b"content-length", str(len(meeting.body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": meeting.body})
        meeting.answered.set()
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    meeting.body = b"".join(chunks)
    meeting.posted.set()
    await meeting.answered.wait()
    _meetings.pop(scope["path"], None)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})
