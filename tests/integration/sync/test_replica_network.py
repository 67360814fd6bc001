"""The follower survives network loss / an unreachable server: a TCP proxy between them is torn down."""

from __future__ import annotations

import random
import signal
import sqlite3
from pathlib import Path

import httpx
import trio
from support.live import ADMIN_TOKEN, LiveServer, SkaldProcess, make_settings
from support.replica import SCHEMA, dump, random_statements, run_ops, server_seq, start_follower, wait_for_seq

from skald.db.connection import DocConnection


class Proxy:
    """Forwards 127.0.0.1:<port> to the server; :meth:`cut` drops every connection and stops listening."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._scope: trio.CancelScope | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as self._scope:
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, self._handle, listeners)
                task_status.started()

    def cut(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:  # the server is down: the client sees its connection dropped
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as nursery:

            async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
                try:
                    async for chunk in src:
                        await dst.send_all(chunk)
                except trio.BrokenResourceError:
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump, client, upstream)
            nursery.start_soon(pump, upstream, client)


async def test_follower_resumes_after_network_loss(
    server: LiveServer, tmp_path: Path, nursery: trio.Nursery
) -> None:
    rng = random.Random(5)
    replica = tmp_path / "notes.sqlite"
    async with server.client() as client:
        await client.put("/api/v1/db/notes")

    def schema(conn: DocConnection) -> None:
        for sql in SCHEMA:
            conn.execute(sql)

    async with server.state.supervisor.open_document("notes") as actor:
        await actor.write(schema)
    proxy = Proxy(int(server.url.rsplit(":", 1)[1]))
    await nursery.start(proxy.run)
    log = tmp_path / "follower.log"
    follower = start_follower(f"http://127.0.0.1:{proxy.port}", replica, tmp_path, log, "--max-delay", "0.2")
    try:
        await run_ops(server, rng, 0, 300)
        await wait_for_seq(replica, await server_seq(server), follower)
        proxy.cut()  # every connection drops; new ones are refused
        await run_ops(server, rng, 300, 300)
        for _ in range(600):  # bounded poll: the follower notices the loss and backs off
            if "retrying" in log.read_text():
                break
            await trio.sleep(0.05)
        else:
            raise AssertionError("follower never reported the connection loss")
        await nursery.start(proxy.run)  # back on the same port
        await run_ops(server, rng, 600, 300)
        await wait_for_seq(replica, await server_seq(server), follower)
    finally:
        follower.send_signal(signal.SIGKILL)
        await trio.to_thread.run_sync(follower.wait)
        proxy.cut()
    async with server.state.supervisor.open_document("notes") as actor:
        expected = await actor.read(dump)
    conn = sqlite3.connect(replica)
    try:
        assert dump(conn) == expected
    finally:
        conn.close()
    assert log.read_text().count("snapshot of notes") == 1  # resumed from its sequence, no new snapshot


def write_directly(path: Path, rng: random.Random, start: int, count: int) -> None:
    """Write to the document file while no server runs (the feed triggers live in the file)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for step in range(start, start + count):
            for sql, args in random_statements(rng, step):
                conn.execute(sql, args)
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_follower_survives_a_server_crash(tmp_path: Path, nursery: trio.Nursery) -> None:
    rng = random.Random(7)
    data_dir = tmp_path / "data"
    doc = make_settings(data_dir).document_path("notes")
    server = SkaldProcess(data_dir)
    url = await server.start()
    try:
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ) as client:
            assert (await client.put("/api/v1/db/notes")).status_code == 201
        await server.stop()
        conn = sqlite3.connect(doc)
        conn.executescript(";".join(SCHEMA))
        conn.close()
        await trio.to_thread.run_sync(write_directly, doc, rng, 0, 300)
        url = await server.start()
        proxy = Proxy(int(url.rsplit(":", 1)[1]))
        await nursery.start(proxy.run)
        log = tmp_path / "follower.log"
        follower = start_follower(
            f"http://127.0.0.1:{proxy.port}", tmp_path / "notes.sqlite", tmp_path, log, "--max-delay", "0.2"
        )
        try:
            await wait_for_seq(tmp_path / "notes.sqlite", await http_seq(url), follower)
            server.signal(signal.SIGKILL)  # the server crashes
            await server.wait()
            assert server.proc is not None and server.proc.stdout is not None
            server.proc.stdout.close()
            await trio.to_thread.run_sync(write_directly, doc, rng, 300, 300)
            url = await server.start()
            proxy.target_port = int(url.rsplit(":", 1)[1])
            await wait_for_seq(tmp_path / "notes.sqlite", await http_seq(url), follower)
        finally:
            follower.send_signal(signal.SIGKILL)
            await trio.to_thread.run_sync(follower.wait)
            proxy.cut()
        expected = await trio.to_thread.run_sync(dump_file, doc)
        assert await trio.to_thread.run_sync(dump_file, tmp_path / "notes.sqlite") == expected
        assert sum(len(rows) for rows in expected.values()) > 50
        assert log.read_text().count("snapshot of notes") == 1
    finally:
        await server.stop()


async def http_seq(url: str) -> int:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        return int((await client.get("/api/v1/db/notes/changes", params={"limit": 1})).json()["last_seq"])


def dump_file(path: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dump(conn)
    finally:
        conn.close()
