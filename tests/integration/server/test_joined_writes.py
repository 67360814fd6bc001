"""The ``joined_writes`` patch: a small relay message leaves the server in two socket writes, not five.

A user sees it as relay throughput (``bench/relay.py``'s small messages); what a test can see is the
number of writes each response takes, counted at trio's socket stream, and that every byte still
arrives, in order, on kept-alive connections.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from support.live import make_settings, start_live_server
from support.relay import channel_key, wait_for_waiters

from skald.relay.channels import RelayHub


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, bytes]]]:
    """Every socket write made in this process (the servers' and the clients'), with its local port."""
    seen: list[tuple[int, bytes]] = []
    original = trio.SocketStream.send_all

    async def send_all(self: trio.SocketStream, data: bytes | bytearray | memoryview) -> None:
        seen.append((self.socket.getsockname()[1], bytes(data)))
        await original(self, data)

    monkeypatch.setattr(trio.SocketStream, "send_all", send_all)
    yield seen


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].strip("/"))


async def _relay_messages(url: str, hub: RelayHub, count: int) -> list[bytes]:
    """``count`` messages through one consumer and one producer connection (each kept alive); what arrived."""
    got: list[bytes] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as consumer, httpx.AsyncClient(
        base_url=url, timeout=30
    ) as producer:
        for n in range(count):
            async with trio.open_nursery() as nursery:

                async def consume(n: int = n) -> None:
                    got.append((await consumer.get(f"/p/joined-{n}")).content)

                nursery.start_soon(consume)
                await wait_for_waiters(hub, channel_key("public", "p", f"joined-{n}"), consumers=1)
                answer = await producer.post(f"/p/joined-{n}", content=b"%d:" % n + b"m" * 1024)
                assert answer.status_code == 200
    return got


@pytest.mark.hypercorn_patch("joined_writes")
async def test_a_small_message_costs_one_write_per_response(
    nursery: trio.Nursery, data_dir: Path, writes: list[tuple[int, bytes]]
) -> None:
    server = await start_live_server(nursery, make_settings(data_dir, public_rate_burst=1000))
    got = await _relay_messages(server.url, server.state.relay, 20)
    assert got == [b"%d:" % n + b"m" * 1024 for n in range(20)]
    served = [data for port, data in writes if port == _port(server.url)]
    assert len(served) == 40  # 20 consumers' answers and 20 producers' 200s, one write each
    assert all(data.startswith(b"HTTP/1.1 200 ") for data in served)  # each head with its body and end
    await server.stop()


async def test_with_the_patch_off_the_same_messages_arrive_whole(
    nursery: trio.Nursery, data_dir: Path, writes: list[tuple[int, bytes]]
) -> None:
    """The block changes nothing where the patch is off: hypercorn writes each message as it comes."""
    settings = make_settings(data_dir, public_rate_burst=1000, hypercorn_patches=True,
                             hypercorn_patches_skip="joined_writes")
    server = await start_live_server(nursery, settings)
    got = await _relay_messages(server.url, server.state.relay, 5)
    assert got == [b"%d:" % n + b"m" * 1024 for n in range(5)]
    served = [data for port, data in writes if port == _port(server.url)]
    assert len(served) == 25  # head, body and end apart: five writes a message
    await server.stop()
