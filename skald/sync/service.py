"""Sync service: change-feed triggers on every document actor, snapshots, change pages, wake-ups.

:class:`SyncService` lives in ``state.sync``. It adds
:func:`skald.sync.changefeed.sync_triggers` to every document actor's write hooks
and a commit listener that wakes change streams when ``_skald_changes`` was
written. Snapshots use the SQLite backup API from a read-only connection into a
temporary file; the change sequence is read from the copy itself, so it is
exactly the sequence the copy includes.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import tempfile
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from skald.db.actor import CommitInfo, DocumentActor
from skald.db.connection import DocConnection
from skald.db.supervisor import Supervisor
from skald.errors import SkaldError
from skald.http.sse import json_event, wait_first
from skald.server.shutdown import final_event
from skald.sync.changefeed import DEFAULT_RETENTION, last_seq, read_changes, sync_triggers

SNAPSHOT_CHUNK = 256 * 1024
STREAM_PAGE = 500  # changes read per step of a change stream


class SyncService:
    def __init__(self, supervisor: Supervisor, *, retention: int = DEFAULT_RETENTION) -> None:
        self.supervisor = supervisor
        self.retention = retention
        self._wakeups: dict[str, trio.Event] = {}
        self._prepared: weakref.WeakSet[DocumentActor] = weakref.WeakSet()
        supervisor.on_actor_start(self.attach)

    def attach(self, actor: DocumentActor) -> None:
        """Install the trigger hook and the commit listener on a freshly started actor."""
        actor.write_hooks.append(functools.partial(sync_triggers, retention=self.retention))
        db_id = actor.db_id

        def on_commit(info: CommitInfo) -> None:
            if "_skald_changes" in info.tables:
                event = self._wakeups.pop(db_id, None)
                if event is not None:
                    event.set()

        actor.add_commit_listener(on_commit)

    def wakeup(self, db_id: str) -> trio.Event:
        """An event set after the next commit that adds changes to ``db_id``."""
        event = self._wakeups.get(db_id)
        if event is None:
            event = self._wakeups[db_id] = trio.Event()
        return event

    async def _prepare(self, actor: DocumentActor) -> None:
        """Make sure the triggers exist (an empty write runs the hook once per actor)."""
        if actor in self._prepared:
            return
        await actor.write(lambda conn: None)
        self._prepared.add(actor)

    async def prepare(self, db_id: str) -> None:
        """Make sure ``db_id`` exists and records its changes (raises ``DocumentNotFound`` before a stream starts)."""
        async with self.supervisor.open_document(db_id) as actor:
            await self._prepare(actor)

    async def changes(self, db_id: str, since: int, limit: int) -> dict[str, Any]:
        async with self.supervisor.open_document(db_id) as actor:
            await self._prepare(actor)
            return await actor.read(lambda conn: read_changes(conn, since, limit))

    async def snapshot_file(self, db_id: str) -> tuple[Path, int]:
        """Copy the document into a temporary file; return (path, change sequence it includes).

        The caller deletes the file. On cancellation the backup is interrupted
        and the file removed.
        """
        async with self.supervisor.open_document(db_id) as actor:
            await self._prepare(actor)
            fd, name = tempfile.mkstemp(prefix=f"skald-snapshot-{db_id}-", suffix=".sqlite")
            os.close(fd)
            path = Path(name)
            try:
                seq = await actor.read(lambda conn: _backup_into(conn, path))
            except BaseException:
                with trio.CancelScope(shield=True):
                    await trio.Path(path).unlink(missing_ok=True)
                raise
        return path, seq

    async def change_events(
        self, db_id: str, since: int, heartbeat: float, shutdown: trio.Event | None
    ) -> AsyncIterator[bytes]:
        """SSE frames of ``db_id``'s changes after ``since``: ``change``, ``heartbeat``, ``reset``, ``shutdown``.

        The document is held open for as long as the stream runs; it ends when the document closes.
        """
        cursor = since
        try:
            async with self.supervisor.open_document(db_id) as actor:
                await self._prepare(actor)
                while not actor.closing.is_set() and not (shutdown is not None and shutdown.is_set()):
                    wake = self.wakeup(db_id)
                    page = await actor.read(functools.partial(read_changes, since=cursor, limit=STREAM_PAGE))
                    if page["reset"]:
                        yield json_event("reset", {"since": cursor, "last_seq": page["last_seq"]})
                        return
                    for change in page["changes"]:
                        cursor = change["seq"]
                        yield json_event("change", change, cursor)
                    if len(page["changes"]) >= STREAM_PAGE:
                        continue
                    with trio.move_on_after(heartbeat) as scope:
                        await wait_first(wake, actor.closing, shutdown)
                    if scope.cancelled_caught:
                        yield json_event("heartbeat", {"last_seq": page["last_seq"]})
        except SkaldError as exc:  # the document went away between the route's check and the stream's start
            yield json_event("error", {"code": exc.code, "detail": exc.detail})
            return
        if shutdown is not None and shutdown.is_set():
            yield final_event(resume_from=cursor)


def _backup_into(conn: DocConnection, path: Path) -> int:
    dest = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.backup(dest)  # all pages in one step: one consistent read transaction
        dest.execute("PRAGMA journal_mode=DELETE")
        return last_seq(dest)
    finally:
        dest.close()


async def stream_file(path: Path) -> AsyncIterator[bytes]:
    """Yield ``path`` in chunks, then delete it (also when the client goes away)."""
    try:
        with path.open("rb") as fh:
            while True:
                chunk = await trio.to_thread.run_sync(fh.read, SNAPSHOT_CHUNK)
                if not chunk:
                    break
                yield chunk
    finally:
        with trio.CancelScope(shield=True):
            await trio.Path(path).unlink(missing_ok=True)
