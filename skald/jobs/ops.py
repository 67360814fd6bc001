"""The job queue's actor write ops: plain functions on the document's write connection.

Each public op takes a :class:`Tx` (the connection, the clock reading for this op,
and a record of the state changes it made) and runs inside the actor's group
commit, one op at a time, so a claim can never interleave with another claim.
Every state change also writes a row to ``_skald_job_events`` (the SSE stream)
in the same transaction. Ops are safe to run again after a rollback (the actor
may do that): they read everything they need from the connection.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
from typing import Any

from skald.db.connection import DocConnection
from skald.errors import SkaldError
from skald.jobs.errors import JobLeaseMismatch, JobNotFound, JobStateConflict, QueueBusy, QueueNotFound
from skald.jobs.model import JOB_COLUMNS, MAX_ERROR_BYTES, Backoff, Job, JobSpec

LIVE = "('queued', 'retrying', 'running')"
READY = "('queued', 'retrying')"
RECLAIM_BATCH = 256


@dataclasses.dataclass
class Tx:
    conn: DocConnection
    now: int
    transitions: list[tuple[str, str | None, str | None]] = dataclasses.field(default_factory=list)
    """(queue, old state, new state); None for a job that appeared or was deleted."""
    recount: bool = False
    """Set by ops that change many jobs at once: the service recounts the gauges."""
    wake_all: bool = False
    """Set by ops that change what may be fetched without a job changing state (queue settings)."""
    started: list[float] = dataclasses.field(default_factory=list)  # queue wait of each start, seconds
    finished: list[tuple[str, str, float]] = dataclasses.field(default_factory=list)  # (queue, state, run s)

    def events(self, rows: list[tuple[int, str, str, int]]) -> None:
        """``(job_id, queue, state, attempt)`` event rows in one prepared statement."""
        self.conn.executemany(
            "INSERT INTO _skald_job_events (job_id, queue, state, attempt, at_ms) VALUES (?, ?, ?, ?, ?)",
            [(*row, self.now) for row in rows],
        )

    def change(
        self, job_id: int, queue: str, old: str | None, new: str | None, attempt: int, *, count: bool = True
    ) -> None:
        if count:
            self.transitions.append((queue, old, new))
        self.conn.execute(
            "INSERT INTO _skald_job_events (job_id, queue, state, attempt, at_ms) VALUES (?, ?, ?, ?, ?)",
            (job_id, queue, new or "deleted", attempt, self.now),
        )


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def get_job(tx: Tx, job_id: int) -> Job:
    row = tx.conn.execute(f"SELECT {JOB_COLUMNS} FROM _skald_jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise JobNotFound(f"job {job_id} does not exist", job_id=job_id)
    return Job.from_row(row)


def job_errors(tx: Tx, job_id: int) -> list[dict[str, Any]]:
    from skald.jobs.model import iso

    rows = tx.conn.execute(
        "SELECT attempt, error, backtrace, at_ms FROM _skald_job_errors WHERE job_id = ? ORDER BY id", (job_id,)
    ).fetchall()
    return [{"attempt": r[0], "error": r[1], "backtrace": r[2], "at": iso(r[3])} for r in rows]


# ---- enqueue --------------------------------------------------------------------------------------


def enqueue(tx: Tx, spec: JobSpec) -> tuple[Job, bool]:
    """Insert one job; a live (or still unique) job with the same queue and unique_key wins instead.

    Returns ``(job, duplicate)``.
    """
    conn, now = tx.conn, tx.now
    if spec.unique_key is not None:
        row = conn.execute(
            f"SELECT {JOB_COLUMNS} FROM _skald_jobs WHERE queue = ? AND unique_key = ?"
            f" AND (state IN {LIVE} OR unique_until_ms > ?) ORDER BY id DESC LIMIT 1",
            (spec.queue, spec.unique_key, now),
        ).fetchone()
        if row is not None:
            return Job.from_row(row), True
    unique_until = None
    if spec.unique_key is not None and spec.unique_for_seconds is not None:
        unique_until = now + int(spec.unique_for_seconds * 1000)
    row = conn.execute(
        "INSERT INTO _skald_jobs (queue, payload, priority, state, run_at_ms, created_at_ms, max_attempts,"
        " backoff, unique_key, unique_until_ms, tags, timeout_seconds) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?,"
        f" ?, ?) RETURNING {JOB_COLUMNS}",
        (
            spec.queue, spec.payload, spec.priority, spec.run_at_ms if spec.run_at_ms is not None else now, now,
            spec.max_attempts, json.dumps(spec.backoff.to_json()), spec.unique_key, unique_until,
            json.dumps(list(spec.tags)), spec.timeout_seconds,
        ),
    ).fetchone()
    job = Job.from_row(row)
    tx.change(job.id, job.queue, None, "queued", 0)
    return job, False


def enqueue_many(tx: Tx, specs: list[JobSpec]) -> list[tuple[Job, bool]]:
    """All of ``specs`` in this op (so in one transaction: all or nothing), each ``(job, duplicate)``.

    A handful of statements for the whole batch (the statement cache is off): one query for the
    live holders of the batch's unique keys, one prepared INSERT, one query reading the new rows
    back (ids are consecutive: AUTOINCREMENT under the single writer), one prepared event INSERT.
    A unique key repeated inside the batch is a duplicate of its first occurrence.
    """
    if len(specs) == 1:
        return [enqueue(tx, specs[0])]
    conn, now = tx.conn, tx.now
    keyed = sorted({(s.queue, s.unique_key) for s in specs if s.unique_key is not None})
    holders: dict[tuple[str, str], Job] = {}
    if keyed:
        rows = conn.execute(
            f"SELECT {JOB_COLUMNS} FROM _skald_jobs WHERE unique_key IS NOT NULL"
            " AND (queue, unique_key) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?))"
            f" AND (state IN {LIVE} OR unique_until_ms > ?) ORDER BY id",
            (json.dumps(keyed), now),
        ).fetchall()
        for row in rows:  # the newest holder wins (ordered by id)
            job = Job.from_row(row)
            holders[(job.queue, job.unique_key or "")] = job
    plan: list[tuple[str, Any]] = []  # ("old", job) | ("new", index into inserts) | ("same", index)
    inserts: list[tuple[Any, ...]] = []
    first_of: dict[tuple[str, str], int] = {}
    for spec in specs:
        key = (spec.queue, spec.unique_key) if spec.unique_key is not None else None
        if key is not None and key in holders:
            plan.append(("old", holders[key]))
            continue
        if key is not None and key in first_of:
            plan.append(("same", first_of[key]))
            continue
        unique_until = None
        if spec.unique_key is not None and spec.unique_for_seconds is not None:
            unique_until = now + int(spec.unique_for_seconds * 1000)
        if key is not None:
            first_of[key] = len(inserts)
        plan.append(("new", len(inserts)))
        inserts.append((
            spec.queue, spec.payload, spec.priority, spec.run_at_ms if spec.run_at_ms is not None else now, now,
            spec.max_attempts, json.dumps(spec.backoff.to_json()), spec.unique_key, unique_until,
            json.dumps(list(spec.tags)), spec.timeout_seconds,
        ))
    created: list[Job] = []
    if inserts:
        conn.executemany(
            "INSERT INTO _skald_jobs (queue, payload, priority, state, run_at_ms, created_at_ms, max_attempts,"
            " backoff, unique_key, unique_until_ms, tags, timeout_seconds) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?,"
            " ?, ?, ?, ?)",
            inserts,
        )
        last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
        rows = conn.execute(
            f"SELECT {JOB_COLUMNS} FROM _skald_jobs WHERE id BETWEEN ? AND ? ORDER BY id",
            (last - len(inserts) + 1, last),
        ).fetchall()
        created = [Job.from_row(row) for row in rows]
        assert len(created) == len(inserts), "AUTOINCREMENT ids were not consecutive"
        tx.transitions += [(job.queue, None, "queued") for job in created]
        tx.events([(job.id, job.queue, "queued", 0) for job in created])
    answer: list[tuple[Job, bool]] = []
    for kind, value in plan:
        if kind == "old":
            answer.append((value, True))
        elif kind == "same":
            answer.append((created[value], True))
        else:
            answer.append((created[value], False))
    return answer


# ---- attempts ending ------------------------------------------------------------------------------


def _end_attempt(tx: Tx, job: Job, error: str, backtrace: str | None, checkpoint: str | None = None) -> Job:
    """A running attempt failed: keep its error, then retry after the backoff, or dead, or cancelled."""
    conn, now = tx.conn, tx.now
    conn.execute(
        "INSERT INTO _skald_job_errors (job_id, attempt, error, backtrace, at_ms) VALUES (?, ?, ?, ?, ?)",
        (job.id, job.attempts, error[:MAX_ERROR_BYTES], backtrace[:MAX_ERROR_BYTES] if backtrace else None, now),
    )
    if job.cancel_requested:
        state, run_at = "cancelled", job.run_at_ms
    elif job.attempts >= job.max_attempts:
        state, run_at = "dead", job.run_at_ms
    else:
        delay = Backoff.parse(json.loads(job.backoff)).delay_seconds(job.attempts)
        state, run_at = "retrying", now + int(delay * 1000)
    terminal = state != "retrying"
    row = conn.execute(
        "UPDATE _skald_jobs SET state = ?, run_at_ms = ?, lease_hash = NULL, lease_expires_ms = NULL,"
        " completed_at_ms = ?, error_count = error_count + 1, last_error = ?,"
        f" checkpoint = coalesce(?, checkpoint) WHERE id = ? RETURNING {JOB_COLUMNS}",
        (state, run_at, now if terminal else None, error[:MAX_ERROR_BYTES], checkpoint, job.id),
    ).fetchone()
    tx.change(job.id, job.queue, "running", state, job.attempts)
    tx.finished.append((job.queue, "failed", (now - (job.started_at_ms or now)) / 1000))
    if state == "dead":
        tx.finished.append((job.queue, "dead", 0.0))
    return Job.from_row(row)


def reclaim_expired(tx: Tx) -> int:
    """Running jobs whose lease expired (or whose timeout passed) become failed attempts."""
    rows = tx.conn.execute(
        f"SELECT {JOB_COLUMNS} FROM _skald_jobs WHERE state = 'running' AND lease_expires_ms <= ?"
        " ORDER BY lease_expires_ms LIMIT ?",
        (tx.now, RECLAIM_BATCH),
    ).fetchall()
    for row in rows:
        job = Job.from_row(row)
        timed_out = job.timeout_seconds is not None and job.started_at_ms is not None and (
            tx.now >= job.started_at_ms + int(job.timeout_seconds * 1000)
        )
        reason = f"timed out after {job.timeout_seconds:g} s" if timed_out else "lease expired"
        _end_attempt(tx, job, f"{reason} (worker {job.worker_id})", None)
    return len(rows)


def next_lease_expiry(tx: Tx) -> int | None:
    row = tx.conn.execute("SELECT min(lease_expires_ms) FROM _skald_jobs WHERE state = 'running'").fetchone()
    return None if row[0] is None else int(row[0])


# ---- fetch ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Claimed:
    job: Job
    lease: str


def _lease_expiry(job: Job, now: int, lease_seconds: float) -> int:
    expires = now + int(lease_seconds * 1000)
    if job.timeout_seconds is not None and job.started_at_ms is not None:
        expires = min(expires, job.started_at_ms + int(job.timeout_seconds * 1000))
    return expires


def fetch(
    tx: Tx, queues: list[str], worker_id: str, lease_seconds: float, limit: int = 1, *, touch_worker: bool = True
) -> list[Claimed] | int | None:
    """Claim up to ``limit`` ready jobs of ``queues`` for ``worker_id``, best first.

    Returns the claimed jobs, or when nothing is ready the earliest time (ms) something
    could become ready without a commit (a ``run_at``, a lease expiring, a throttle
    window ending), or None. Paused queues, concurrency limits and throttles are
    respected (each claim counts against them). Only a claim (or a reclaim) writes job
    state: an empty fetch must not wake the other waiters. ``touch_worker`` records the
    worker as seen (the service does it about once a second per worker, not per fetch).

    Statements are few on purpose (the statement cache is off, see skald.db.connection):
    one candidate query per queue, one prepared UPDATE and one prepared INSERT for all claims.
    """
    conn, now = tx.conn, tx.now
    reclaim_expired(tx)
    if touch_worker:
        conn.execute(
            "INSERT INTO _skald_job_workers (worker_id, queues, last_seen_ms) VALUES (?, ?, ?)"
            " ON CONFLICT(worker_id) DO UPDATE SET queues = excluded.queues, last_seen_ms = excluded.last_seen_ms",
            (worker_id, json.dumps(queues), now),
        )
    marks = ",".join("?" * len(queues))
    configs = {
        row[0]: row[1:]
        for row in conn.execute(
            "SELECT name, paused, concurrency, throttle_rate, throttle_window_seconds FROM _skald_job_queues"
            f" WHERE name IN ({marks})", queues,
        )
    }
    wake: list[int] = []
    candidates: list[Job] = []
    for queue in queues:
        paused, concurrency, rate, window = configs.get(queue, (0, None, None, None))
        if paused:
            continue
        room = limit
        if concurrency is not None:
            running = conn.execute(
                "SELECT count(*) FROM _skald_jobs WHERE queue = ? AND state = 'running'", (queue,)
            ).fetchone()[0]
            room = min(room, concurrency - running)
        if rate is not None and window is not None:
            since = now - int(window * 1000)
            recent = conn.execute(
                "SELECT count(*), min(started_at_ms) FROM _skald_jobs WHERE queue = ? AND started_at_ms > ?",
                (queue, since),
            ).fetchone()
            if recent[0] >= rate:
                wake.append(int(recent[1]) + int(window * 1000) + 1)
            room = min(room, rate - recent[0])
        if room <= 0:
            continue
        rows = conn.execute(
            f"SELECT {JOB_COLUMNS} FROM _skald_jobs WHERE queue = ? AND state IN {READY}"
            " AND run_at_ms <= ? ORDER BY priority, run_at_ms, id LIMIT ?",
            (queue, now, room),
        ).fetchall()
        if rows:
            candidates += [Job.from_row(row) for row in rows]
        else:
            due = conn.execute(
                f"SELECT min(run_at_ms) FROM _skald_jobs WHERE queue = ? AND state IN {READY}", (queue,)
            ).fetchone()[0]
            if due is not None:
                wake.append(int(due))
    if not candidates:
        expiry = next_lease_expiry(tx)
        if expiry is not None:
            wake.append(expiry)
        return min(wake) if wake else None
    candidates.sort(key=lambda job: (job.priority, job.run_at_ms, job.id))
    claimed: list[Claimed] = []
    updates = []
    for job in candidates[:limit]:
        fence = job.fence + 1
        lease = f"{job.id}.{fence}.{secrets.token_urlsafe(18)}"
        started = dataclasses.replace(job, state="running", attempts=job.attempts + 1, fence=fence,
                                      worker_id=worker_id, started_at_ms=now, progress=None)
        started = dataclasses.replace(started, lease_expires_ms=_lease_expiry(started, now, lease_seconds))
        updates.append((fence, _hash(lease), started.lease_expires_ms, worker_id, now, job.id))
        claimed.append(Claimed(started, lease))
        tx.transitions.append((job.queue, job.state, "running"))
        tx.started.append(max(0, now - max(job.run_at_ms, job.created_at_ms)) / 1000)
    conn.executemany(
        "UPDATE _skald_jobs SET state = 'running', attempts = attempts + 1, fence = ?, lease_hash = ?,"
        " lease_expires_ms = ?, worker_id = ?, started_at_ms = ?, progress = NULL WHERE id = ?",
        updates,
    )
    tx.events([(c.job.id, c.job.queue, "running", c.job.attempts) for c in claimed])
    return claimed


# ---- the worker's answers -------------------------------------------------------------------------


def _lease_problem(job_id: int, job: Job | None, lease_hash: str | None, lease: str) -> SkaldError | None:
    """Why ``lease`` is not ``job``'s current lease (None if it is)."""
    if job is None:
        return JobNotFound(f"job {job_id} does not exist", job_id=job_id)
    parts = lease.split(".")
    fence = int(parts[1]) if len(parts) == 3 and parts[1].isascii() and parts[1].isdigit() else None
    if parts[0] != str(job_id) or fence is None:
        return JobLeaseMismatch(f"lease is not a lease of job {job_id}", job_id=job_id, reason="foreign")
    if job.state == "running" and fence == job.fence:
        if lease_hash is not None and hmac.compare_digest(lease_hash, _hash(lease)):
            return None
        return JobLeaseMismatch(f"lease is not a lease of job {job_id}", job_id=job_id, reason="foreign")
    return JobLeaseMismatch(
        f"lease {fence} of job {job_id} is no longer current (the job is {job.state}, fence {job.fence})",
        job_id=job_id, reason="stale" if fence < job.fence else "ended", state=job.state,
    )


