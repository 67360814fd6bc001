"""The client library against a real server, under trio and under asyncio (in a thread)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any, TypedDict

import anyio
import pytest
import trio
from support.live import ADMIN_TOKEN, LiveServer

from skald.client import (
    AsyncClient,
    BadRequest,
    ChangesPage,
    Client,
    Conflict,
    Event,
    Forbidden,
    NotFound,
    ServerUnreachable,
    SkaldClientError,
    Unauthorized,
    is_invalid_sql,
)
from skald.db.connection import DocConnection
from skald.sync.changefeed import INCLUDED_CAPABILITY_TABLES


async def seed(server: LiveServer, db_id: str) -> None:
    async with server.client() as client:
        assert (await client.put(f"/api/v1/db/{db_id}")).status_code == 201

    def op(conn: DocConnection) -> None:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, bytes([i])) for i in range(5)])

    async with server.state.supervisor.open_document(db_id) as actor:
        await actor.write(op)


class Flow(TypedDict):
    docs: list[str]
    info: dict[str, Any]
    page: ChangesPage
    rest: ChangesPage
    seq: int
    errors: list[tuple[int, str]]


async def document_flow(client: AsyncClient, db_id: str, dest: Path) -> Flow:
    """Documents, changes page and snapshot; returns what the caller asserts on."""
    docs = [d["db_id"] for d in await client.list_documents()]
    info = await client.get_document(db_id)
    page = await client.changes(db_id, since=0, limit=3)
    rest = await client.changes(db_id, since=page["changes"][-1]["seq"])
    seq = await client.snapshot(db_id, dest)
    errors: list[tuple[int, str]] = []
    try:
        await client.get_document("missing")
    except NotFound as exc:
        errors.append((exc.status, exc.code))
    return {"docs": docs, "info": info, "page": page, "rest": rest, "seq": seq, "errors": errors}


def check_flow(result: Flow, db_id: str, dest: Path) -> None:
    assert db_id in result["docs"]
    assert result["info"]["db_id"] == db_id
    page, rest = result["page"], result["rest"]
    assert page["has_more"] is True and len(page["changes"]) == 3
    # every document carries the inbox and message tables; their schema entries are in the feed too
    ours = [c for c in page["changes"] + rest["changes"] if c["table"] not in INCLUDED_CAPABILITY_TABLES]
    assert [c["op"] for c in ours] == ["schema"] + ["insert"] * 5
    assert ours[-1]["row"] == {"id": 4, "v": {"$base64": "BA=="}}
    assert result["seq"] == rest["last_seq"]
    assert result["errors"] == [(404, "document_not_found")]
    copy = sqlite3.connect(dest)
    assert copy.execute("SELECT count(*) FROM t").fetchone() == (5,)
    copy.close()


async def test_flows_under_trio(server: LiveServer, tmp_path: Path) -> None:
    await seed(server, "notes")
    async with AsyncClient(server.url, ADMIN_TOKEN, max_reconnects=0) as client:
        check_flow(
            await document_flow(client, "notes", tmp_path / "a.sqlite"), "notes", tmp_path / "a.sqlite"
        )
        # follow the feed; closing the document ends the stream and max_reconnects=0 gives up
        seen: list[int] = []
        with pytest.raises(SkaldClientError) as info:
            async with aclosing(client.follow_changes("notes", since=0)) as feed:
                async for event in feed:
                    seen.append(event.data["seq"])
                    if len(seen) == 6:
                        server.state.supervisor.open_actors["notes"].stop("test")
        assert info.value.code == "reconnects_exhausted"
        assert seen == sorted(seen) and len(seen) >= 6  # later entries may already be on their way


async def test_flows_under_asyncio(server: LiveServer, tmp_path: Path) -> None:
    await seed(server, "notes")
    dest = tmp_path / "b.sqlite"

    async def main() -> tuple[Flow, list[str]]:
        async with AsyncClient(server.url, ADMIN_TOKEN) as client:
            result = await document_flow(client, "notes", dest)
            ops: list[str] = []
            async for event in client.follow_changes("notes", since=0):
                if event.data["table"] not in INCLUDED_CAPABILITY_TABLES:
                    ops.append(event.data["op"])
                if len(ops) == 6:
                    break
            return result, ops

    result, ops = await trio.to_thread.run_sync(asyncio.run, main())
    check_flow(result, "notes", dest)
    assert ops == ["schema"] + ["insert"] * 5


async def test_blocking_client_and_typed_errors(server: LiveServer, tmp_path: Path) -> None:
    await seed(server, "notes")
    reader = await server.mint_token("notes:query.read")

    def run() -> list[tuple[str, int, str]]:
        seen = []
        with Client(server.url, ADMIN_TOKEN) as client:
            assert client.changes("notes")["last_seq"] == client.snapshot("notes", tmp_path / "c.sqlite")
        for token, cls in ((None, Unauthorized), ("skd_wrong", Unauthorized), (reader, Forbidden)):
            with Client(server.url, token) as client, pytest.raises(cls) as info:
                client.changes("notes")
            seen.append((cls.__name__, info.value.status, info.value.code))
        with Client("http://127.0.0.1:9", ADMIN_TOKEN) as client, pytest.raises(ServerUnreachable) as down:
            client.list_documents()
        seen.append(("ServerUnreachable", down.value.status, down.value.code))
        return seen

    seen = await trio.to_thread.run_sync(run)
    assert seen == [
        ("Unauthorized", 401, "unauthenticated"),
        ("Unauthorized", 401, "token_invalid"),
        ("Forbidden", 403, "scope_denied"),
        ("ServerUnreachable", 0, "unreachable"),
    ]


async def until(condition: Callable[[], bool], seconds: float = 10) -> None:
    """Poll ``condition`` (bounded); works under trio and asyncio."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await anyio.sleep(0.01)
    raise AssertionError("condition not reached")


