"""Message retention: a per-document policy (max age, count, bytes) and its sweep.

None by default: messages are kept forever. A policy is one row in
``_skald_message_retention``; :meth:`Retention.sweep` deletes the oldest
messages in batches of :data:`SWEEP_BATCH`, each its own small write op in the
actor's group-commit queue, so a large clean-up never stalls publishes.
``pruned_through`` records the highest id that may have been removed, so a
subscriber's cursor below it gets a ``reset`` event instead of a silent gap.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import structlog
import trio

from skald.db.actor import DocumentActor
from skald.db.connection import DocConnection
from skald.db.supervisor import Supervisor

log = structlog.get_logger("skald.pubsub.service")

SWEEP_BATCH = 500
SWEEP_INTERVAL_SECONDS = 5.0


def iso_timestamp(moment: datetime.datetime | None = None) -> str:
    """UTC ISO 8601 with milliseconds (fixed width, so it sorts as text)."""
    moment = moment or datetime.datetime.now(datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclasses.dataclass(frozen=True)
class RetentionPolicy:
    max_age_seconds: float | None = None
    max_count: int | None = None
    max_bytes: int | None = None

    @property
    def empty(self) -> bool:
        return self.max_age_seconds is None and self.max_count is None and self.max_bytes is None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Retention:
    """Policies of the open documents (cached) and the background sweep."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self._policies: dict[str, RetentionPolicy] = {}

    def forget(self, db_id: str) -> None:
        self._policies.pop(db_id, None)

    async def get_policy(self, actor: DocumentActor) -> RetentionPolicy:
        cached = self._policies.get(actor.db_id)
        if cached is not None:
            return cached

        def fetch(conn: DocConnection) -> RetentionPolicy:
            row = conn.execute(
                "SELECT max_age_seconds, max_count, max_bytes FROM _skald_message_retention WHERE id = 1"
            ).fetchone()
            return RetentionPolicy(*row) if row else RetentionPolicy()

        policy = await actor.read(fetch)
        # set_policy may have cached a newer policy while this read ran: never overwrite it
        return self._policies.setdefault(actor.db_id, policy)

    async def set_policy(self, actor: DocumentActor, policy: RetentionPolicy) -> int:
        """Store the policy, then sweep at once; returns how many messages were removed."""

        def store(conn: DocConnection) -> None:
            conn.execute(
                "INSERT INTO _skald_message_retention (id, max_age_seconds, max_count, max_bytes, updated_at)"
                " VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " max_age_seconds = excluded.max_age_seconds, max_count = excluded.max_count,"
                " max_bytes = excluded.max_bytes, updated_at = excluded.updated_at",
                (policy.max_age_seconds, policy.max_count, policy.max_bytes, iso_timestamp()),
            )

        await actor.write(store)
        self._policies[actor.db_id] = policy
        return await self.sweep(actor)

    async def sweep(self, actor: DocumentActor) -> int:
        """Enforce the policy in batches of :data:`SWEEP_BATCH` rows, each its own small write op."""
        policy = await self.get_policy(actor)
        if policy.empty:
            return 0
        removed = 0
        while True:
            batch = await actor.write(lambda conn: _prune_batch(conn, policy))
            removed += batch
            if batch < SWEEP_BATCH:
                return removed
            await trio.lowlevel.checkpoint()  # let queued publishes take the writer between batches

    async def serve_sweeps(self) -> None:
        """Sweep open documents every :data:`SWEEP_INTERVAL_SECONDS`; runs until cancelled.

        A document is swept only if it committed since its last sweep or something holds it
        open (subscribers): sweeping an idle document would keep it from being reaped.
        """
        swept_at: dict[int, tuple[DocumentActor, int]] = {}
        while True:
            await trio.sleep(SWEEP_INTERVAL_SECONDS)
            actors = list(self.supervisor.open_actors.values())
            swept_at = {key: value for key, value in swept_at.items() if value[0] in actors}
            for actor in actors:
                previous = swept_at.get(id(actor))
                if actor.closing.is_set() or (previous and previous[1] == actor.commits and not actor.holds):
                    continue
                try:
                    await self.sweep(actor)
                    swept_at[id(actor)] = (actor, actor.commits)
                except Exception as exc:  # a failed sweep is retried next round; never kill the service
                    log.warning("retention sweep failed", db_id=actor.db_id, error=str(exc))


def _prune_batch(conn: DocConnection, policy: RetentionPolicy) -> int:
    """Delete up to SWEEP_BATCH of the oldest messages the policy no longer keeps; record the cursor."""
    limit_id = 0
    if policy.max_age_seconds is not None:
        cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=policy.max_age_seconds)
        cutoff_text = iso_timestamp(cutoff)
        row = conn.execute(
            "SELECT max(id) FROM (SELECT id FROM _skald_messages WHERE created_at < ? ORDER BY id LIMIT ?)",
            (cutoff_text, SWEEP_BATCH),
        ).fetchone()
        limit_id = max(limit_id, int(row[0] or 0))
    if policy.max_count is not None:
        (total,) = conn.execute("SELECT count(*) FROM _skald_messages").fetchone()
        excess = min(int(total) - policy.max_count, SWEEP_BATCH)
        if excess > 0:
            row = conn.execute(
                "SELECT id FROM _skald_messages ORDER BY id LIMIT 1 OFFSET ?", (excess - 1,)
            ).fetchone()
            limit_id = max(limit_id, int(row[0]))
    if policy.max_bytes is not None:
        (total_bytes,) = conn.execute("SELECT coalesce(sum(size), 0) FROM _skald_messages").fetchone()
        over = int(total_bytes) - policy.max_bytes
        if over > 0:
            freed = 0
            for msg_id, size in conn.execute(
                "SELECT id, size FROM _skald_messages ORDER BY id LIMIT ?", (SWEEP_BATCH,)
            ):
                freed += int(size)
                limit_id = max(limit_id, int(msg_id))
                if freed >= over:
                    break
    if limit_id == 0:
        return 0
    cursor = conn.execute("DELETE FROM _skald_messages WHERE id <= ?", (limit_id,))
    conn.execute(
        "INSERT INTO _skald_message_retention (id, pruned_through) VALUES (1, ?)"
        " ON CONFLICT (id) DO UPDATE SET pruned_through = max(pruned_through, excluded.pruned_through)",
        (limit_id,),
    )
    return cursor.rowcount
