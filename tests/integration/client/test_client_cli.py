"""The client CLI (config, query guard, sync pull/status) against a real server."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import trio
from support.live import ADMIN_TOKEN, LiveServer

from skald.cli import main
from skald.db.connection import DocConnection


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("SKALD_URL", "SKALD_TOKEN", "SKALD_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "config"


async def skald(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what the server logged so far
    code = await trio.to_thread.run_sync(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_config_profiles_and_env(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert (await skald(capsys, "config", "set", "url", "http://a:1"))[0] == 0
    assert (await skald(capsys, "config", "set", "token", "skd_secret_value"))[0] == 0
    assert (await skald(capsys, "config", "get", "url"))[1].strip() == "http://a:1"
    listed = (await skald(capsys, "config", "list"))[1]
    assert "url = http://a:1" in listed and "skd_secret_value" not in listed
    assert (await skald(capsys, "config", "set", "url", "http://b:2", "--profile", "prod"))[0] == 0
    assert (await skald(capsys, "config", "profiles", "use", "prod"))[0] == 0
    profiles = (await skald(capsys, "config", "profiles", "list"))[1]
    assert "* prod  http://b:2" in profiles and "  default  http://a:1" in profiles
    monkeypatch.setenv("SKALD_PROFILE", "default")
    assert (await skald(capsys, "config", "get", "url"))[1].strip() == "http://a:1"


async def test_clear_one_line_errors(
    server: LiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    code, _, err = await skald(capsys, "query", "notes", "SELECT 1")
    assert code == 2 and err.startswith("skald: no server configured") and err.count("\n") == 1
    monkeypatch.setenv("SKALD_URL", server.url)
    monkeypatch.setenv("SKALD_TOKEN", "skd_not_a_real_token")
    async with server.client() as client:
        await client.put("/api/v1/db/notes")
    code, _, err = await skald(capsys, "sync", "pull", "notes", "--to", str(tmp_path / "r.sqlite"))
    assert code == 1 and err.startswith("skald: 401 token_invalid: ") and err.count("\n") == 1
    monkeypatch.setenv("SKALD_URL", "http://127.0.0.1:9")
    code, _, err = await skald(capsys, "query", "notes", "SELECT 1")
    assert code == 3 and err.startswith("skald: unreachable: ") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("sql", "writes"),
    [
        ("SELECT * FROM t", False),
        ("  -- comment\n select 'DELETE' from t", False),
        ("WITH x AS (SELECT 1) SELECT * FROM x", False),
        ("PRAGMA table_info(t)", False),  # a read-only PRAGMA with an argument runs without --write
        ("PRAGMA user_version", False),
        ("EXPLAIN QUERY PLAN SELECT * FROM t", False),
        ("PRAGMA user_version = 3", True),
        ("WITH x AS (SELECT 1) DELETE FROM t", True),
        ("INSERT INTO t VALUES (1, 'x')", True),
        ("update t set v = 1", True),
        ("CREATE TABLE u (a)", True),
    ],
)
async def test_write_guard_asks_the_server(
    server: LiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, sql: str, writes: bool
) -> None:
    """The guard is the server's own statement classification, not a guess from the SQL text."""
    await use_server(server, monkeypatch)
    code, _, err = await skald(capsys, "query", "notes", sql)
    if writes:
        assert (code, err) == (1, "skald: 400 not_read_only: this statement writes: add --write to run it\n")
        assert (await skald(capsys, "query", "notes", sql, "--write"))[0] == 0
    else:
        assert code == 0, err


async def test_sync_pull_and_status(
    server: LiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with server.client() as client:
        await client.put("/api/v1/db/notes")

    def op(conn: DocConnection) -> None:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(50)])

    async with server.state.supervisor.open_document("notes") as actor:
        await actor.write(op)
    assert (await skald(capsys, "config", "set", "url", server.url))[0] == 0
    assert (await skald(capsys, "config", "set", "token", ADMIN_TOKEN))[0] == 0
    replica = tmp_path / "notes.sqlite"
    code, out, _ = await skald(capsys, "sync", "pull", "notes", "--to", str(replica))
    assert code == 0 and "notes at sequence" in out
    async with server.state.supervisor.open_document("notes") as actor:
        await actor.write(lambda conn: conn.execute("DELETE FROM t WHERE id < 10"))
    code, out, _ = await skald(capsys, "sync", "pull", "notes", "--to", str(replica))
    conn = sqlite3.connect(replica)
    assert conn.execute("SELECT count(*), min(id) FROM t").fetchone() == (40, 10)
    conn.close()
    code, out, _ = await skald(capsys, "sync", "status", "--to", str(replica))
    assert code == 0 and "lag:        0 change(s)" in out and f"endpoint:   {server.url}" in out
    assert "profile:    default" in out and "last error: -" in out