# ---- query, batch, watch, publish/subscribe, leases: one flow, run under trio and under asyncio ----


async def live_flow(client: AsyncClient, db_id: str, stop_document: Callable[[], None]) -> dict[str, Any]:
    """Everything a user does with the async client; ``stop_document`` closes the document on the
    server (its streams end), so the iterators must reconnect and resume."""
    out: dict[str, Any] = {}
    await client.create_document(db_id)
    await client.query(db_id, "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, data BLOB)")
    out["insert"] = await client.query(db_id, "INSERT INTO items (name, data) VALUES (?, ?)", ["a", b"\x00\x01"])
    out["select"] = await client.query(db_id, "SELECT id, name, data FROM items WHERE name = ?", ["a"])
    out["capped"] = await client.query(db_id, "SELECT 1 UNION ALL SELECT 2", max_rows=1)
    out["batch"] = await client.batch(
        db_id,
        [
            ("INSERT INTO items (name) VALUES (?)", ["b"]),
            {"sql": "UPDATE items SET name = 'B' WHERE name = ?", "args": ["b"]},
        ],
    )
    try:
        await client.batch(db_id, ["INSERT INTO items (name) VALUES ('c')", "INSERT INTO nope VALUES (1)"])
    except BadRequest as exc:
        out["batch_error"] = (exc.code, is_invalid_sql(exc))
    out["count_after_failed_batch"] = (await client.query(db_id, "SELECT count(*) FROM items"))["rows"]
    try:
        await client.query(db_id, "SELEC 1")
    except BadRequest as exc:
        out["sql_error"] = (exc.status, exc.code, is_invalid_sql(exc))

    # watch: snapshot, an update after a write, the document closing (reconnect with the result
    # hash: nothing repeated), another update after a write, then leave the loop
    watched: list[tuple[str, Any]] = []
    async with client.watch(db_id, "SELECT count(*) AS n FROM items") as events:
        async for event in events:
            watched.append((event.event, event.data["rows"]))
            if len(watched) == 1:
                await client.query(db_id, "INSERT INTO items (name) VALUES ('w1')")
            elif len(watched) == 2:
                stop_document()
                await client.query(db_id, "INSERT INTO items (name) VALUES ('w2')")
            else:
                break
    out["watched"] = watched

    # publish and subscribe: JSON, text and bytes; the document closes mid-stream and the
    # subscription resumes with Last-Event-ID (no repeat, no gap)
    published = [
        await client.publish(db_id, "sensors/1", {"t": 21.5}),
        await client.publish(db_id, "sensors/2", text="hello", content_type="text/plain"),
        await client.publish(db_id, "other/x", data=b"\xff"),
    ]
    again = await client.publish(db_id, "sensors/1", {"t": 0}, dedupe_key="k1")
    dup = await client.publish(db_id, "sensors/1", {"t": 1}, dedupe_key="k1")
    out["dedupe"] = (dup["id"] == again["id"], dup.get("deduplicated"))
    out["published_ids"] = [p["id"] for p in published] + [again["id"]]
    got: list[tuple[str, Any]] = []
    async with client.subscribe(db_id, "sensors/+", since_id=0, heartbeat=0.2) as messages:
        async for event in messages:
            got.append((event.id, event.data.get("payload", event.data.get("payload_text"))))
            if len(got) == 2:
                stop_document()
                await client.publish(db_id, "sensors/3", {"late": True})
            if len(got) == 4:
                break
    out["subscribed"] = got
    poll = await client.poll_messages(db_id, "other/#", since_id=0)
    out["poll"] = [(m["topic"], m.get("payload_base64")) for m in poll["messages"]]

    # leases: renewed while held, fence guards writes, released on exit, the next fence is higher
    async with client.lease(db_id, "jobs/nightly", ttl_seconds=2, renew_every=0.05) as lease:
        first_expiry = lease["expires_at"]
        await until(lambda: lease["expires_at"] != first_expiry)
        fence = lease["fence"]
        await client.query(db_id, "INSERT INTO items (name) VALUES ('fenced')", fence=lease)
        try:
            await client.acquire_lease(db_id, "jobs/nightly", owner="someone-else")
        except Conflict as exc:
            out["held"] = exc.code
    async with client.lease(db_id, "jobs/nightly") as second:
        out["fences"] = (fence, second["fence"])
        try:
            await client.query(
                db_id, "INSERT INTO items (name) VALUES ('stale')", fence={"resource": "jobs/nightly", "token": fence}
            )
        except Conflict as exc:
            out["stale"] = exc.code
    manual = await client.acquire_lease(db_id, "jobs/manual", ttl_seconds=5, owner="me")
    renewed = await client.renew_lease(db_id, manual, ttl_seconds=10)
    released = await client.release_lease(db_id, manual)
    out["manual"] = (manual["owner"], renewed["ttl_seconds"], released.get("released"), "lease_token" in manual)
    out["names"] = (await client.query(db_id, "SELECT name FROM items ORDER BY id"))["rows"]
    return out


