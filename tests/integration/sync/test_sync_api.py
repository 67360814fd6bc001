from __future__ import annotations

import sqlite3
from contextlib import aclosing
from pathlib import Path

import trio
from httpx_sse import aconnect_sse
from support.live import LiveServer

from skald.db.connection import DocConnection


async def _write(server: LiveServer, db_id: str, *sql: str) -> None:
    def op(conn: DocConnection) -> None:
        for statement in sql:
            conn.execute(statement)

    async with server.state.supervisor.open_document(db_id) as actor:
        await actor.write(op)


async def test_snapshot_carries_the_sequence_it_includes(server: LiveServer, tmp_path: Path) -> None:
    async with server.client() as client:
        assert (await client.put("/api/v1/db/notes")).status_code == 201
        await _write(
            server, "notes", "CREATE TABLE t (id INTEGER PRIMARY KEY, v)", "INSERT INTO t VALUES (1, 'a')"
        )
        r = await client.get("/api/v1/db/notes/snapshot")
        assert r.status_code == 200
        seq = int(r.headers["Skald-Change-Seq"])
        page = (await client.get("/api/v1/db/notes/changes", params={"since": 0})).json()
        assert seq == page["last_seq"] > 0
        (tmp_path / "copy.sqlite").write_bytes(r.content)
        copy = sqlite3.connect(tmp_path / "copy.sqlite")
        assert copy.execute("SELECT id, v FROM t").fetchall() == [(1, "a")]
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        copy.close()
        await _write(server, "notes", "INSERT INTO t VALUES (2, 'b')")
        later = (await client.get("/api/v1/db/notes/changes", params={"since": seq})).json()
        assert [(c["op"], c["row"]) for c in later["changes"]] == [("insert", {"id": 2, "v": "b"})]
        assert later["has_more"] is False and later["reset"] is False


async def test_changes_page_limit_and_validation(server: LiveServer) -> None:
    async with server.client() as client:
        await client.put("/api/v1/db/notes")
        await _write(
            server, "notes", "CREATE TABLE t (v)", *[f"INSERT INTO t VALUES ({i})" for i in range(5)]
        )
        page = (await client.get("/api/v1/db/notes/changes", params={"since": 0, "limit": 2})).json()
        assert len(page["changes"]) == 2 and page["has_more"] is True
        bad = await client.get("/api/v1/db/notes/changes", params={"since": "x"})
        assert bad.status_code == 400 and bad.json()["code"] == "validation_failed"
        future = (await client.get("/api/v1/db/notes/changes", params={"since": 10_000})).json()
        assert future["reset"] is True
        missing = await client.get("/api/v1/db/nope/changes")
        assert missing.status_code == 404


async def test_sync_read_scope_required(server: LiveServer) -> None:
    async with server.client() as admin:
        await admin.put("/api/v1/db/notes")
    token = await server.mint_token("notes:query.read")
    async with server.client(token) as client:
        r = await client.get("/api/v1/db/notes/changes")
        assert r.status_code == 403 and r.json()["code"] == "scope_denied"
        r = await client.get("/api/v1/db/notes/snapshot")
        assert r.status_code == 403
    token = await server.mint_token("notes:sync.read")
    async with server.client(token) as client:
        assert (await client.get("/api/v1/db/notes/snapshot")).status_code == 200


async def test_change_stream_announces_new_commits_and_resets(server: LiveServer) -> None:
    async with server.client() as client:
        await client.put("/api/v1/db/notes")
        await _write(server, "notes", "CREATE TABLE t (v)")
        since = (await client.get("/api/v1/db/notes/changes")).json()["last_seq"]
        seen: list[dict[str, object]] = []
        async with aconnect_sse(
            client, "GET", "/api/v1/db/notes/changes/stream", params={"since": since}
        ) as source:
            assert source.response.status_code == 200
            async with aclosing(source.aiter_sse()) as events:
                await _write(server, "notes", "INSERT INTO t VALUES (1)")
                await _write(server, "notes", "UPDATE t SET v = 2")
                await _write(server, "notes", "DELETE FROM t")
                with trio.fail_after(10):
                    async for sse in events:
                        if sse.event == "change":
                            seen.append(sse.json())
                            assert int(sse.id) == seen[-1]["seq"]
                        if len(seen) == 3:
                            # closing the document ends the stream (the client sees a clean end)
                            server.state.supervisor.open_actors["notes"].stop("test")
        assert [c["op"] for c in seen] == ["insert", "update", "delete"]
        async with (
            aconnect_sse(
                client, "GET", "/api/v1/db/notes/changes/stream", params={"since": 99_999}
            ) as source,
            aclosing(source.aiter_sse()) as events,
        ):
            names = [sse.event async for sse in events]  # the server ends the stream after reset
        assert names == ["reset"]


async def test_replica_takes_a_new_snapshot_after_a_reset(server: LiveServer, tmp_path: Path) -> None:
    from support.live import ADMIN_TOKEN

    from skald.client import Client
    from skald.sync.replica import pull

    server.state.sync.retention = 5  # applies to actors started from now on
    async with server.client() as client:
        await client.put("/api/v1/db/notes")
    await _write(server, "notes", "CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    replica = tmp_path / "r.sqlite"
    messages: list[str] = []

    def sync() -> int:
        with Client(server.url, ADMIN_TOKEN) as client:
            return pull(client, "notes", replica, report=messages.append)

    await trio.to_thread.run_sync(sync)
    async with server.state.supervisor.open_document("notes") as actor:
        for i in range(600):  # the feed is pruned to 5 entries every 500 write ops

            def insert(conn: DocConnection, i: int = i) -> None:
                conn.execute("INSERT INTO t VALUES (?, ?)", (i, f"v{i}"))

            await actor.write(insert)
    seq = await trio.to_thread.run_sync(sync)
    assert "change feed was reset: taking a new snapshot" in messages
    assert sum(m.startswith("snapshot of notes") for m in messages) == 2
    copy = sqlite3.connect(replica)
    assert copy.execute("SELECT count(*), max(v) FROM t").fetchone() == (600, "v99")
    assert not {"tokens", "audit_log", "documents"} & {
        r[0] for r in copy.execute("SELECT name FROM sqlite_master")
    }
    copy.close()
    async with server.client() as client:
        assert seq == (await client.get("/api/v1/db/notes/changes", params={"since": seq})).json()["last_seq"]


async def test_change_stream_resumes_from_last_event_id(server: LiveServer) -> None:
    async with server.client() as client:
        await client.put("/api/v1/db/notes")
        await _write(
            server, "notes", "CREATE TABLE t (v)", "INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)"
        )
        last = (await client.get("/api/v1/db/notes/changes")).json()["last_seq"]
        headers = {"Last-Event-ID": str(last - 1)}
        ids: list[str] = []
        stream = aconnect_sse(client, "GET", "/api/v1/db/notes/changes/stream", headers=headers)
        async with stream as source, aclosing(source.aiter_sse()) as events:
            with trio.fail_after(10):
                async for sse in events:
                    ids.append(sse.id)
                    server.state.supervisor.open_actors["notes"].stop("test")  # ends the stream
        assert ids == [str(last)]