def _check_lease(tx: Tx, job_id: int, lease: str) -> Job:
    """The job if ``lease`` is its current, unexpired lease; else :class:`JobLeaseMismatch` (409)."""
    row = tx.conn.execute(f"SELECT {JOB_COLUMNS}, lease_hash FROM _skald_jobs WHERE id = ?", (job_id,)).fetchone()
    job = Job.from_row(row[:-1]) if row is not None else None
    problem = _lease_problem(job_id, job, row[-1] if row is not None else None, lease)
    if problem is not None:
        raise problem
    assert job is not None
    return job


def ack_many(tx: Tx, acks: list[tuple[int, str, str | None]]) -> list[Job | SkaldError]:
    """Ack each ``(id, lease, result)``: the completed job, or the error of that entry alone (nothing changed).

    One query reads every job, one prepared UPDATE and one prepared INSERT write them.
    """
    reclaim_expired(tx)
    rows = tx.conn.execute(
        f"SELECT {JOB_COLUMNS}, lease_hash FROM _skald_jobs WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps([a[0] for a in acks]),),
    ).fetchall()
    found = {int(row[0]): (Job.from_row(row[:-1]), row[-1]) for row in rows}
    answers: list[Job | SkaldError] = []
    updates = []
    done: set[int] = set()
    for job_id, lease, result in acks:
        job, lease_hash = found.get(job_id, (None, None))
        problem = _lease_problem(job_id, job, lease_hash, lease) if job_id not in done else JobLeaseMismatch(
            f"job {job_id} was acknowledged earlier in this request", job_id=job_id, reason="ended")
        if problem is not None:
            answers.append(problem)
            continue
        assert job is not None
        done.add(job_id)
        updates.append((tx.now, result, job_id))
        answers.append(dataclasses.replace(job, state="completed", completed_at_ms=tx.now, result=result,
                                           lease_expires_ms=None))
        tx.transitions.append((job.queue, "running", "completed"))
        tx.finished.append((job.queue, "completed", (tx.now - (job.started_at_ms or tx.now)) / 1000))
    if updates:
        tx.conn.executemany(
            "UPDATE _skald_jobs SET state = 'completed', completed_at_ms = ?, result = ?, lease_hash = NULL,"
            " lease_expires_ms = NULL WHERE id = ?", updates,
        )
        tx.events([(a.id, a.queue, "completed", a.attempts) for a in answers if isinstance(a, Job)])
    return answers


