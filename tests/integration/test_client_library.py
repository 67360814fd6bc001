"""The client library against a real server, under trio and under asyncio (in a thread)."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import aclosing
from pathlib import Path

import pytest
import trio
from support.live import ADMIN_TOKEN, LiveServer

from skald.changefeed import INCLUDED_CAPABILITY_TABLES
from skald.client import (
    AsyncClient,
    Client,
    Forbidden,
    NotFound,
    ServerUnreachable,
    SkaldClientError,
    Unauthorized,
)
from skald.connection import DocConnection


async def seed(server: LiveServer, db_id: str) -> None:
    async with server.client() as client:
        assert (await client.put(f"/api/v1/db/{db_id}")).status_code == 201

    def op(conn: DocConnection) -> None:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, bytes([i])) for i in range(5)])

    async with server.state.supervisor.open_document(db_id) as actor:
        await actor.write(op)


async def document_flow(client: AsyncClient, db_id: str, dest: Path) -> dict[str, object]:
    """Documents, changes page and snapshot; returns what the caller asserts on."""
    docs = [d["db_id"] for d in await client.list_documents()]
    info = await client.get_document(db_id)
    page = await client.changes(db_id, since=0, limit=3)
    rest = await client.changes(db_id, since=page["changes"][-1]["seq"])
    seq = await client.snapshot(db_id, dest)
    errors = []
    try:
        await client.get_document("missing")
    except NotFound as exc:
        errors.append((exc.status, exc.code))
    return {"docs": docs, "info": info, "page": page, "rest": rest, "seq": seq, "errors": errors}


def check_flow(result: dict[str, object], db_id: str, dest: Path) -> None:
    assert db_id in result["docs"]  # type: ignore[operator]
    assert result["info"]["db_id"] == db_id  # type: ignore[index]
    page, rest = result["page"], result["rest"]
    assert page["has_more"] is True and len(page["changes"]) == 3  # type: ignore[index]
    # every document carries the inbox and message tables; their schema entries are in the feed too
    ours = [c for c in page["changes"] + rest["changes"] if c["table"] not in INCLUDED_CAPABILITY_TABLES]  # type: ignore[index,operator]
    assert [c["op"] for c in ours] == ["schema"] + ["insert"] * 5
    assert ours[-1]["row"] == {"id": 4, "v": {"$base64": "BA=="}}
    assert result["seq"] == rest["last_seq"]  # type: ignore[index]
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

    async def main() -> tuple[dict[str, object], list[str]]:
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
