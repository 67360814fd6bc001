"""The blocking and the async client are one API: same methods, same parameters.

Only the sync/async split may differ (``close``/``aclose``, ``__enter__``/``__aenter__``, a
coroutine or async iterator where the blocking one returns a value or a generator).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from skald.client import AsyncClient, Client, Event, SkaldClientError

# blocking name -> async name: the only names allowed to differ
RENAMED = {"close": "aclose", "__enter__": "__aenter__", "__exit__": "__aexit__"}


def public_methods(cls: type) -> dict[str, Callable[..., object]]:
    names = {n for n in dir(cls) if not n.startswith("_")} | {"__init__"}
    names |= {n for n in ("__enter__", "__exit__", "__aenter__", "__aexit__") if hasattr(cls, n)}
    return {n: getattr(cls, n) for n in names if callable(getattr(cls, n))}


def shape(fn: Callable[..., object]) -> list[tuple[str, str, Any]]:
    """Each parameter's name, kind and default (annotations differ by design: sync vs async types)."""
    return [
        (p.name, p.kind.name, p.default) for p in inspect.signature(fn).parameters.values()
    ]


def test_same_methods() -> None:
    blocking = {RENAMED.get(n, n) for n in public_methods(Client)}
    asynchronous = set(public_methods(AsyncClient))
    assert sorted(blocking - asynchronous) == [], "only in Client"
    assert sorted(asynchronous - blocking) == [], "only in AsyncClient"


def test_same_parameters() -> None:
    a = public_methods(AsyncClient)
    differences = {
        name: (shape(fn), shape(a[RENAMED.get(name, name)]))
        for name, fn in public_methods(Client).items()
        if RENAMED.get(name, name) in a and shape(fn) != shape(a[RENAMED.get(name, name)])
    }
    assert differences == {}


def test_async_methods_are_async() -> None:
    """Every async method that does I/O is a coroutine function, or returns an async iterator
    (the streams) or an async context manager (``lease``); none is a blocking call in disguise."""
    streams = {"watch", "subscribe", "follow_changes", "lease"}
    for name, fn in public_methods(AsyncClient).items():
        if name == "__init__" or name in streams:
            continue
        assert inspect.iscoroutinefunction(fn), name


# ---- same behaviour: the same server answers give the same events and the same requests ----------

# what each stream's server may send (event names; ids and data are filled in below)
VOCABULARY = {
    "watch": ["snapshot", "update", "unchanged", "heartbeat", "error"],
    "subscribe": ["message", "reset", "heartbeat", "error"],
    "follow_changes": ["change", "heartbeat"],
}


@st.composite
def scripts(draw: st.DrawFn) -> tuple[str, list[list[tuple[str, str, Any]]]]:
    """A stream kind and what the server sends on each successive connection."""
    kind = draw(st.sampled_from(sorted(VOCABULARY)))
    names = st.lists(st.sampled_from(VOCABULARY[kind]), max_size=6)
    counter = 0
    connections = []
    for events in draw(st.lists(names, min_size=1, max_size=4)):
        sent = []
        for name in events:
            counter += 1
            if kind == "watch" and name in ("snapshot", "update"):
                data: Any = {"result_hash": draw(st.sampled_from("abc")), "rows": [[counter]]}
            elif name == "heartbeat":
                data = {}
            else:
                data = {"n": counter}
            sent.append((str(counter) if name != "heartbeat" else "", name, data))
        connections.append(sent)
    return kind, connections


def sse_body(events: list[tuple[str, str, Any]]) -> bytes:
    return b"".join(
        (f"id: {i}\n" if i else "").encode() + f"event: {e}\ndata: {json.dumps(d)}\n\n".encode()
        for i, e, d in events
    )


def serve(
    connections: list[list[tuple[str, str, Any]]], seen: list[Any]
) -> Callable[[httpx.Request], httpx.Response]:
    """A handler answering connection ``n`` with its script, then 404 (which ends both clients)."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        params = sorted(request.url.params.multi_items())
        seen.append((request.url.path, params, request.headers.get("Last-Event-ID"), body))
        if len(seen) > len(connections):
            return httpx.Response(404, json={"code": "document_not_found", "detail": "gone"})
        content = sse_body(connections[len(seen) - 1])
        return httpx.Response(200, content=content, headers={"content-type": "text/event-stream"})

    return handler


def open_stream(client: Any, kind: str) -> Any:  # either client: the same calls, sync or async cursors
    if kind == "watch":
        return client.watch("notes", "SELECT 1")
    if kind == "subscribe":
        return client.subscribe("notes", "a/#", since_id=0)
    return client.follow_changes("notes", since=0)


@settings(max_examples=60, deadline=None)
@given(scripts())
def test_same_events_and_requests(script: tuple[str, list[list[tuple[str, str, Any]]]]) -> None:
    kind, connections = script

    blocking_seen: list[Any] = []
    blocking_got: list[Event] = []
    sync_transport = httpx.MockTransport(serve(connections, blocking_seen))
    with Client("http://x", "t", transport=sync_transport, reconnect_delay=0) as client:
        with pytest.raises(SkaldClientError) as blocking_error:
            for event in open_stream(client, kind):
                blocking_got.append(event)

    async_seen: list[Any] = []
    async_got: list[Event] = []

    async def run() -> SkaldClientError:
        handler = serve(connections, async_seen)

        async def async_handler(request: httpx.Request) -> httpx.Response:
            await request.aread()
            return handler(request)

        transport = httpx.MockTransport(async_handler)
        async with AsyncClient("http://x", "t", transport=transport, reconnect_delay=0) as client:
            try:
                async with open_stream(client, kind) as events:
                    async for event in events:
                        async_got.append(event)
            except SkaldClientError as exc:
                return exc
        raise AssertionError("the stream ended without an error")

    async_error = trio.run(run)
    assert async_got == blocking_got
    assert async_seen == blocking_seen
    assert (type(async_error), async_error.code) == (type(blocking_error.value), blocking_error.value.code)
