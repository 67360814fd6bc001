"""Shutdown: every acknowledged write is on disk; SIGTERM ends as soon as the work it took is done, and
every request it took gets an answer (its result, or 503 ``shutting_down``)."""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio
from httpx_sse import aconnect_sse
from support.live import ADMIN_TOKEN, LiveServer, SkaldProcess, make_settings, start_live_server

from skald.relay.channels import RelayHub, RequestChannels


async def test_sigterm_during_write_burst_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    # A short grace: requests that raced the signal on a keep-alive connection wait for it.
    proc = SkaldProcess(data_dir, env={"SKALD_GRACE_SECONDS": "2"})
    url = await proc.start()
    acknowledged: set[str] = set()
    enough = trio.Event()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def writer(worker: int, client: httpx.AsyncClient) -> None:
        for i in range(10_000):
            db_id = f"w{worker}-{i}"
            try:
                r = await client.put(f"/api/v1/db/{db_id}")
            except httpx.HTTPError:
                return
            if r.status_code in (200, 201):
                acknowledged.add(db_id)
                if len(acknowledged) >= 100:
                    enough.set()
            elif r.status_code >= 500 and r.status_code != 503:
                raise AssertionError(f"unexpected {r.status_code}: {r.text}")

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(writer, w, client)
            await enough.wait()
            proc.signal(signal.SIGTERM)
            assert await proc.wait() == 0
    await proc.stop()
    assert len(acknowledged) >= 100

    again = SkaldProcess(data_dir)
    url = await again.start()
    try:
        async with httpx.AsyncClient(base_url=url, headers=headers) as client:
            listed = {d["db_id"] for d in (await client.get("/api/v1/db")).json()["documents"]}
    finally:
        await again.stop()
    assert acknowledged <= listed


# ---- a prompt shutdown that answers everything it took ---------------------------------------------

GRACE = 30.0
# Well under the grace: only a shutdown that waits the grace out (or most of it) can take longer.
PROMPT = 10.0
SHUTTING_DOWN_TEXT = b"server is shutting down; retry\n"


async def _exchange(stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, body: bytes = b"") -> None:
    data = conn.send(request) or b""
    if body:
        data += conn.send(h11.Data(data=body)) or b""
    await stream.send_all(data + (conn.send(h11.EndOfMessage()) or b""))


async def _response(stream: trio.SocketStream, conn: h11.Connection) -> tuple[int, dict[str, str], bytes]:
    """The next whole response on ``conn``, read with h11 (no client library that might retry or hide a reset)."""
    status, headers, body = 0, {}, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return status, headers, body
        else:
            raise AssertionError(f"no whole response: {event!r}")