def check_live_flow(out: dict[str, Any]) -> None:
    assert out["insert"]["changes"] == 1 and out["insert"]["last_insert_rowid"] == 1
    assert out["select"]["columns"] == ["id", "name", "data"]
    assert out["select"]["rows"] == [[1, "a", {"$base64": "AAE="}]]
    assert out["capped"]["rows"] == [[1]] and out["capped"]["truncated"] is True
    assert [r["changes"] for r in out["batch"]] == [1, 1]
    assert out["batch_error"] == ("sql_error", True)
    assert out["count_after_failed_batch"] == [[2]]  # all or nothing
    assert out["sql_error"] == (400, "sql_error", True)
    assert out["watched"] == [("snapshot", [[2]]), ("update", [[3]]), ("update", [[4]])]
    assert out["dedupe"] == (True, True)
    one, two, _other, first_dedupe = out["published_ids"]
    assert out["subscribed"] == [
        (str(one), {"t": 21.5}),
        (str(two), "hello"),
        (str(first_dedupe), {"t": 0}),
        (str(first_dedupe + 1), {"late": True}),
    ]
    assert out["poll"] == [("other/x", "/w==")]
    assert out["held"] == "lease_held"
    first, second = out["fences"]
    assert second > first
    assert out["stale"] == "stale_fence"
    assert out["manual"] == ("me", 10.0, True, True)
    assert out["names"] == [["a"], ["B"], ["w1"], ["w2"], ["fenced"]]


async def test_live_flow_under_trio(server: LiveServer) -> None:
    def stop() -> None:
        server.state.supervisor.open_actors["live"].stop("test")

    async with AsyncClient(server.url, ADMIN_TOKEN, reconnect_delay=0.01) as client:
        check_live_flow(await live_flow(client, "live", stop))


async def test_live_flow_under_asyncio(server: LiveServer) -> None:
    def stop() -> None:  # called from the asyncio thread: the server lives in trio
        trio.from_thread.run_sync(lambda: server.state.supervisor.open_actors["live"].stop("test"))

    async def main() -> dict[str, Any]:
        async with AsyncClient(server.url, ADMIN_TOKEN, reconnect_delay=0.01) as client:
            return await live_flow(client, "live", stop)

    check_live_flow(await trio.to_thread.run_sync(asyncio.run, main()))


async def test_leaving_streams_early_closes_them(server: LiveServer) -> None:
    """``break`` out of an ``async with`` stream, or cancel it: the server sees the stream end and
    no generator is left for the garbage collector (pytest turns its warning into an error)."""
    await seed(server, "notes")
    hub = server.state.query_watch_hub
    async with AsyncClient(server.url, ADMIN_TOKEN) as client:
        for _ in range(3):
            async with client.watch("notes", "SELECT count(*) FROM t") as events:
                async for _event in events:
                    break
            async with aclosing(client.follow_changes("notes")) as feed:
                async for _event in feed:
                    break
            with trio.move_on_after(0.05):
                async with client.subscribe("notes", "#") as messages:
                    async for _event in messages:
                        pass
        await until(lambda: not hub._users)