async def test_sync_pull_refuses_to_overwrite_other_files(
    server: LiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with server.client() as client:
        await client.put("/api/v1/db/notes")
        await client.put("/api/v1/db/other")
    monkeypatch.setenv("SKALD_URL", server.url)
    monkeypatch.setenv("SKALD_TOKEN", ADMIN_TOKEN)
    mine = tmp_path / "mine.sqlite"
    conn = sqlite3.connect(mine)
    conn.execute("CREATE TABLE precious (x)")
    conn.close()
    code, _, err = await skald(capsys, "sync", "pull", "notes", "--to", str(mine))
    assert code == 1 and "is not a skald replica" in err
    conn = sqlite3.connect(mine)
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("precious",)]
    conn.close()
    replica = tmp_path / "notes.sqlite"
    assert (await skald(capsys, "sync", "pull", "notes", "--to", str(replica)))[0] == 0
    code, _, err = await skald(capsys, "sync", "pull", "other", "--to", str(replica))
    assert code == 1 and "is a replica of notes, not other" in err


async def use_server(server: LiveServer, monkeypatch: pytest.MonkeyPatch, token: str = ADMIN_TOKEN) -> None:
    monkeypatch.setenv("SKALD_URL", server.url)
    monkeypatch.setenv("SKALD_TOKEN", token)
    async with server.client() as client:
        assert (await client.put("/api/v1/db/notes")).status_code == 201
        created = await client.post(
            "/api/v1/db/notes/query", json={"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v)"}
        )
        assert created.status_code == 200