def ack(tx: Tx, job_id: int, lease: str, result: str | None) -> Job:
    answer = ack_many(tx, [(job_id, lease, result)])[0]
    if isinstance(answer, SkaldError):
        raise answer
    return answer


def fail(tx: Tx, job_id: int, lease: str, error: str, backtrace: str | None, checkpoint: str | None) -> Job:
    reclaim_expired(tx)
    job = _check_lease(tx, job_id, lease)
    return _end_attempt(tx, job, error, backtrace, checkpoint)


@dataclasses.dataclass(frozen=True)
class Beat:
    job_id: int
    lease: str
    progress: str | None
    checkpoint: str | None


def heartbeat(tx: Tx, worker_id: str, beats: list[Beat], lease_seconds: float) -> list[dict[str, Any]]:
    """Extend each job's lease; a bad lease answers that job alone (``ok: false``) and changes nothing."""
    from skald.jobs.model import iso

    reclaim_expired(tx)
    tx.conn.execute(
        "INSERT INTO _skald_job_workers (worker_id, queues, last_seen_ms) VALUES (?, '[]', ?)"
        " ON CONFLICT(worker_id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms",
        (worker_id, tx.now),
    )
    answers: list[dict[str, Any]] = []
    for beat in beats:
        try:
            job = _check_lease(tx, beat.job_id, beat.lease)
        except (JobLeaseMismatch, JobNotFound) as exc:
            answers.append({"id": beat.job_id, "ok": False, "code": exc.code, "detail": exc.detail})
            continue
        expires = _lease_expiry(job, tx.now, lease_seconds)
        tx.conn.execute(
            "UPDATE _skald_job_workers SET last_seen_ms = ? WHERE worker_id = ?", (tx.now, worker_id)
        )
        # No event row: waiting fetches wake on events (state changes), and a heartbeat is not one.
        tx.conn.execute(
            "UPDATE _skald_jobs SET lease_expires_ms = ?, progress = coalesce(?, progress),"
            " checkpoint = coalesce(?, checkpoint) WHERE id = ?",
            (expires, beat.progress, beat.checkpoint, job.id),
        )
        answers.append({"id": job.id, "ok": True, "lease_expires_at": iso(expires),
                        "cancel": bool(job.cancel_requested)})
    return answers


