"""``skald backup`` copies a running server's data folder; the copy serves again after a restore."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

import httpx
import pytest
import trio
from support.live import LiveServer, make_settings, start_live_server

from skald.cli import main
from skald.db.connection import DocConnection
from skald.documents.doctor import run_doctor


def _insert_next(conn: DocConnection) -> int:
    cur = conn.execute("INSERT INTO notes (body) VALUES ('x')")
    return int(cur.lastrowid or 0)


def _rows(path: Path) -> list[int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM notes ORDER BY id")]
    finally:
        conn.close()


async def test_backup_while_writing_then_restore(
    server: LiveServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    async with server.client() as client:
        for db_id in ("alpha", "beta"):
            assert (await client.put(f"/api/v1/db/{db_id}")).status_code == 201
    async with server.state.supervisor.open_document("alpha") as actor:
        await actor.write(lambda conn: conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))
        for _ in range(50):
            await actor.write(_insert_next)

        backup_done = trio.Event()
        written: list[int] = []

        async def keep_writing() -> None:
            # The server keeps committing while the backup runs.
            while not backup_done.is_set():
                written.append(await actor.write(_insert_next))

        nursery.start_soon(keep_writing)
        target = tmp_path / "backup"
        code = await trio.to_thread.run_sync(
            main, ["backup", "--data-dir", str(server.settings.data_dir), "--to", str(target)]
        )
        backup_done.set()

    assert code == 0
    assert sorted(p.name for p in target.iterdir()) == ["_skald.db", "documents"]
    assert sorted(p.name for p in (target / "documents").iterdir()) == ["alpha.sqlite3", "beta.sqlite3"]
    # A snapshot: every row committed before the backup, then a contiguous prefix of the later ones.
    rows = _rows(target / "documents" / "alpha.sqlite3")
    assert rows == list(range(1, len(rows) + 1))
    assert len(rows) >= 50
    report, doctor_code = run_doctor(target)
    assert doctor_code == 0, report
    assert report["status"] == "ok"

    # Restore: a data folder made from the backup serves the documents.
    restored = tmp_path / "restored"
    shutil.copytree(target, restored)
    async with trio.open_nursery() as inner:
        live = await start_live_server(inner, make_settings(restored))
        try:
            async with live.client() as client:
                listed = (await client.get("/api/v1/db")).json()["documents"]
                assert sorted(d["db_id"] for d in listed) == ["alpha", "beta"]
            async with live.state.supervisor.open_document("alpha") as actor:
                count = await actor.read(lambda conn: conn.execute("SELECT count(*) FROM notes").fetchone())
            assert count == (len(rows),)
        finally:
            await live.stop()


def test_backup_refuses_a_non_empty_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    sqlite3.connect(data / "_skald.db").close()
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    assert main(["backup", "--data-dir", str(data), "--to", str(target)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert (target / "keep.txt").read_text() == "precious"


def test_backup_refuses_a_folder_that_is_not_skald(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backup", "--data-dir", str(tmp_path / "nothing"), "--to", str(tmp_path / "t")]) == 1
    assert "not a skald data folder" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_backup_of_a_stopped_folder_is_self_contained(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "documents").mkdir(parents=True)
    for path in (data / "_skald.db", data / "documents" / "d.sqlite3"):
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY)")
            conn.execute("INSERT INTO notes DEFAULT VALUES")
    target = tmp_path / "t"
    assert main(["backup", "--data-dir", str(data), "--to", str(target), "--output", "json"]) == 0
    copies = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert copies == ["_skald.db", "documents/d.sqlite3"]  # no -wal/-shm/.partial left behind
    assert _rows(target / "documents" / "d.sqlite3") == [1]


async def test_restore_on_another_folder_keeps_hook_secrets_and_tokens(server: LiveServer, tmp_path: Path) -> None:
    """A restore from ``skald backup`` serves the same /h secrets and accepts the same tokens."""
    async with server.client() as client:
        assert (await client.put("/api/v1/db/notes")).status_code == 201
        hook = (await client.get("/h")).json()
    reader = await server.mint_token("notes:query.read", label="reader")
    target = tmp_path / "backup"
    code = await trio.to_thread.run_sync(
        main, ["backup", "--data-dir", str(server.settings.data_dir), "--to", str(target)]
    )
    assert code == 0
    assert (target / "hook.key").read_bytes() == (server.settings.data_dir / "hook.key").read_bytes()
    assert (target / "hook.key").stat().st_mode & 0o077 == 0  # a secret: owner only, as the server writes it

    restored = tmp_path / "elsewhere" / "data"
    shutil.copytree(target, restored)
    async with trio.open_nursery() as inner:
        live = await start_live_server(inner, make_settings(restored))
        try:
            async with live.client(reader) as client:
                r = await client.post("/api/v1/db/notes/query", json={"sql": "SELECT 1 AS one"})
                assert r.status_code == 200, r.text
                assert r.json()["rows"] == [[1]]
            channel, secret = hook["channel"], hook["secret"]
            async with httpx.AsyncClient(base_url=live.url, timeout=30) as plain:
                wrong = await plain.post(f"/h/{channel}?secret={'0' * len(secret)}", content=b"x")
                assert wrong.status_code == 401
                got: dict[str, httpx.Response] = {}

                async def produce() -> None:
                    got["producer"] = await plain.post(f"/h/{channel}?secret={secret}", content=b"kept")

                async with trio.open_nursery() as pair:
                    pair.start_soon(produce)
                    got["consumer"] = await plain.get(f"/h/{channel}")
            assert got["consumer"].content == b"kept"
            assert got["producer"].status_code == 200
        finally:
            await live.stop()
