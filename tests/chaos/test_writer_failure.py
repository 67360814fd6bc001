"""A document's writer failing mid-batch: callers get an error, nothing is half-written, the document serves again.

The failure is injected as one more write op in the same group commit as real HTTP
INSERTs: either the connection is closed under the batch (what a broken connection
looks like to the writer) or the op raises past ``Exception`` inside the writer
thread (what a dying worker looks like to the actor).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from support.live import LiveServer

from skald.db.actor import DocumentActor
from skald.db.connection import DocConnection
from skald.errors import DocumentUnavailable


class WorkerDied(BaseException):
    """Not an ``Exception``: nothing on the op path is meant to catch it."""


def _close_connection(conn: DocConnection) -> None:
    conn.close()


def _die(conn: DocConnection) -> None:
    conn.execute("INSERT INTO t (v) VALUES (-1)")
    raise WorkerDied("the worker thread died")


async def _q(client: httpx.AsyncClient, sql: str, args: list[Any] | None = None) -> httpx.Response:
    return await client.post("/api/v1/db/d/query", json={"sql": sql, "args": args or []})


async def _queued(actor: DocumentActor, depth: int) -> None:
    """Wait until ``depth`` ops are queued (the HTTP requests reached the mailbox)."""
    with trio.fail_after(30):
        while actor.mailbox_depth < depth:
            await trio.testing.wait_all_tasks_blocked()


def _rows(server: LiveServer) -> list[int]:
    # an unrelated connection sees only what was committed
    conn = sqlite3.connect(server.settings.document_path("d"))
    try:
        return [v for (v,) in conn.execute("SELECT v FROM t ORDER BY v")]
    finally:
        conn.close()


@pytest.mark.parametrize("breaker", [_close_connection, _die], ids=["connection-closed", "worker-died"])
async def test_writer_failing_mid_batch_fails_the_batch_and_the_document_serves_again(
    server: LiveServer, breaker: Callable[[DocConnection], None]
) -> None:
    async with server.client() as c:
        assert (await c.put("/api/v1/db/d")).status_code == 201
        assert (await _q(c, "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")).status_code == 200
        assert (await _q(c, "INSERT INTO t (v) VALUES (0)")).status_code == 200
        responses: list[httpx.Response] = []
        broken: list[BaseException] = []
        gate = threading.Event()
        async with server.state.supervisor.open_document("d") as actor:

            async def insert(value: int) -> None:
                responses.append(await _q(c, "INSERT INTO t (v) VALUES (?)", [value]))

            async def inject() -> None:
                try:
                    await actor.write(breaker)
                except BaseException as exc:  # recorded and checked below
                    broken.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(actor.write, lambda conn: gate.wait(30))  # holds the writer
                await _queued(actor, 0)
                for value in range(1, 21):
                    nursery.start_soon(insert, value)
                await _queued(actor, 20)
                nursery.start_soon(inject)
                await _queued(actor, 21)  # twenty INSERTs and the breaker: one batch
                gate.set()
        assert _rows(server) == [0]  # nothing of the failed batch was written
        # the document serves again, reads and writes
        r = await _q(c, "INSERT INTO t (v) VALUES (99)")
        assert r.status_code == 200, r.text
        # every caller of the failed batch got a retryable problem, none an acknowledgement
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [503] * 20, [r.text for r in responses]
        assert {r.json()["code"] for r in responses} == {"document_unavailable"}
        assert all(r.headers["content-type"].startswith("application/problem+json") for r in responses)
        assert len(broken) == 1 and not isinstance(broken[0], WorkerDied)  # the actor answered it
        assert (await _q(c, "SELECT v FROM t ORDER BY v")).json()["rows"] == [[0], [99]]
        assert _rows(server) == [0, 99]
        metrics = (await c.get("/metrics")).text
        assert "skald_writer_restarts_total 1.0" in metrics


async def test_document_that_cannot_be_reopened_stops_and_the_next_request_opens_it_again(
    server: LiveServer,
) -> None:
    path = server.settings.document_path("d")
    aside = path.with_name(path.name + ".aside")

    def break_and_block(conn: DocConnection) -> None:
        # the connection breaks and the file is unreachable for a while (a lost mount, say)
        conn.close()
        path.rename(aside)
        path.mkdir()

    async with server.client() as c:
        assert (await c.put("/api/v1/db/d")).status_code == 201
        assert (await _q(c, "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")).status_code == 200
        async with server.state.supervisor.open_document("d") as actor:
            with pytest.raises(DocumentUnavailable):
                await actor.write(break_and_block)
        with trio.fail_after(30):
            await actor.stopped.wait()  # it could not reopen: it stopped instead of failing forever
        assert actor.stop_reason == "failed"
        r = await _q(c, "INSERT INTO t (v) VALUES (1)")  # still unreachable: a clear error, no hang
        assert r.status_code >= 500 and r.headers["content-type"].startswith("application/problem+json")
        print("while the file is unreachable:", r.status_code, r.json()["code"])
        path.rmdir()
        aside.rename(path)
        r = await _q(c, "INSERT INTO t (v) VALUES (2)")  # the next request starts a fresh actor
        assert r.status_code == 200, r.text
        assert (await _q(c, "SELECT v FROM t")).json()["rows"] == [[2]]