# ---- one job, by an operator ----------------------------------------------------------------------


def retry(tx: Tx, job_id: int) -> Job:
    """Run a dead, cancelled or waiting (retrying) job again now, with a fresh set of attempts."""
    job = get_job(tx, job_id)
    if job.state not in ("dead", "cancelled", "retrying", "completed"):
        raise JobStateConflict(f"job {job_id} is {job.state}; only a finished or retrying job can be retried",
                               state=job.state)
    row = tx.conn.execute(
        "UPDATE _skald_jobs SET state = 'queued', run_at_ms = ?, attempts = 0, completed_at_ms = NULL,"
        f" cancel_requested = 0 WHERE id = ? RETURNING {JOB_COLUMNS}",
        (tx.now, job_id),
    ).fetchone()
    tx.change(job_id, job.queue, job.state, "queued", 0)
    return Job.from_row(row)


def cancel(tx: Tx, job_id: int) -> Job:
    """A waiting job is cancelled at once; a running one is asked to stop (its heartbeat says ``cancel``)."""
    job = get_job(tx, job_id)
    if job.state in ("queued", "retrying"):
        row = tx.conn.execute(
            "UPDATE _skald_jobs SET state = 'cancelled', completed_at_ms = ?, cancel_requested = 1"
            f" WHERE id = ? RETURNING {JOB_COLUMNS}", (tx.now, job_id),
        ).fetchone()
        tx.change(job_id, job.queue, job.state, "cancelled", job.attempts)
        return Job.from_row(row)
    if job.state == "running":
        row = tx.conn.execute(
            f"UPDATE _skald_jobs SET cancel_requested = 1 WHERE id = ? RETURNING {JOB_COLUMNS}", (job_id,)
        ).fetchone()
        return Job.from_row(row)
    raise JobStateConflict(f"job {job_id} is already {job.state}", state=job.state)