class _KeptAlive:
    """A raw HTTP/1.1 connection that has had one answer and is kept alive (idle) for the next request."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.conn = stream, h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, url: str) -> _KeptAlive:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        kept = cls(await trio.open_tcp_stream(host, int(port)))
        await _exchange(kept.stream, kept.conn, h11.Request(method="GET", target="/healthz", headers=[("Host", "t")]))
        status, _headers, _body = await _response(kept.stream, kept.conn)
        assert status == 200
        kept.conn.start_next_cycle()
        return kept

    async def send(self, method: str, target: str, body: bytes = b"", content_type: str = "application/json") -> None:
        headers = [("Host", "t"), ("Authorization", f"Bearer {ADMIN_TOKEN}"), ("Content-Type", content_type),
                   ("Content-Length", str(len(body)))]
        await _exchange(self.stream, self.conn, h11.Request(method=method, target=target, headers=headers), body)

    async def closed_by_server(self) -> bool:
        return await self.stream.receive_some(1) == b""


class _Stream:
    """A long-lived SSE stream on its own connection: its events, and whether it ended cleanly."""

    def __init__(self, live: LiveServer, method: str, path: str, json: Any = None) -> None:
        self.live, self.method, self.path, self.json = live, method, path, json
        self.events: list[tuple[str, Any]] = []
        self.first = trio.Event()
        self.ended_cleanly = False

    async def run(self) -> None:
        async with self.live.client() as client:
            async with aconnect_sse(client, self.method, self.path, json=self.json) as source:
                assert source.response.status_code == 200
                async with contextlib.aclosing(source.aiter_sse()) as events:
                    async for sse in events:
                        self.events.append((sse.event, json.loads(sse.data)))
                        self.first.set()
        self.ended_cleanly = True  # the server ended the response properly (no reset, no cut chunk)


@pytest.mark.hypercorn_patch("shielded_close")
@pytest.mark.hypercorn_patch("close_at_shutdown")
@pytest.mark.hypercorn_patch("keep_alive_timer")
async def test_shutdown_answers_every_request_it_took_and_ends_as_soon_as_that_is_done(
    nursery: trio.Nursery, data_dir: Path
) -> None:
    live = await start_live_server(nursery, make_settings(data_dir, grace_seconds=GRACE), graceful_timeout=GRACE)
    hub: RelayHub = live.state.relay
    channels: RequestChannels = live.state.relay_requests
    async with live.client() as client:
        assert (await client.put("/api/v1/db/d")).status_code in (200, 201)
        assert (await client.post("/api/v1/db/d/query", json={"sql": "CREATE TABLE t (x)"})).status_code == 200
        assert (await client.post("/api/v1/db/d/query", json={"sql": "INSERT INTO t VALUES (1)"})).status_code == 200
    answers: dict[str, tuple[int, str, bytes]] = {}

    said_close: set[str] = set()

    async def call(name: str, method: str, path: str, **kwargs: Any) -> None:
        async with live.client() as client:  # each on its own connection
            r = await client.request(method, path, **kwargs)
            answers[name] = (r.status_code, r.headers.get("content-type", ""), r.content)
            if r.headers.get("connection") == "close":
                said_close.add(name)

    # Waits nobody will end: a relay consumer, a JSON-API queue consumer, a producer, a requester.
    waiters = {
        "consumer": ("GET", "/p/x", {}),
        "api consumer": ("GET", "/api/v1/db/d/streams/queue/jobs/next", {}),
        "producer": ("POST", "/p/y", {"content": b"hello"}),
        "requester": ("POST", "/p/req/z", {"content": b"question"}),
    }
    # Long-lived streams.
    streams = {
        "subscriber": _Stream(live, "GET", "/api/v1/db/d/events/stream"),
        "watch": _Stream(live, "POST", "/api/v1/db/d/query/watch", json={"sql": "SELECT count(*) FROM t"}),
        "changes": _Stream(live, "GET", "/api/v1/db/d/changes/stream"),
    }
    # Work in progress: a relayed body whose second half is sent after the signal.
    first_half, second_half = trio.Event(), trio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"first half, "
        await second_half.wait()
        yield b"second half"

    async def consume_transfer() -> None:
        async with live.client() as client, client.stream("GET", "/p/big") as r:
            received = b""
            async for chunk in r.aiter_bytes():
                received += chunk
                first_half.set()
            answers["transfer consumer"] = (r.status_code, r.headers["content-type"], received)

    async with trio.open_nursery() as inner:
        for name, (method, path, kwargs) in waiters.items():
            inner.start_soon(functools.partial(call, name, method, path, **kwargs))
        for stream in streams.values():
            inner.start_soon(stream.run)
        inner.start_soon(functools.partial(call, "transfer producer", "POST", "/p/big", content=body()))
        inner.start_soon(consume_transfer)
        idle = await _KeptAlive.open(live.url)
        late = {name: await _KeptAlive.open(live.url) for name in ("late relay", "late publish", "late watch")}
        with trio.fail_after(10):  # set-up guard, not a speed check
            await hub.wait_until(lambda: hub.waiting >= 3)
            await channels.wait_until(lambda: channels.waiting >= 1)
            for stream in streams.values():
                await stream.first.wait()
            await first_half.wait()

        started = trio.current_time()
        live._shutdown.begin()
        # Requests that arrive after the signal, on connections kept alive from before it.
        await late["late relay"].send("GET", "/p/late")
        await late["late publish"].send("POST", "/api/v1/db/d/messages", b'{"topic": "t", "payload": 1}')
        await late["late watch"].send("POST", "/api/v1/db/d/query/watch", b'{"sql": "SELECT 1"}')
        second_half.set()  # the transfer under way finishes
        late_answers = {name: await _response(kept.stream, kept.conn) for name, kept in late.items()}
        await live._done.wait()
        took = trio.current_time() - started
    print(f"shutdown took {took:.2f} s (grace {GRACE:g} s)")
    assert took < PROMPT

    for name in ("consumer", "producer", "requester"):  # legacy relay: short plain text
        assert answers[name] == (503, "text/plain; charset=utf-8", SHUTTING_DOWN_TEXT), name
    status, content_type, problem = answers["api consumer"]
    assert (status, content_type, json.loads(problem)["code"]) == (503, "application/problem+json", "shutting_down")
    assert answers["transfer producer"][0] == 200
    # Every answer given after the signal told its client not to send another request on that connection.
    assert said_close == {*waiters, "transfer producer"}
    assert answers["transfer consumer"] == (200, "text/plain", b"first half, second half")

    for name, stream in streams.items():
        assert stream.ended_cleanly, name
        event, data = stream.events[-1]
        assert (event, data["code"]) == ("shutdown", "shutting_down"), (name, stream.events)
    changes = streams["changes"].events
    assert changes[-1][1]["resume_from"] == changes[-2][1]["seq"]  # the last change it sent

    status, headers, text = late_answers["late relay"]
    assert (status, headers["content-type"], text) == (503, "text/plain; charset=utf-8", SHUTTING_DOWN_TEXT)
    for name in ("late publish", "late watch"):
        status, headers, problem = late_answers[name]
        assert (status, headers["content-type"], json.loads(problem)["code"]) == (
            503, "application/problem+json", "shutting_down"), name
    assert {name: answer[1].get("connection") for name, answer in late_answers.items()} == dict.fromkeys(late, "close")
    for kept in (idle, *late.values()):  # and the server closed them all (the idle one at once)
        assert await kept.closed_by_server()
        await kept.stream.aclose()


@pytest.mark.hypercorn_patch("shielded_close")
@pytest.mark.hypercorn_patch("keep_alive_timer")
async def test_sigterm_under_a_steady_load_with_a_relay_consumer_and_streams_exits_well_before_the_grace(
    tmp_path: Path,
) -> None:
    # One client IP drives the load: the rate limiters stay far above it.
    limits = {"SKALD_RATE_LIMIT_PER_SECOND": "100000", "SKALD_RATE_LIMIT_BURST": "100000",
              "SKALD_PUBLIC_RATE_PER_SECOND": "100000", "SKALD_PUBLIC_RATE_BURST": "100000"}
    proc = SkaldProcess(tmp_path / "data", env={"SKALD_GRACE_SECONDS": str(GRACE), **limits})
    url = await proc.start()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    answers: dict[str, httpx.Response] = {}
    last_events: dict[str, str] = {}
    statuses: collections.Counter[int] = collections.Counter()
    unanswered: collections.Counter[str] = collections.Counter()
    loaded = trio.Event()
    try:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
            assert (await client.put("/api/v1/db/d")).status_code in (200, 201)
            assert (await client.post("/api/v1/db/d/query", json={"sql": "CREATE TABLE w (x)"})).status_code == 200

            async def send(own: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> bool:
                """Whether the server took the request; a refused connection means it stopped accepting."""
                try:
                    statuses[(await own.request(method, path, **kwargs)).status_code] += 1
                except httpx.ConnectError:
                    return False
                except httpx.TransportError as exc:
                    # Sent on a kept-alive connection the server closed without an answer: the server
                    # must have told it Connection: close, or waited for the request on its way.
                    unanswered[f"{type(exc).__name__} {method} {path.split(chr(47))[1]} {exc}"] += 1
                if statuses.total() >= 40:
                    loaded.set()
                return True

            async def work(worker: int) -> None:
                async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as own:
                    for n in itertools.count():
                        if n % 3 == 0:
                            taken = await send(own, "POST", "/api/v1/db/d/messages", json={"topic": "t", "payload": n})
                        elif n % 3 == 1:
                            insert = {"sql": "INSERT INTO w VALUES (?)", "args": [n]}
                            taken = await send(own, "POST", "/api/v1/db/d/query", json=insert)
                        else:
                            async with trio.open_nursery() as pair:
                                path = f"/p/pair-{worker}-{n}"
                                pair.start_soon(functools.partial(send, own, "POST", path, content=b"m"))
                                taken = await send(own, "GET", path)
                        if not taken:
                            return

            async def consume() -> None:
                async with httpx.AsyncClient(base_url=url, timeout=60) as own:
                    answers["consumer"] = await own.get("/p/x")

            async def follow(name: str, method: str, path: str, live: trio.Event, **kwargs: Any) -> None:
                async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as own:
                    async with aconnect_sse(own, method, path, **kwargs) as source:
                        async with contextlib.aclosing(source.aiter_sse()) as events:
                            async for sse in events:
                                last_events[name] = sse.event
                                live.set()

            async with trio.open_nursery() as inner:
                inner.start_soon(consume)
                subscribed, watching = trio.Event(), trio.Event()
                inner.start_soon(follow, "subscriber", "GET", "/api/v1/db/d/events/stream", subscribed)
                watch = functools.partial(follow, json={"sql": "SELECT 1"})
                inner.start_soon(watch, "watch", "POST", "/api/v1/db/d/query/watch", watching)
                with trio.fail_after(10):  # set-up guard
                    await subscribed.wait()
                    await watching.wait()
                    while "skald_stream_channels_waiting 1.0" not in (await client.get("/metrics")).text:
                        pass  # each look is a request to the server: no sleep needed
                    for worker in range(6):
                        inner.start_soon(work, worker)
                    await loaded.wait()
                started = time.monotonic()
                proc.signal(signal.SIGTERM)
                assert await proc.wait(limit=GRACE + 10) == 0
                took = time.monotonic() - started
    finally:
        await proc.stop()
    print(f"SIGTERM to exit: {took:.2f} s (grace {GRACE:g} s); answers {dict(statuses)}, unanswered {dict(unanswered)}")
    assert took < PROMPT
    assert set(statuses) <= {200, 201, 503}
    assert not unanswered
    assert (answers["consumer"].status_code, answers["consumer"].text) == (503, "server is shutting down; retry\n")
    assert last_events == {"subscriber": "shutdown", "watch": "shutdown"}


async def test_connections_queued_in_the_backlog_at_the_signal_are_answered_not_reset(
    nursery: trio.Nursery, data_dir: Path
) -> None:
    live = await start_live_server(nursery, make_settings(data_dir, grace_seconds=GRACE), graceful_timeout=GRACE)
    host, port = live.url.removeprefix("http://").rsplit(":", 1)
    # Blocking connects and sends, then the signal, with no checkpoint in between: the kernel has
    # completed the handshakes and holds the requests, but the server has not accepted the connections.
    queued = [socket.create_connection((host, int(port))) for _ in range(5)]
    for raw in queued:
        raw.sendall(b"GET /api/v1/db/d/messages HTTP/1.1\r\nHost: t\r\n\r\n")
    live._shutdown.begin()
    answers = []
    for raw in queued:
        raw.setblocking(False)
        async with trio.SocketStream(trio.socket.from_stdlib_socket(raw)) as stream:
            status, headers, _body = await _response(stream, h11.Connection(h11.CLIENT))
            answers.append((status, headers.get("connection")))
    await live._done.wait()
    assert answers == [(503, "close")] * len(queued)  # before: some were reset when the listener closed
