"""Token bookkeeping off the request path: ``last_used_at`` written in batches.

Every authenticated request used to cost a write to the service database once per token
every 5 s (the token cache's lifetime), awaited on the request path: one group commit and
fsync behind whichever request missed the cache. Now a request only notes the token's id
and the time in memory (:meth:`TokenUsage.note`, a dict assignment); :meth:`TokenUsage.run`
writes everything noted in one service-database op every :data:`FLUSH_SECONDS`, and once
more when the app begins to stop (and the lifespan's stop flushes what came after).

What a crash costs: ``last_used_at`` may be up to :data:`FLUSH_SECONDS` old after a
``kill -9``. It is bookkeeping shown to people, never used to decide access.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import structlog
import trio

from skald.auth.tokens import iso, utcnow
from skald.db.actor import DocumentActor
from skald.errors import SkaldError

FLUSH_SECONDS = 5.0
log = structlog.get_logger("skald.auth.usage")


class TokenUsage:
    """Last use of each token since the previous flush (bounded by the number of tokens)."""

    def __init__(self) -> None:
        self._pending: dict[str, str] = {}

    def note(self, token_id: str) -> None:
        """Record that ``token_id`` was used now (no I/O)."""
        self._pending[token_id] = iso(utcnow())

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self, service: DocumentActor) -> int:
        """Write every noted use in one op; returns how many tokens were updated.

        On failure the uses are kept for the next flush (newer ones noted meanwhile win).
        """
        if not self._pending:
            return 0
        batch, self._pending = self._pending, {}

        def write(conn: sqlite3.Connection) -> None:
            rows = [(when, token_id) for token_id, when in batch.items()]
            conn.executemany("UPDATE tokens SET last_used_at = ? WHERE id = ?", rows)

        try:
            await service.write(write)
        except SkaldError:
            self._pending = {**batch, **self._pending}
            raise
        return len(batch)

    async def run(
        self,
        service: Callable[[], DocumentActor],
        stopping: trio.Event,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Flush to ``service()`` (looked up each time: the supervisor starts after this task)
        every :data:`FLUSH_SECONDS`, and once more as soon as ``stopping`` is set; then return."""
        task_status.started()
        while not stopping.is_set():
            with trio.move_on_after(FLUSH_SECONDS):
                await stopping.wait()
            # At the stop too, at once: the app's nursery may be cancelled (its grace deadline)
            # before the lifespan's after_serving hooks run; shielded so the write is answered.
            with trio.CancelScope(shield=stopping.is_set()):
                try:
                    await self.flush(service())
                except SkaldError as exc:  # the service database is busy or closing: try again later
                    log.warning("token usage not written", error=str(exc))
