"""``Patch-Uri`` is the producer's path as received: percent-escapes stay escaped in the header."""

from __future__ import annotations

import httpx
import pytest
import trio
from support.live import LiveServer
from support.relay import channel_key, wait_for_waiters

from skald.relay.channels import RelayHub


@pytest.mark.parametrize("segment", ["a%0Db", "tab%09and%0Anewline", "caf%C3%A9", "x%00y", "sp%20ace"])
async def test_a_producer_path_with_escaped_control_characters_reaches_the_consumer(
    server: LiveServer, segment: str
) -> None:
    # Decoded, these paths hold CR, LF, NUL or non-ASCII: as a header value they would break (or split)
    # the consumer's response head. The consumer must get the message with the path as the producer sent it.
    hub: RelayHub = server.state.relay
    got: dict[str, object] = {}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

        async def consume() -> None:
            r = await client.get(f"/p/{segment}")
            got.update(status=r.status_code, body=r.content, uri=r.headers.get("patch-uri"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            decoded = httpx.URL(f"/p/{segment}").path[len("/p/"):]
            await wait_for_waiters(hub, channel_key("public", "p", decoded), consumers=1)
            produced = await client.post(f"/p/{segment}?k=v", content=b"hello")
    assert produced.status_code == 200
    assert got == {"status": 200, "body": b"hello", "uri": f"/p/{segment}?k=v"}


async def test_the_document_relay_keeps_the_path_as_received(server: LiveServer) -> None:
    async with server.client() as client:
        assert (await client.put("/api/v1/db/demo")).status_code == 201
        got: dict[str, object] = {}

        async def consume() -> None:
            r = await client.get("/api/v1/db/demo/streams/queue/a%0Db/next")
            got.update(status=r.status_code, uri=r.headers.get("patch-uri"))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                hub: RelayHub = server.state.relay
                await wait_for_waiters(hub, "demo\x00api\x00queue/a\rb", consumers=1)
                assert (await client.post("/api/v1/db/demo/streams/queue/a%0Db", content=b"m")).status_code == 200
    assert got == {"status": 200, "uri": "/api/v1/db/demo/streams/queue/a%0Db"}
