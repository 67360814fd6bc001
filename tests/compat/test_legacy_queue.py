"""Legacy patchwork queues and broadcast (specs/legacy-streams.md), over real HTTP."""

from __future__ import annotations

import httpx
import trio
from support.live import LiveServer
from support.relay import channel_key, wait_for_waiters, wait_until_nobody_waits

from skald.relay.channels import RelayHub


def _hub(server: LiveServer) -> RelayHub:
    hub: RelayHub = server.state.relay
    return hub


async def test_producer_waits_for_consumer_and_gets_200_after_delivery(server: LiveServer) -> None:
    results: dict[str, object] = {}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

        async def produce() -> None:
            r = await client.post("/p/x", content=b"hello")
            results["producer"] = r.status_code

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            await wait_for_waiters(_hub(server), channel_key("public", "p", "x"), producers=1)
            assert "producer" not in results  # it waits for a consumer
            r = await client.get("/p/x")
            results["body"] = r.content
            results["type"] = r.headers["content-type"]
            results["uri"] = r.headers["patch-uri"]
    assert results == {"producer": 200, "body": b"hello", "type": "text/plain", "uri": "/p/x"}
    assert _hub(server).waiting == 0


async def test_consumer_waits_for_producer_fifo(server: LiveServer) -> None:
    got: list[tuple[int, bytes]] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

        async def consume(n: int) -> None:
            got.append((n, (await client.get("/p/queue/jobs")).content))

        key = channel_key("public", "p", "queue/jobs")
        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(consume, n)
                await wait_for_waiters(_hub(server), key, consumers=n + 1)
            for n in range(3):
                assert (await client.post("/p/queue/jobs", content=f"m{n}".encode())).status_code == 200
    assert sorted(got) == [(0, b"m0"), (1, b"m1"), (2, b"m2")]  # first come, first served


async def test_p_and_public_are_different_channels(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.get, "/public/same")
            await wait_for_waiters(_hub(server), channel_key("public", "public", "same"), consumers=1)
            assert _hub(server).waiting_on(channel_key("public", "p", "same")) == (0, 0)
            await client.post("/public/same", content=b"x")


async def test_broadcast_reaches_every_waiting_consumer_and_none_is_200_at_once(server: LiveServer) -> None:
    bodies: list[bytes] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        assert (await client.post("/p/pubsub/news", content=b"lost")).status_code == 200  # nobody waits: dropped

        async def consume() -> None:
            bodies.append((await client.get("/p/pubsub/news")).content)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(consume)
            await wait_for_waiters(_hub(server), channel_key("public", "p", "pubsub/news"), consumers=3)
            assert (await client.post("/p/pubsub/news", content=b"hi all")).status_code == 200
    assert bodies == [b"hi all"] * 3


async def test_pubsub_query_key_makes_a_producer_broadcast(server: LiveServer) -> None:
    bodies: list[bytes] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(lambda: _append(client, "/p/room", bodies))
            await wait_for_waiters(_hub(server), channel_key("public", "p", "room"), consumers=2)
            # any value, even "false": the key's presence makes this producer broadcast
            assert (await client.post("/p/room?pubsub=false", content=b"b")).status_code == 200
    assert bodies == [b"b", b"b"]


async def _append(client: httpx.AsyncClient, path: str, into: list[bytes]) -> None:
    into.append((await client.get(path)).content)


async def test_body_query_key_on_get_and_post(server: LiveServer) -> None:
    got: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        key = channel_key("public", "p", "b")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _get(client, "/p/b", got))
            await wait_for_waiters(_hub(server), key, consumers=1)
            assert (await client.get("/p/b?body=from-get")).status_code == 200
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _get(client, "/p/b", got))
            await wait_for_waiters(_hub(server), key, consumers=1)
            r = await client.post("/p/b?body=replaced", content=b"ignored", headers={"content-type": "x/y"})
            assert r.status_code == 200
    assert [r.content for r in got] == [b"from-get", b"replaced"]
    assert all(r.headers["content-type"] == "text/plain" for r in got)
    assert got[0].headers["patch-uri"] == "/p/b?body=from-get"


async def _get(client: httpx.AsyncClient, path: str, into: list[httpx.Response]) -> None:
    into.append(await client.get(path))


async def test_other_methods_are_405_with_allow(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        r = await client.delete("/p/x")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST, PUT"
    assert r.headers["content-type"].startswith("text/plain")


async def test_headers_are_carried(server: LiveServer) -> None:
    got: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _get(client, "/p/h", got))
            await wait_for_waiters(_hub(server), channel_key("public", "p", "h"), consumers=1)
            headers = {
                "content-type": "application/json",
                "user-agent": "legacy-script/1",
                "cookie": "secret=1",
                "x-custom": "no",
                "patch-h-x-trace": "abc",
                "patch-h-user-agent": "explicit-wins",
            }
            r = await client.post("/p/h?a=1&token=t0ken&secret=s3", content=b"{}", headers=headers)
            assert r.status_code == 200
    h = got[0].headers
    assert h["content-type"] == "application/json"
    assert h["patch-uri"] == "/p/h?a=1"  # credentials removed
    assert h["user-agent"] == "explicit-wins" and h["x-trace"] == "abc"
    assert "cookie" not in h and "x-custom" not in h


async def test_waiter_that_disconnects_leaves_nothing(server: LiveServer) -> None:
    key = channel_key("public", "p", "gone")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        with trio.move_on_after(10) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.get, "/p/gone")
                await wait_for_waiters(_hub(server), key, consumers=1)
                nursery.cancel_scope.cancel()
        assert not scope.cancelled_caught
        await wait_until_nobody_waits(_hub(server), key)
        # a producer now waits instead of handing its message to the vanished consumer
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: client.post("/p/gone", content=b"kept"))
            await wait_for_waiters(_hub(server), key, producers=1)
            r = await client.get("/p/gone")
            assert r.content == b"kept"
