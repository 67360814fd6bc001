"""The client library against the real query, message and lease routes, under trio and asyncio."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import trio
from support.live import ADMIN_TOKEN, LiveServer

from skald.client.aio import AsyncClient
from skald.client.blocking import Client
from skald.client.errors import SkaldClientError
from skald.client.types import Lease


async def _flow(client: AsyncClient, db_id: str) -> dict[str, Any]:
    await client.create_document(db_id)
    await client.query(db_id, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    inserted = await client.query(db_id, "INSERT INTO t (v) VALUES (?)", [{"$base64": "AAE="}])
    batch = await client.batch(db_id, [("INSERT INTO t (v) VALUES (NULL)", None), ("SELECT count(*) FROM t", None)])
    rows = await client.query(db_id, "SELECT id, v FROM t ORDER BY id")
    first = await client.publish(db_id, "sensors/a", {"c": 1})
    await client.publish(db_id, "sensors/b", text="two")
    polled = await client.poll_messages(db_id, "sensors/+", since_id=0)
    async with client.lease(db_id, "job", ttl_seconds=30, owner="w1") as lease:
        renewed = await client.renew_lease(db_id, lease)
        held_fence = lease["fence"]
    again = await client.acquire_lease(db_id, "job", 30, "w2")  # released on exit: no 409
    try:
        await client.query(db_id, "SELECT * FROM nope")
    except SkaldClientError as exc:
        error = exc.code
    return {
        "inserted": inserted,
        "batch": batch,
        "rows": rows,
        "first": first,
        "polled": polled,
        "renewed": renewed,
        "held_fence": held_fence,
        "again": again,
        "error": error,
    }


def _check(result: dict[str, Any]) -> None:
    assert result["inserted"]["changes"] == 1 and result["inserted"]["last_insert_rowid"] == 1
    assert result["batch"][1]["rows"] == [[2]]
    assert result["rows"]["rows"] == [[1, {"$base64": "AAE="}], [2, None]]
    assert result["first"]["topic"] == "sensors/a"
    messages = result["polled"]["messages"]
    got = [(m["topic"], m.get("payload", m.get("payload_text"))) for m in messages]
    assert got == [("sensors/a", {"c": 1}), ("sensors/b", "two")]
    assert result["renewed"]["fence"] == result["held_fence"]
    assert result["again"]["fence"] == result["held_fence"] + 1
    assert result["error"] == "sql_error"


async def test_client_routes_under_trio(server: LiveServer) -> None:
    async with AsyncClient(server.url, ADMIN_TOKEN) as client:
        _check(await _flow(client, "trio-doc"))


async def test_client_routes_under_asyncio(server: LiveServer) -> None:
    async def main() -> dict[str, Any]:
        async with AsyncClient(server.url, ADMIN_TOKEN) as client:
            return await _flow(client, "asyncio-doc")

    _check(await trio.to_thread.run_sync(asyncio.run, main()))


async def test_blocking_client_leases_and_query(server: LiveServer) -> None:
    def run() -> tuple[Lease, Lease]:
        with Client(server.url, ADMIN_TOKEN) as client:
            client.create_document("sync-doc")
            first = client.acquire_lease("sync-doc", "r", 30, "a")
            with pytest.raises(SkaldClientError) as held:
                client.acquire_lease("sync-doc", "r", 30, "b")
            assert held.value.code == "lease_held"
            client.release_lease("sync-doc", first)
            return first, client.acquire_lease("sync-doc", "r", 30, "b")

    first, second = await trio.to_thread.run_sync(run)
    assert second["fence"] > first["fence"]


async def test_client_streams_webhooks_and_tokens(server: LiveServer) -> None:
    async with AsyncClient(server.url, ADMIN_TOKEN) as client:
        await client.create_document("rel")
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:

            async def consume() -> None:
                got.append(await client.stream_next("rel", "jobs"))

            nursery.start_soon(consume)
            hub = server.state.relay
            with trio.fail_after(10):
                while hub.waiting_on("rel\x00api\x00queue/jobs") != (1, 0):  # noqa: ASYNC110 - bounded poll
                    await trio.sleep(0.005)
            await client.stream_send("rel", "jobs", b"work")
        assert got == [b"work"]

        async with trio.open_nursery() as nursery:
            answers: list[bytes] = []

            async def respond() -> None:
                await client.stream_respond("rel", "calc", b"42")

            nursery.start_soon(respond)
            channels = server.state.relay_requests
            with trio.fail_after(10):
                while channels.waiting_on("rel\x00api\x00res/calc") != (0, 1):  # noqa: ASYNC110 - bounded poll
                    await trio.sleep(0.005)
            answers.append(await client.stream_request("rel", "calc", b"6*7"))
        assert answers == [b"42"]

        stored = await client.ingest_webhook("rel", "github", b'{"a": 1}', {"X-GitHub-Delivery": "d-1"})
        again = await client.ingest_webhook("rel", "github", b'{"a": 1}', {"X-GitHub-Delivery": "d-1"})
        assert again["id"] == stored["id"] and again["duplicate"] is True

        minted = await client.create_token(["rel:query.read"], label="reader", expires_in="1d")
        assert minted["token"].startswith("skd_")
        assert minted["id"] in [t["id"] for t in await client.list_tokens()]
        async with AsyncClient(server.url, minted["token"]) as reader:
            assert (await reader.query("rel", "SELECT 1"))["rows"] == [[1]]
            await client.revoke_token(minted["id"])
            with pytest.raises(SkaldClientError) as revoked:
                await reader.query("rel", "SELECT 1")
        assert revoked.value.status == 401
