"""Garbage collection of blob objects: mark (union of references), then sweep with a re-check.

One run (see docs/blobs.md for why this is safe against concurrent claims):

1. **mark**: take ``M = clock()``; *then* read the union of ``_skald_blobs``
   references of every registered document (open ones through their actor's
   read pool, closed ones from their file opened ``mode=ro``); then, in one
   service transaction, set ``gc_marked_at = M`` on every object that is not
   in the union and whose last activity (created, completed, last claim or
   release) is older than ``M - grace``.
2. **sweep**: in one service transaction, delete the rows still carrying
   ``gc_marked_at = M`` whose last activity is still older than ``M - grace``
   (a claim clears ``gc_marked_at`` and bumps ``last_referenced_at``); only
   then delete those objects from the store. Objects in the store with no
   row at all that are older than the grace are removed too (left-overs of a
   failed delete).

A document that cannot be read aborts the run (the job is retried): it is
never treated as having no references.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter

from skald.blobs.objectstore import KEY_PREFIX, ObjectStore, blob_key
from skald.db.connection import DocConnection
from skald.db.supervisor import Supervisor
from skald.errors import DocumentUnavailable

GC_JOB_TYPE = "blob.gc"
_LAST_ACTIVITY = "max(created_at, coalesce(completed_at, 0), coalesce(last_referenced_at, 0))"


@dataclasses.dataclass(frozen=True)
class GcMark:
    marked_at: float
    referenced: frozenset[str]
    marked: tuple[str, ...]


def read_refs_from_file(path: Path) -> set[str]:
    """References of a closed document, read from its file without writing to it (WAL-safe)."""
    if not path.exists():
        return set()
    conn = sqlite3.connect(path.as_uri() + "?mode=ro", uri=True, timeout=10)
    try:
        return {r[0] for r in conn.execute("SELECT DISTINCT sha256 FROM _skald_blobs")}
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return set()  # never migrated to 0004: it cannot reference anything
        raise
    finally:
        conn.close()


def _select_refs(conn: DocConnection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT DISTINCT sha256 FROM _skald_blobs")}


class GarbageCollector:
    def __init__(
        self,
        supervisor: Supervisor,
        store: ObjectStore,
        grace_seconds: float,
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.store = store
        self.grace = grace_seconds
        self.clock = clock
        self._limiter = trio.CapacityLimiter(2)
        self.deleted_total = Counter(
            "skald_blob_gc_deleted_total", "Objects deleted from object storage by blob GC", registry=registry
        )

    async def referenced(self) -> set[str]:
        """Union of every registered document's references."""
        union: set[str] = set()
        for db_id in sorted(self.supervisor.known_documents):
            actor = self.supervisor.open_actors.get(db_id)
            if actor is not None:
                try:
                    union |= await actor.read(_select_refs)
                    continue
                except DocumentUnavailable:
                    await actor.stopped.wait()  # closing: its file is final once it stopped
            path = self.supervisor.settings.document_path(db_id)
            union |= await trio.to_thread.run_sync(read_refs_from_file, path, limiter=self._limiter)
        return union

    async def mark(self) -> GcMark:
        marked_at = self.clock()  # taken before reading any reference: the sweep re-checks against it
        referenced = frozenset(await self.referenced())
        cutoff = marked_at - self.grace

        def op(conn: DocConnection) -> tuple[str, ...]:
            rows = [
                r[0]
                for r in conn.execute(
                    f"SELECT sha256 FROM blob_objects WHERE {_LAST_ACTIVITY} < ?", (cutoff,)
                )
                if r[0] not in referenced
            ]
            for sha256 in rows:
                conn.execute("UPDATE blob_objects SET gc_marked_at = ? WHERE sha256 = ?", (marked_at, sha256))
            return tuple(rows)

        marked = await self.supervisor.service.write(op)
        return GcMark(marked_at, referenced, marked)

    async def sweep(self, mark: GcMark) -> list[str]:
        """Delete what ``mark`` marked and nobody touched since; return the deleted hashes."""
        cutoff = mark.marked_at - self.grace

        def op(conn: DocConnection) -> list[str]:
            gone = [
                r[0]
                for r in conn.execute(
                    f"DELETE FROM blob_objects WHERE gc_marked_at = ? AND {_LAST_ACTIVITY} < ?"
                    " RETURNING sha256",
                    (mark.marked_at, cutoff),
                )
            ]
            for sha256 in gone:
                conn.execute("DELETE FROM blob_uploads WHERE sha256 = ?", (sha256,))
            return sorted(gone)

        deleted = await self.supervisor.service.write(op)
        for sha256 in deleted:
            await self.store.delete(blob_key(sha256))
        deleted += await self._sweep_orphans(cutoff)
        self.deleted_total.inc(len(deleted))
        return deleted

    async def _sweep_orphans(self, cutoff: float) -> list[str]:
        objects = [o for o in await self.store.list() if o.last_modified < cutoff]
        removed = []
        for obj in objects:
            sha256 = obj.key[len(KEY_PREFIX) :]
            if not await self._known(sha256):
                await self.store.delete(obj.key)
                removed.append(sha256)
        return removed

    async def _known(self, sha256: str) -> bool:
        def op(conn: DocConnection) -> bool:
            return (
                conn.execute("SELECT 1 FROM blob_objects WHERE sha256 = ?", (sha256,)).fetchone() is not None
            )

        return await self.supervisor.service.read(op)

    async def run(self, payload: dict[str, Any] | None = None) -> list[str]:
        """One full mark + sweep; the job handler."""
        return await self.sweep(await self.mark())
