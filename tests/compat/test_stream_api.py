"""The document-scoped relay routes of the JSON API: /api/v1/db/{db_id}/streams/..."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import trio
from support.live import ADMIN_TOKEN, LiveServer, make_settings, start_live_server
from support.relay import channel_key, wait_for_requests, wait_for_waiters

from skald.relay.channels import RelayHub, RequestChannels


async def test_queue_next_and_broadcast(server: LiveServer) -> None:
    hub: RelayHub = server.state.relay
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
        await client.put("/api/v1/db/s")
        got: list[bytes] = []

        async def consume() -> None:
            got.append((await client.get("/api/v1/db/s/streams/queue/jobs/next")).content)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            nursery.start_soon(consume)
            await wait_for_waiters(hub, channel_key("s", "api", "queue/jobs"), consumers=2)
            assert (await client.post("/api/v1/db/s/streams/queue/jobs?pubsub", content=b"all")).status_code == 200
        assert got == [b"all", b"all"]
        r = await client.get("/api/v1/db/s/streams/queue/jobs")
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
        r = await client.delete("/api/v1/db/s/streams/queue/jobs")
        assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"
        r = await client.get("/api/v1/db/missing/streams/queue/x/next")
        assert r.status_code == 404 and r.json()["code"] == "document_not_found"


async def test_request_and_responder(server: LiveServer) -> None:
    channels: RequestChannels = server.state.relay_requests
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    results: dict[str, httpx.Response] = {}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
        await client.put("/api/v1/db/s")

        async def responder() -> None:
            results["res"] = await client.post(
                "/api/v1/db/s/streams/res/calc", content=b"42", headers={"patch-status": "201"}
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(responder)
            await wait_for_requests(channels, channel_key("s", "api", "res/calc"), responders=1)
            results["req"] = await client.post("/api/v1/db/s/streams/req/calc", content=b"6*7?")
    assert results["req"].status_code == 201 and results["req"].content == b"42"
    assert results["res"].status_code == 200


async def test_stream_routes_authorize_with_problem_json(server: LiveServer) -> None:
    await server.state.supervisor.create_document("s")
    reader = await server.mint_token("s:stream.read:jobs")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        r = await client.get("/api/v1/db/s/streams/queue/jobs/next")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["code"] == "unauthenticated"
        r = await client.get(f"/api/v1/db/s/streams/queue/jobs/next?token={reader}")
        assert r.status_code == 401  # ?token= only on the legacy routes
        auth = {"Authorization": f"Bearer {reader}"}
        r = await client.post("/api/v1/db/s/streams/queue/jobs", content=b"x", headers=auth)
        assert r.status_code == 403 and r.json()["code"] == "scope_denied"
        r = await client.get("/api/v1/db/s/streams/queue/other/next", headers=auth)
        assert r.status_code == 403


async def test_api_failures_are_problem_json(nursery: trio.Nursery, data_dir: Path) -> None:
    """A consumer that leaves mid-body (502) and an unanswered switch (504) answer problem+json here."""
    live = await start_live_server(nursery, make_settings(data_dir, switch_timeout_seconds=0.5))
    await live.state.supervisor.create_document("s")
    hub: RelayHub = live.state.relay
    channels: RequestChannels = live.state.relay_requests
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=live.url, headers=headers, timeout=30) as client:
        results: dict[str, httpx.Response] = {}

        async def body() -> AsyncIterator[bytes]:
            for _ in range(1024):  # 64 MiB, far more than the consumer reads
                yield b"z" * 65536

        async def produce() -> None:
            results["producer"] = await client.post("/api/v1/db/s/streams/queue/cut", content=body())

        async with trio.open_nursery() as inner:
            inner.start_soon(produce)
            await wait_for_waiters(hub, channel_key("s", "api", "queue/cut"), producers=1)
            host, port = live.url.removeprefix("http://").split(":")
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(
                f"GET /api/v1/db/s/streams/queue/cut/next HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n".encode()
            )
            assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200")
            await stream.aclose()
        r = results["producer"]
        assert r.status_code == 502 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "consumer_gone"

        async with trio.open_nursery() as inner:
            inner.start_soon(lambda: client.post("/api/v1/db/s/streams/res/door?switch", content=b"later"))
            await wait_for_requests(channels, channel_key("s", "api", "res/door"), responders=1)
            r = await client.post("/api/v1/db/s/streams/req/door", content=b"knock")
        assert r.status_code == 504 and r.json()["code"] == "switch_timeout"
        assert "later" in r.json()["detail"]