async def test_blocking_client_lease_and_batch(server: LiveServer) -> None:
    await seed(server, "notes")

    def run() -> tuple[int, int, list[int], str]:
        import time

        with Client(server.url, ADMIN_TOKEN) as client:
            with client.lease("notes", "jobs/x", ttl_seconds=2, renew_every=0.05) as lease:
                first_expiry = lease["expires_at"]
                for _ in range(1000):  # bounded: the renewing thread updates the lease
                    if lease["expires_at"] != first_expiry:
                        break
                    time.sleep(0.01)
                renewed = lease["expires_at"] != first_expiry
                results = client.batch("notes", ["DELETE FROM t WHERE id = 0"], fence=lease)
                first = lease["fence"]
            with client.lease("notes", "jobs/x") as again:
                second = again["fence"]
            with pytest.raises(Conflict) as stale:
                client.query("notes", "DELETE FROM t", fence={"resource": "jobs/x", "token": first})
            assert renewed
            return first, second, [r["changes"] for r in results], stale.value.code

    first, second, changes, code = await trio.to_thread.run_sync(run)
    assert second > first and changes == [1] and code == "stale_fence"


# ---- the options both clients share: follow_changes(reconnect=), subscribe(idle_timeout=) ----


async def options_flow(client: AsyncClient, db_id: str, stop_document: Callable[[], None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # reconnect=True (the default): the document closes mid-feed, the feed resumes after the last
    # sequence it yielded (nothing repeated) and a later write still arrives
    seqs: list[int] = []
    rows: list[int] = []
    async with client.follow_changes(db_id, since=0) as feed:
        async for event in feed:
            seqs.append(int(event.id))
            if event.data["table"] == "t" and event.data["op"] == "insert":
                rows.append(event.data["row"]["id"])
                if rows[-1] == 4:
                    stop_document()
                    await client.query(db_id, "INSERT INTO t VALUES (5, NULL)")
                if rows[-1] == 5:
                    break
    out["resumed"] = (rows, seqs == sorted(set(seqs)))

    # reconnect=False: the end of the stream (the document closing) is raised, not retried
    await client.query(db_id, "INSERT INTO t VALUES (6, NULL)")
    got: list[int] = []
    try:
        async with client.follow_changes(db_id, since=seqs[-1], reconnect=False) as feed:
            async for event in feed:
                got.append(event.data["row"]["id"])
                stop_document()
    except SkaldClientError as exc:
        out["no_reconnect"] = (got, exc.code)

    # idle_timeout: a message, then "idle" once no message came for that long (the server's
    # heartbeats wake the client), then the next message
    await client.publish(db_id, "jobs/1", {"n": 1})
    events: list[Event] = []
    async with client.subscribe(db_id, "jobs/#", since_id=0, heartbeat=0.1, idle_timeout=1.0) as stream:
        async for event in stream:
            events.append(event)
            if len(events) == 2:
                await client.publish(db_id, "jobs/2", {"n": 2})
            if len(events) == 3:
                break
    out["idle"] = [(e.event, e.data["payload"] if e.data else e.data, e.id) for e in events]
    out["message_ids"] = [m["id"] for m in (await client.poll_messages(db_id, "jobs/#", since_id=0))["messages"]]
    return out


def check_options_flow(out: dict[str, Any]) -> None:
    assert out["resumed"] == ([0, 1, 2, 3, 4, 5], True)
    assert out["no_reconnect"] == ([6], "stream_ended")
    first, second = out["message_ids"]
    assert out["idle"] == [("message", {"n": 1}, str(first)), ("idle", None, ""), ("message", {"n": 2}, str(second))]


@pytest.mark.parametrize("runner", ["trio", "asyncio"])
async def test_stream_options_of_the_async_client(server: LiveServer, runner: str) -> None:
    await seed(server, "notes")

    def stop() -> None:
        server.state.supervisor.open_actors["notes"].stop("test")

    async def main(stop_document: Callable[[], None]) -> dict[str, Any]:
        async with AsyncClient(server.url, ADMIN_TOKEN, reconnect_delay=0.01) as client:
            return await options_flow(client, "notes", stop_document)

    if runner == "trio":
        out = await main(stop)
    else:  # the asyncio loop runs in a thread; the server lives in trio
        out = await trio.to_thread.run_sync(asyncio.run, main(lambda: trio.from_thread.run_sync(stop)))
    check_options_flow(out)
