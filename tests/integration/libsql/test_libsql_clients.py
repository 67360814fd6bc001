"""The real libSQL clients against a live skald: ``@libsql/client`` over http:// and ws://, and
``libsql-client`` (PyPI) over ws:// (its http:// mode speaks the retired v1 API)."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from support.libsql import LIBSQL_DIR, by_step, node, parse_lines, run_node, run_python_client
from support.live import ADMIN_TOKEN, LiveServer, make_settings, start_live_server

DOC = "hrana"


def urls(server: LiveServer) -> dict[str, str]:
    base = f"{server.url}/api/v1/db/{DOC}/libsql"
    return {
        "http": base + "/",
        "http-no-slash": base,  # the clients resolve v2/pipeline relative to it: …/db/{db_id}/v2/pipeline
        "ws": base.replace("http://", "ws://"),
    }


@pytest.fixture
async def doc(server: LiveServer) -> LiveServer:
    async with server.client() as client:
        assert (await client.put(f"/api/v1/db/{DOC}")).status_code == 201
    return server


@pytest.mark.parametrize("kind", ["http", "http-no-slash", "ws"])
async def test_node_client_execute_batch_transactions_values_errors(doc: LiveServer, kind: str) -> None:
    steps = by_step(await run_node("basics", urls(doc)[kind], ADMIN_TOKEN))
    assert steps["insert"] == {"step": "insert", "rowsAffected": 1, "lastInsertRowid": "1n"}
    assert steps["named"]["row"] == {"s": 5, "c": "x"}
    select = steps["select"]
    assert select["exact"] is True and select["big"] == f"{2**62 + 7}n"
    assert select["data"] == "0001feff" and select["note"] == "héllo" and select["ratio"] == 0.25
    assert steps["batch_write"]["affected"] == [1, 1]
    # a write batch is one transaction: the failing step takes the first one down with it
    assert steps["batch_atomic"]["error"]["code"] == "SQLITE_CONSTRAINT_PRIMARYKEY"
    assert steps["batch_atomic"]["b3_rows"] == "0n"
    assert steps["batch_read"] == {"step": "batch_read", "n": "3n", "m": "3n"}
    assert steps["batch_read_refuses_write"]["error"]["code"] == "HRANA_READ_ONLY_TRANSACTION"
    assert steps["rollback"] == {"step": "rollback", "inside": "1n", "after": "0n"}
    assert steps["commit"]["committed"] == "1n"
    assert steps["constraint"]["error"]["code"] == "SQLITE_CONSTRAINT_PRIMARYKEY"
    assert steps["syntax"]["error"]["code"] == "SQLITE_ERROR"
    assert steps["forbidden"]["error"]["code"] == "STATEMENT_FORBIDDEN"
    assert steps["sequence"]["seq"] == "2n"
    async with doc.client() as client:  # what the client wrote is what /query reads
        r = await client.post(f"/api/v1/db/{DOC}/query", json={"sql": "SELECT big FROM items WHERE id = 1"})
        assert r.json()["rows"] == [[{"$int": str(2**62 + 7)}]]


async def test_python_client_over_websocket(doc: LiveServer) -> None:
    steps = by_step(await run_python_client(urls(doc)["ws"], ADMIN_TOKEN))
    assert steps["insert"]["rows_affected"] == 1 and steps["insert"]["last_insert_rowid"] == 1
    assert steps["select"]["exact"] is True and steps["select"]["data"] == "00ff10"
    assert steps["batch"]["affected"] == [1, 1]
    assert steps["rollback"] == {"step": "rollback", "inside": 1, "after": 0}
    assert steps["constraint"]["code"] == "SQLITE_CONSTRAINT_PRIMARYKEY"
    assert steps["forbidden"]["code"] == "STATEMENT_FORBIDDEN"


@pytest.mark.parametrize("kind", ["http", "ws"])
async def test_token_without_write_scope_cannot_write(doc: LiveServer, kind: str) -> None:
    async with doc.client() as client:
        for sql in ("CREATE TABLE items (id INTEGER PRIMARY KEY, note)", "INSERT INTO items (note) VALUES ('x')"):
            assert (await client.post(f"/api/v1/db/{DOC}/query", json={"sql": sql})).status_code == 200
    reader = await doc.mint_token(f"{DOC}:query.read")
    steps = by_step(await run_node("readonly", urls(doc)[kind], reader))
    assert steps["read"]["ok"] == "1n"
    assert steps["write"]["error"]["code"] == "SCOPE_DENIED"
    assert steps["batch"]["error"]["code"] == "SCOPE_DENIED"
    assert steps["transaction"]["error"]["code"] == "SCOPE_DENIED"
    async with doc.client() as client:
        r = await client.post(f"/api/v1/db/{DOC}/query", json={"sql": "SELECT count(*) FROM items WHERE note = 'nope'"})
        assert r.json()["rows"] == [[0]]


async def test_token_for_another_document_is_refused(doc: LiveServer) -> None:
    other = await doc.mint_token("elsewhere:query.admin")
    lines = parse_lines((await trio.run_process(
        [node(), str(LIBSQL_DIR / "client.mjs"), "readonly", urls(doc)["ws"], other],
        cwd=LIBSQL_DIR, capture_stdout=True, stderr=subprocess.DEVNULL, check=False)).stdout)
    assert lines and all("error" in line or "fatal" in line for line in lines), lines


@pytest.fixture
async def short_txn_server(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[LiveServer]:
    live = await start_live_server(nursery, make_settings(tmp_path / "data", libsql_transaction_timeout_seconds=1.0))
    async with live.client() as client:
        assert (await client.put(f"/api/v1/db/{DOC}")).status_code == 201
    yield live
    await live.stop()


async def test_transaction_timeout_rolls_back_and_frees_the_writer(short_txn_server: LiveServer) -> None:
    server = short_txn_server
    await run_node("basics", urls(server)["ws"], ADMIN_TOKEN)
    proc = await trio.lowlevel.open_process(
        [node(), str(LIBSQL_DIR / "client.mjs"), "hold", urls(server)["ws"], ADMIN_TOKEN],
        cwd=LIBSQL_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None and proc.stdin is not None
    output = b""
    try:
        with trio.fail_after(20):
            while b'"began"' not in output:
                chunk = await proc.stdout.receive_some()
                assert chunk, output
                output += chunk
            # The transaction holds the writer: this write waits behind it until the timeout frees it.
            async with server.client() as client:
                r = await client.post(f"/api/v1/db/{DOC}/query",
                                      json={"sql": "INSERT INTO items (note) VALUES ('queued')"})
                assert r.status_code == 200, r.text
            await proc.stdin.send_all(b"commit\n")
            await proc.stdin.aclose()
            while output.count(b"\n") < 2:
                chunk = await proc.stdout.receive_some()
                assert chunk, output
                output += chunk
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stdout.aclose()
        await proc.stdin.aclose()
    commit = by_step(parse_lines(output))["commit"]
    assert commit["error"]["code"] == "TRANSACTION_TIMEOUT", commit
    async with server.client() as client:
        r = await client.post(f"/api/v1/db/{DOC}/query",
                              json={"sql": "SELECT note FROM items WHERE note IN ('held', 'queued')"})
        assert r.json()["rows"] == [["queued"]]


async def test_http_client_uses_v2_pipeline_and_batons(doc: LiveServer) -> None:
    """What the clients rely on, at the wire: batons chain requests on one stream."""
    async with doc.client() as client:
        path = f"/api/v1/db/{DOC}/libsql/v2/pipeline"
        r = await client.post(path, json={"baton": None, "requests": [
            {"type": "execute", "stmt": {"sql": "BEGIN"}},
            {"type": "execute", "stmt": {"sql": "CREATE TABLE b (x)"}},
            {"type": "get_autocommit"},
        ]})
        body = r.json()
        assert r.status_code == 200 and all(res["type"] == "ok" for res in body["results"]), body
        assert body["results"][2]["response"]["is_autocommit"] is False
        baton = body["baton"]
        # another token cannot take the stream over
        other = await doc.mint_token(f"{DOC}:query.admin")
        async with doc.client(other) as intruder:
            stolen = await intruder.post(path, json={"baton": baton, "requests": [{"type": "get_autocommit"}]})
        assert stolen.status_code == 404 and stolen.json()["code"] == "hrana_stream_not_found"
        assert stolen.headers["content-type"] == "application/problem+json"
        r = await client.post(path, json={"baton": baton, "requests": [
            {"type": "execute", "stmt": {"sql": "COMMIT"}}, {"type": "close"}]})
        assert r.json()["baton"] is None and r.json()["results"][0]["type"] == "ok"
        reused = await client.post(path, json={"baton": baton, "requests": []})
        assert reused.status_code == 404 and reused.json()["code"] == "hrana_stream_not_found"
        bad = await client.post(path, json={"baton": None, "requests": "nope"})
        assert bad.status_code == 400 and bad.json()["code"] == "hrana_protocol_error"
        anonymous = await httpx.AsyncClient(base_url=doc.url).__aenter__()
        try:
            assert (await anonymous.post(path, json={"baton": None, "requests": []})).status_code == 401
            assert (await anonymous.get(f"/api/v1/db/{DOC}/libsql/v3")).status_code == 200
            plain = await anonymous.get(f"/api/v1/db/{DOC}/libsql")  # the WebSocket endpoint, over HTTP
            assert plain.status_code == 400 and plain.headers["content-type"] == "application/problem+json"
        finally:
            await anonymous.aclose()


@pytest.fixture
async def long_txn_server(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[LiveServer]:
    live = await start_live_server(nursery, make_settings(tmp_path / "data", libsql_transaction_timeout_seconds=600))
    async with live.client() as client:
        assert (await client.put(f"/api/v1/db/{DOC}")).status_code == 201
        create = {"sql": "CREATE TABLE items (id INTEGER PRIMARY KEY, note)"}
        assert (await client.post(f"/api/v1/db/{DOC}/query", json=create)).status_code == 200
    yield live
    await live.stop()


async def test_a_client_that_vanishes_mid_transaction_frees_the_writer(long_txn_server: LiveServer) -> None:
    """Killing the client drops its WebSocket: its transaction rolls back now, not after the (long) timeout."""
    server = long_txn_server
    proc = await trio.lowlevel.open_process(
        [node(), str(LIBSQL_DIR / "client.mjs"), "hold", urls(server)["ws"], ADMIN_TOKEN],
        cwd=LIBSQL_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        output = b""
        with trio.fail_after(60):  # a hang guard, far below the 600 s transaction timeout
            while b'"began"' not in output:
                chunk = await proc.stdout.receive_some()
                assert chunk, output
                output += chunk
            proc.kill()
            await proc.wait()
            async with server.client() as client:
                insert = {"sql": "INSERT INTO items (note) VALUES ('after')"}
                r = await client.post(f"/api/v1/db/{DOC}/query", json=insert)
                assert r.status_code == 200, r.text
                r = await client.post(f"/api/v1/db/{DOC}/query", json={"sql": "SELECT note FROM items"})
                assert r.json()["rows"] == [["after"]]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stdout.aclose()
        await proc.stdin.aclose()