async def test_query_json_write_guard_and_errors(
    server: LiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    await use_server(server, monkeypatch)
    code, _, err = await skald(capsys, "query", "notes", "INSERT INTO t (v) VALUES (?)", "--arg", "x")
    assert code == 1 and err == "skald: 400 not_read_only: this statement writes: add --write to run it\n"
    code, out, err = await skald(
        capsys, "query", "notes", "INSERT INTO t (v) VALUES (?)", "--arg", '{"a": 1}', "--write", "--output", "json"
    )
    assert code == 0 and json.loads(out)["changes"] == 1, err
    code, out, _ = await skald(
        capsys, "query", "notes", "SELECT id, v FROM t WHERE id = ?", "--arg", "1", "--output", "json"
    )
    result = json.loads(out)
    assert code == 0 and result["columns"] == ["id", "v"] and result["rows"] == [[1, '{"a": 1}']]
    code, out, _ = await skald(capsys, "query", "notes", "SELECT id, v FROM t")
    assert code == 0 and out.splitlines()[0].split() == ["id", "v"] and '{"a": 1}' in out
    assert out.splitlines()[-1] == "(1 row)"
    # one-line errors from the real server
    code, _, err = await skald(capsys, "query", "notes", "SELECT * FROM missing")
    assert code == 1 and err.startswith("skald: 400 sql_error: ") and err.count("\n") == 1, err
    code, _, err = await skald(capsys, "query", "notes", "SELEC 1", "--write")
    assert code == 1 and err.startswith("skald: 400 sql_error: ") and err.count("\n") == 1
    code, _, err = await skald(capsys, "query", "notes", "SELECT 1; SELECT 2")
    assert code == 1 and err.startswith("skald: 400 multiple_statements: ") and err.count("\n") == 1
    # --write only lifts the read-only request: the server still checks the token's scope
    monkeypatch.setenv("SKALD_TOKEN", await server.mint_token("notes:query.read"))
    code, _, err = await skald(capsys, "query", "notes", "DELETE FROM t", "--write")
    assert code == 1 and err.startswith("skald: 403 scope_denied: ") and err.count("\n") == 1
    monkeypatch.setenv("SKALD_TOKEN", "skd_not_a_real_token")
    code, _, err = await skald(capsys, "query", "notes", "SELECT 1")
    assert code == 1 and err.startswith("skald: 401 token_invalid: ") and err.count("\n") == 1
    monkeypatch.setenv("SKALD_URL", "http://127.0.0.1:9")
    code, _, err = await skald(capsys, "publish", "notes", "a", "x")
    assert code == 3 and err.startswith("skald: unreachable: ") and err.count("\n") == 1


async def test_publish_then_subscribe(
    server: LiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    await use_server(server, monkeypatch)
    code, out, _ = await skald(capsys, "publish", "notes", "sensors/1", '{"t": 21.5}', "--json")
    first = json.loads(out)
    assert code == 0 and first["topic"] == "sensors/1"
    code, out, _ = await skald(capsys, "publish", "notes", "sensors/2", "hello", "--dedupe-key", "k")
    assert code == 0
    code, out, _ = await skald(capsys, "publish", "notes", "sensors/2", "hello again", "--dedupe-key", "k")
    assert code == 0 and json.loads(out)["deduplicated"] is True
    assert (await skald(capsys, "publish", "notes", "other", "[1", "--json"))[0] == 2  # not JSON: refused
    code, out, _ = await skald(capsys, "subscribe", "notes", "sensors/+", "--since", "0", "--max-events", "2")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [(e["event"], e["data"]["topic"]) for e in lines] == [("message", "sensors/1"), ("message", "sensors/2")]
    assert lines[0]["id"] == str(first["id"]) and lines[0]["data"]["payload"] == {"t": 21.5}
    assert lines[1]["data"]["payload_text"] == "hello"
    # --idle-timeout: replay everything after --since, then stop once nothing more comes
    code, out, _ = await skald(
        capsys, "subscribe", "notes", "#", "--since", str(first["id"]), "--idle-timeout", "0.3", "--output", "text"
    )
    assert code == 0 and out.splitlines() == [f'{first["id"] + 1} message sensors/2 "hello"']


async def test_watch_prints_snapshot_then_update(
    server: LiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    await use_server(server, monkeypatch)
    capsys.readouterr()
    printed: list[str] = []

    async def write_after_snapshot() -> None:
        for _ in range(1000):  # bounded poll of what the watch printed so far
            printed.append(capsys.readouterr().out)
            if "".join(printed):
                break
            await trio.sleep(0.01)
        async with server.client() as client:
            await client.post("/api/v1/db/notes/query", json={"sql": "INSERT INTO t (v) VALUES ('x')"})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_after_snapshot)
        argv = ["watch", "notes", "SELECT count(*) AS n FROM t", "--output", "json", "--max-events", "2"]
        code = await trio.to_thread.run_sync(main, argv)
    printed.append(capsys.readouterr().out)
    results = [json.loads(line) for line in "".join(printed).splitlines()]
    assert code == 0
    assert [r["rows"] for r in results] == [[[0]], [[1]]]
    assert results[0]["result_hash"] != results[1]["result_hash"]
async def test_query_publish_subscribe_commands(
    server: LiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import subprocess
    import sys

    monkeypatch.setenv("SKALD_URL", server.url)
    monkeypatch.setenv("SKALD_TOKEN", ADMIN_TOKEN)
    async with server.client() as client:
        await client.put("/api/v1/db/cli")
    ddl = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)"
    code, _, err = await skald(capsys, "query", "cli", ddl)
    assert code == 1 and "--write" in err  # the guard refuses before sending
    assert (await skald(capsys, "query", "cli", ddl, "--write"))[0] == 0
    assert (await skald(capsys, "query", "cli", "INSERT INTO t (name) VALUES (?)", "--arg", "milk", "--write"))[0] == 0
    code, out, _ = await skald(capsys, "query", "cli", "SELECT id, name FROM t", "--output", "json")
    assert code == 0 and json.loads(out)["rows"] == [[1, "milk"]]
    code, out, err = await skald(capsys, "query", "cli", "SELEC nonsense")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "syntax error" in err
    code, out, _ = await skald(capsys, "publish", "cli", "sensors/a", '{"t": 1}')
    assert code == 0 and json.loads(out)["id"] == 1

    # subscribe follows forever: read its first event from a subprocess, then stop it
    env = {**__import__("os").environ, "SKALD_URL": server.url, "SKALD_TOKEN": ADMIN_TOKEN}
    proc = subprocess.Popen(  # noqa: ASYNC220 - starts at once; the read below runs in a thread
        [sys.executable, "-m", "skald", "subscribe", "cli", "sensors/+", "--since", "0", "--output", "json"],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = await trio.to_thread.run_sync(proc.stdout.readline)
    finally:
        proc.terminate()
        await trio.to_thread.run_sync(proc.wait)
        if proc.stdout is not None:
            proc.stdout.close()
    event = json.loads(line)
    assert event["event"] == "message" and event["data"]["payload"] == {"t": 1}
