"""Replica equality: a random mixed workload while `skald sync pull --follow` runs (and is killed midway)."""

from __future__ import annotations

import random
import signal
import sqlite3
from pathlib import Path

import trio
from support.live import LiveServer
from support.replica import SCHEMA, dump, run_ops, server_seq, start_follower, wait_for_seq

from skald.db.connection import DocConnection


async def test_replica_follows_a_random_workload_through_a_follower_crash(
    server: LiveServer, tmp_path: Path
) -> None:
    rng = random.Random(9)
    replica = tmp_path / "notes.sqlite"
    async with server.client() as client:
        assert (await client.put("/api/v1/db/notes")).status_code == 201
    async with server.state.supervisor.open_document("notes") as actor:

        def schema(conn: DocConnection) -> None:
            for sql in SCHEMA:
                conn.execute(sql)

        await actor.write(schema)
    await run_ops(server, rng, 0, 1500)
    follower = start_follower(server.url, replica, tmp_path, tmp_path / "first.log")
    try:
        await run_ops(server, rng, 1500, 1000)
        await wait_for_seq(replica, 1, follower)
        follower.send_signal(signal.SIGKILL)  # crash midway
        await trio.to_thread.run_sync(follower.wait)
        await run_ops(server, rng, 2500, 1500)
        follower = start_follower(server.url, replica, tmp_path, tmp_path / "second.log")
        await run_ops(server, rng, 4000, 1200)
        await wait_for_seq(replica, await server_seq(server), follower)
    finally:
        follower.send_signal(signal.SIGKILL)
        await trio.to_thread.run_sync(follower.wait)
    async with server.state.supervisor.open_document("notes") as actor:
        expected = await actor.read(dump)
    conn = sqlite3.connect(replica)
    try:
        actual = dump(conn)
    finally:
        conn.close()
    # the inbox and message tables are in every document
    assert set(expected) == {"items", "kv", "log", "webhook_inbox", "_skald_messages"}
    assert sum(len(rows) for rows in expected.values()) > 100
    assert actual == expected
    assert "snapshot" in (tmp_path / "first.log").read_text()
    resumed = (tmp_path / "second.log").read_text()
    assert (
        "snapshot" not in resumed and "following notes from sequence" in resumed
    )  # resumed, no new snapshot