def move(tx: Tx, job_id: int, queue: str) -> Job:
    job = get_job(tx, job_id)
    if job.state == "running":
        raise JobStateConflict(f"job {job_id} is running; move it after it ends", state=job.state)
    row = tx.conn.execute(
        f"UPDATE _skald_jobs SET queue = ? WHERE id = ? RETURNING {JOB_COLUMNS}", (queue, job_id)
    ).fetchone()
    tx.transitions += [(job.queue, job.state, None), (queue, None, job.state)]
    tx.change(job_id, queue, job.state, job.state, job.attempts, count=False)
    return Job.from_row(row)


def delete(tx: Tx, job_id: int) -> None:
    job = get_job(tx, job_id)
    tx.conn.execute("DELETE FROM _skald_jobs WHERE id = ?", (job_id,))
    tx.conn.execute("DELETE FROM _skald_job_errors WHERE job_id = ?", (job_id,))
    tx.change(job_id, job.queue, job.state, None, job.attempts)


# ---- queues ---------------------------------------------------------------------------------------


def queue_counts(tx: Tx) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for queue, state, n in tx.conn.execute("SELECT queue, state, count(*) FROM _skald_jobs GROUP BY 1, 2"):
        counts.setdefault(queue, {})[state] = n
    return counts


def list_queues(tx: Tx) -> list[dict[str, Any]]:
    from skald.jobs.model import STATES

    reclaim_expired(tx)
    counts = queue_counts(tx)
    scheduled = dict(tx.conn.execute(
        f"SELECT queue, count(*) FROM _skald_jobs WHERE state IN {READY} AND run_at_ms > ? GROUP BY 1", (tx.now,)
    ).fetchall())
    configs = {row[0]: row[1:] for row in tx.conn.execute(
        "SELECT name, paused, concurrency, throttle_rate, throttle_window_seconds FROM _skald_job_queues"
    )}
    answer = []
    for name in sorted(set(counts) | set(configs)):
        paused, concurrency, rate, window = configs.get(name, (0, None, None, None))
        by_state = {state: counts.get(name, {}).get(state, 0) for state in STATES}
        by_state["scheduled"] = scheduled.get(name, 0)
        answer.append({
            "name": name, "paused": bool(paused), "concurrency": concurrency,
            "throttle": {"rate": rate, "window_seconds": window} if rate is not None else None,
            "counts": by_state,
        })
    return answer


