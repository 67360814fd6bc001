"""Streaming through a relay: bounded memory, and no silent loss when a side goes away."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest
import trio
from support.live import LiveServer, make_settings, start_live_server
from support.relay import channel_key, wait_for_waiters, wait_until_nobody_waits

from skald.relay.channels import RelayHub

MIB = 1024 * 1024


async def _body(total: int, chunk: int = 256 * 1024) -> AsyncIterator[bytes]:
    block = b"x" * chunk
    sent = 0
    while sent < total:
        part = block[: min(chunk, total - sent)]
        sent += len(part)
        yield part


def _hub(server: LiveServer) -> RelayHub:
    hub: RelayHub = server.state.relay
    return hub


@pytest.mark.slow
async def test_large_body_streams_in_bounded_memory_to_a_slow_consumer(server: LiveServer) -> None:
    total = 2048 * MIB  # ~20 s here; the memory bound below holds whatever the size
    process = psutil.Process(os.getpid())
    before = process.memory_info().rss
    peak = before
    received = 0
    results: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:

        async def produce() -> None:
            r = await client.post("/p/big", content=_body(total))
            results["producer"] = r.status_code

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            await wait_for_waiters(_hub(server), channel_key("public", "p", "big"), producers=1)
            async with client.stream("GET", "/p/big") as response:
                async for chunk in response.aiter_bytes():
                    received += len(chunk)
                    if received % (8 * MIB) < len(chunk):
                        peak = max(peak, process.memory_info().rss)
                        await trio.sleep(0.01)  # a slow reader: the producer must wait, not pile up
    assert received == total
    assert results["producer"] == 200
    # Server and both clients share this process: all of it together stays far below the body size.
    assert peak - before < 64 * MIB, f"RSS grew by {(peak - before) / MIB:.0f} MiB relaying {total // MIB} MiB"


async def test_consumer_gone_mid_body_fails_the_producer(server: LiveServer) -> None:
    results: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

        async def produce() -> None:
            r = await client.post("/p/cut", content=_body(64 * MIB))
            results["producer"] = r.status_code

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            await wait_for_waiters(_hub(server), channel_key("public", "p", "cut"), producers=1)
            # a raw consumer: read the start of the body, then hang up
            host, port = server.url.removeprefix("http://").split(":")
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(b"GET /p/cut HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200")
            await stream.aclose()
    assert results["producer"] == 502  # never a silent 200


async def _raw_request(server: LiveServer, head: bytes) -> trio.SocketStream:
    host, port = server.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(head)
    return stream


@pytest.mark.hypercorn_patch("hang_ups")
async def test_producer_gone_before_pairing_leaves_nothing(server: LiveServer) -> None:
    """A waiting producer that hangs up is withdrawn at once: its message reaches nobody."""
    hub, key = _hub(server), channel_key("public", "p", "left")
    # The whole request arrives, so hypercorn stops reading the connection while it waits.
    stream = await _raw_request(server, b"POST /p/left HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nlost")
    await wait_for_waiters(hub, key, producers=1)
    await stream.aclose()
    await wait_until_nobody_waits(hub, key)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client, trio.open_nursery() as nursery:
        nursery.start_soon(lambda: client.post("/p/left", content=b"kept"))
        await wait_for_waiters(hub, key, producers=1)
        assert (await client.get("/p/left")).content == b"kept"


@pytest.mark.hypercorn_patch("hang_ups")
async def test_producer_gone_mid_upload_before_pairing_leaves_nothing(server: LiveServer) -> None:
    """The same with a large body still in flight (unread bytes queued on the socket).

    The client resets the connection (``SO_LINGER`` 0). A plain close can queue its FIN behind bytes
    the server does not read before pairing, and TCP then delivers it only once a consumer takes the
    body (which then arrives cut): see docs/compatibility.md, "Known limits".
    """
    hub, key = _hub(server), channel_key("public", "p", "half")
    stream = await _raw_request(server, b"PUT /p/half HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\r\n")
    async with trio.open_nursery() as nursery:
        # Sends until the server stops reading (it does not read on before pairing): it may never finish.
        nursery.start_soon(stream.send_all, b"y" * (4 * MIB))
        await wait_for_waiters(hub, key, producers=1)
        nursery.cancel_scope.cancel()
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()
    await wait_until_nobody_waits(hub, key)


async def test_consumer_gone_before_pairing_takes_nothing(server: LiveServer) -> None:
    """A consumer that hangs up while waiting is withdrawn, so the next message goes to a live one."""
    hub, key = _hub(server), channel_key("public", "p", "idle")
    stream = await _raw_request(server, b"GET /p/idle HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_for_waiters(hub, key, consumers=1)
    await stream.aclose()
    await wait_until_nobody_waits(hub, key)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client, trio.open_nursery() as nursery:
        got: list[bytes] = []

        async def consume() -> None:
            got.append((await client.get("/p/idle")).content)

        nursery.start_soon(consume)
        await wait_for_waiters(hub, key, consumers=1)
        assert (await client.post("/p/idle", content=b"for the live one")).status_code == 200
    assert got == [b"for the live one"]


async def test_waiting_clients_cost_no_descriptors_beyond_their_sockets(nursery: trio.Nursery, data_dir: Path) -> None:
    """Watching for hang-ups shares one epoll set: 200 waiting consumers hold ~400 sockets, nothing more."""
    settings = make_settings(data_dir, public_rate_per_second=10_000.0, public_rate_burst=100_000)
    server = await start_live_server(nursery, settings)
    hub, key, waiting = _hub(server), channel_key("public", "p", "crowd"), 200
    process = psutil.Process(os.getpid())
    before = process.num_fds()
    streams = [await _raw_request(server, b"GET /p/crowd HTTP/1.1\r\nHost: x\r\n\r\n") for _ in range(waiting)]
    await wait_for_waiters(hub, key, consumers=waiting)
    grown = process.num_fds() - before
    for stream in streams:
        await stream.aclose()
    await wait_until_nobody_waits(hub, key)
    # Client and server end of each connection live in this process: 2 per waiter, plus a few shared.
    assert grown <= 2 * waiting + 8, f"{grown} descriptors for {waiting} waiting consumers"
    await server.stop()