def queue_info(tx: Tx, name: str) -> dict[str, Any]:
    for queue in list_queues(tx):
        if queue["name"] == name:
            return queue
    raise QueueNotFound(f"queue {name} has no jobs and no settings", queue=name)


def configure_queue(tx: Tx, name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Upsert a queue's settings; only the given fields change."""
    tx.wake_all = True
    tx.conn.execute(
        "INSERT INTO _skald_job_queues (name, updated_at_ms) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
        (name, tx.now),
    )
    for column, value in fields.items():
        assert column in ("paused", "concurrency", "throttle_rate", "throttle_window_seconds")
        tx.conn.execute(f"UPDATE _skald_job_queues SET {column} = ?, updated_at_ms = ? WHERE name = ?",
                        (value, tx.now, name))
    return queue_info(tx, name)


def remove_jobs(tx: Tx, name: str, states: tuple[str, ...]) -> int:
    """Delete the queue's jobs in ``states`` (one statement); the number deleted."""
    marks = ",".join("?" * len(states))
    rows = tx.conn.execute(
        f"DELETE FROM _skald_jobs WHERE queue = ? AND state IN ({marks}) RETURNING id, state, attempts",
        (name, *states),
    ).fetchall()
    _forget_errors(tx, [r[0] for r in rows])
    for job_id, state, attempts in rows:
        tx.change(job_id, name, state, None, attempts)
    return len(rows)


def _forget_errors(tx: Tx, ids: list[int]) -> None:
    if ids:
        tx.conn.execute("DELETE FROM _skald_job_errors WHERE job_id IN (SELECT value FROM json_each(?))",
                        (json.dumps(ids),))


def delete_queue(tx: Tx, name: str) -> int:
    info = queue_info(tx, name)
    if info["counts"]["running"]:
        raise QueueBusy(f"queue {name} has {info['counts']['running']} running jobs", queue=name)
    removed = remove_jobs(tx, name, ("queued", "retrying", "completed", "dead", "cancelled"))
    tx.conn.execute("DELETE FROM _skald_job_queues WHERE name = ?", (name,))
    return removed


def workers(tx: Tx, window_ms: int) -> list[dict[str, Any]]:
    from skald.jobs.model import iso

    running = dict(tx.conn.execute(
        "SELECT worker_id, count(*) FROM _skald_jobs WHERE state = 'running' GROUP BY 1"
    ).fetchall())
    rows = tx.conn.execute(
        "SELECT worker_id, queues, last_seen_ms FROM _skald_job_workers WHERE last_seen_ms >= ?"
        " ORDER BY worker_id", (tx.now - window_ms,),
    ).fetchall()
    return [{"worker_id": r[0], "queues": json.loads(r[1]), "last_seen": iso(r[2]), "running": running.get(r[0], 0)}
            for r in rows]
