"""DocumentActor: the one task that owns a document's connections.

Operations are plain synchronous functions ``fn(conn) -> result`` (Datasette's
contract). Three kinds:

* **write** (:meth:`DocumentActor.write`): queued on the bounded mailbox and
  group-committed. Queued writes share one ``BEGIN IMMEDIATE`` ... ``COMMIT``
  (one fsync); each runs inside its own savepoint, so a failing op is rolled
  back alone and the others commit. The caller gets its result only after the
  commit (persist before ack). An op must not issue transaction statements.
* **exclusive** (:meth:`DocumentActor.exclusive`): queued like a write but run
  alone, outside any transaction (migrations, backups, VACUUM).
* **read** (:meth:`DocumentActor.read`): runs on a small pool of read-only
  connections beside the writer (WAL), so a slow read never stalls writes.

After each commit the actor runs the ops' ``after_commit`` callbacks and then
its commit listeners with the set of tables written; both run on the event
loop and must not block (fan-out uses bounded buffers of its own).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

import outcome
import structlog
import trio

from skald.connection import DocConnection, open_connection
from skald.errors import DocumentUnavailable, MailboxFull, SkaldError, StorageError
from skald.metrics import Metrics
from skald.migrations import apply_migrations
from skald.worker import ConnectionWorker

T = TypeVar("T")
log = structlog.get_logger("skald.actor")


class OpKind(enum.Enum):
    WRITE = "write"
    EXCLUSIVE = "exclusive"


@dataclasses.dataclass(frozen=True)
class CommitInfo:
    """What one group commit changed, handed to commit listeners."""

    db_id: str
    tables: frozenset[str]
    batch_size: int


@dataclasses.dataclass
class _Op(Generic[T]):
    fn: Callable[[DocConnection], T]
    kind: OpKind
    after_commit: Callable[[T], None] | None
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    result: outcome.Outcome[T] | None = None

    def finish(self, result: outcome.Outcome[T]) -> None:
        self.result = result
        self.done.set()


CommitListener = Callable[[CommitInfo], None]


class DocumentActor:
    """Owns one SQLite file. Create through :class:`skald.supervisor.Supervisor`."""

    def __init__(
        self,
        db_id: str,
        path: Path,
        *,
        migrations: str = "document",
        mailbox_size: int = 1024,
        max_batch: int = 256,
        read_pool_size: int = 2,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = 5000,
        metrics: Metrics | None = None,
    ) -> None:
        self.db_id = db_id
        self.path = path
        self._migrations = migrations
        self._send, self._receive = trio.open_memory_channel[_Op[Any]](mailbox_size)
        self._max_batch = max_batch
        self._read_pool_size = read_pool_size
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._metrics = metrics
        self._writer: ConnectionWorker | None = None
        self._readers: list[ConnectionWorker] = []
        self._idle_readers: list[ConnectionWorker] = []
        self._reader_available = trio.Condition()
        self._listeners: list[CommitListener] = []
        self.write_hooks: list[Callable[[DocConnection], None]] = []
        """Run in the writer thread after every successful write op, inside its savepoint
        (e.g. the change feed keeps its triggers in step with the schema). A hook that
        raises fails that op alone."""
        self.holds = 0
        self.inflight = 1  # opening counts as work: a starting actor is never reaped
        self.last_active = trio.current_time()
        self.keep_alive_deadline = -math.inf
        self.on_idle: Callable[[], None] | None = None
        """Called when the actor may have become idle (the supervisor's reaper wakes on it)."""
        self.closing = trio.Event()
        """Set when the actor starts stopping; long-lived holders (SSE) end on it."""
        self.stopped = trio.Event()
        self.stop_reason = "shutdown"
        self.started_at = time.time()
        self.commits = 0

    # ---- lifecycle --------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the document (creating and migrating it), report ready, then serve the mailbox.

        Returns after :meth:`stop` once every queued op has been answered and
        every connection and thread is closed.
        """
        structlog.contextvars.bind_contextvars(db_id=self.db_id, request_id=None)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = ConnectionWorker(
            lambda: open_connection(
                self.path, synchronous=self._synchronous, busy_timeout_ms=self._busy_timeout_ms
            ),
            name=f"skald-writer-{self.db_id}",
        )
        started = False
        try:
            kind = self._migrations
            try:
                await self._writer.run(lambda conn: apply_migrations(conn, kind))
            except sqlite3.Error as exc:
                raise StorageError(f"cannot open document {self.db_id}: {exc}") from None
            if self._metrics:
                self._metrics.actors_open.inc()
                self._metrics.actors_started.inc()
            started = True
            self.inflight -= 1
            task_status.started()
            self._touch()
            log.debug("actor started")
            async with self._receive:
                await self._serve_mailbox()
        finally:
            self.closing.set()
            with trio.CancelScope(shield=True):
                for reader in self._readers:
                    await reader.aclose()
                await self._writer.aclose()
            if self._metrics:
                if started:
                    self._metrics.actors_open.dec()
                    self._metrics.actors_stopped.labels(self.stop_reason).inc()
                with contextlib.suppress(KeyError):
                    self._metrics.mailbox_depth.remove(self.db_id)
            self.stopped.set()
            log.debug("actor stopped", reason=self.stop_reason)

    def stop(self, reason: str = "shutdown") -> None:
        """Stop taking new ops; queued ones are still committed and answered."""
        if self.closing.is_set():
            return
        self.stop_reason = reason
        self.closing.set()
        self._send.close()

    # ---- holds and idleness -------------------------------------------------------------------------

    @contextmanager
    def hold(self) -> Iterator[DocumentActor]:
        """Keep the document open (no idle reaping) while inside the block."""
        if self.closing.is_set():
            raise DocumentUnavailable(f"document {self.db_id} is closing")
        self.holds += 1
        try:
            yield self
        finally:
            self.holds -= 1
            self._touch()

    def _touch(self) -> None:
        self.last_active = trio.current_time()
        if self.on_idle is not None and not (self.holds or self.inflight):
            self.on_idle()

    def keep_alive_until(self, deadline: float) -> None:
        """Do not reap before ``deadline`` (trio clock), e.g. while a lease is unexpired."""
        self.keep_alive_deadline = max(self.keep_alive_deadline, deadline)
        self._touch()

    def reap_deadline(self, idle_timeout: float) -> float:
        """Earliest trio time this actor could be reaped, or +inf while something holds it."""
        if self.holds or self.inflight or self.mailbox_depth or self.closing.is_set():
            return math.inf
        return max(self.last_active, self.keep_alive_deadline) + idle_timeout

    def idle_for(self, now: float) -> float:
        """Seconds this actor has been reapable, or 0 if something holds it open."""
        if self.holds or self.inflight or self.mailbox_depth or now < self.keep_alive_deadline:
            return 0.0
        return max(0.0, now - max(self.last_active, self.keep_alive_deadline))

    @property
    def mailbox_depth(self) -> int:
        return self._send.statistics().current_buffer_used

    # ---- listeners ----------------------------------------------------------------------------------

    def add_commit_listener(self, listener: CommitListener) -> Callable[[], None]:
        """Call ``listener(CommitInfo)`` after every commit; returns a function that removes it."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    # ---- submitting ops -----------------------------------------------------------------------------

    async def write(
        self, fn: Callable[[DocConnection], T], *, after_commit: Callable[[T], None] | None = None
    ) -> T:
        """Run ``fn`` in the next group commit; return its result once committed.

        Raises :class:`MailboxFull` (503) at once if the mailbox is full and
        :class:`DocumentUnavailable` if the actor is stopping. If the caller is
        cancelled after submitting, the op still runs and commits.
        """
        return await self._submit(_Op(fn, OpKind.WRITE, after_commit))

    async def exclusive(self, fn: Callable[[DocConnection], T]) -> T:
        """Run ``fn`` alone on the write connection, outside any transaction."""
        return await self._submit(_Op(fn, OpKind.EXCLUSIVE, None))

    async def _submit(self, op: _Op[T]) -> T:
        if self.closing.is_set():
            raise DocumentUnavailable(f"document {self.db_id} is closing")
        try:
            self._send.send_nowait(op)
        except trio.WouldBlock:
            if self._metrics:
                self._metrics.mailbox_full.inc()
            raise MailboxFull(f"document {self.db_id} has {self.mailbox_depth} queued operations") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise DocumentUnavailable(f"document {self.db_id} is closing") from None
        self.last_active = trio.current_time()
        await op.done.wait()
        assert op.result is not None
        return op.result.unwrap()

    async def read(self, fn: Callable[[DocConnection], T]) -> T:
        """Run ``fn`` on a read-only connection (waits for a free one).

        On cancellation the statement is interrupted; the connection is
        returned to the pool once its thread is done.
        """
        if self.closing.is_set():
            raise DocumentUnavailable(f"document {self.db_id} is closing")
        self.inflight += 1
        try:
            reader = await self._take_reader()
            try:
                return await reader.run(fn)
            except sqlite3.Error as exc:
                raise _translate(exc) from None
            finally:
                self._idle_readers.append(reader)
                async with self._reader_available:
                    self._reader_available.notify()
        finally:
            self.inflight -= 1
            self._touch()

    async def _take_reader(self) -> ConnectionWorker:
        async with self._reader_available:
            while True:
                if self._idle_readers:
                    return self._idle_readers.pop()
                if len(self._readers) < self._read_pool_size:
                    reader = ConnectionWorker(
                        lambda: open_connection(self.path, readonly=True, busy_timeout_ms=self._busy_timeout_ms),
                        name=f"skald-reader-{self.db_id}",
                    )
                    self._readers.append(reader)
                    return reader
                await self._reader_available.wait()

    # ---- the loop -----------------------------------------------------------------------------------

    async def _serve_mailbox(self) -> None:
        async for first in self._receive:
            batch: list[_Op[Any]] = [first]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            self.inflight += 1
            try:
                with trio.CancelScope(shield=True):
                    await self._run_batch(batch)
            finally:
                self.inflight -= 1
                self._touch()
                if self._metrics:
                    self._metrics.mailbox_depth.labels(self.db_id).set(self.mailbox_depth)

    async def _run_batch(self, batch: list[_Op[Any]]) -> None:
        writes: list[_Op[Any]] = []
        for op in batch:
            if op.kind is OpKind.EXCLUSIVE:
                await self._commit_writes(writes)
                writes = []
                await self._run_exclusive(op)
            else:
                writes.append(op)
        await self._commit_writes(writes)

    async def _run_exclusive(self, op: _Op[Any]) -> None:
        assert self._writer is not None
        try:
            result: outcome.Outcome[Any] = outcome.Value(await self._writer.run(op.fn))
        except Exception as exc:
            result = outcome.Error(_translate(exc))
        op.finish(result)

    async def _commit_writes(self, ops: list[_Op[Any]]) -> None:
        if not ops:
            return
        assert self._writer is not None
        fns = [op.fn for op in ops]
        started = time.perf_counter()
        try:
            hooks = tuple(self.write_hooks)
            results, tables = await self._writer.run(lambda conn: _group_commit(conn, fns, hooks))
        except Exception as exc:
            error = _translate(exc)
            log.error("group commit failed", error=str(exc), batch=len(ops))
            for op in ops:
                op.finish(outcome.Error(error))
            return
        self.commits += 1
        if self._metrics:
            self._metrics.commit_batch.observe(len(ops))
            self._metrics.commit_duration.observe(time.perf_counter() - started)
        for op, result in zip(ops, results, strict=True):
            if isinstance(result, outcome.Value) and op.after_commit is not None:
                try:
                    op.after_commit(result.value)
                except Exception:
                    log.exception("after_commit callback failed")
            elif isinstance(result, outcome.Error) and self._metrics:
                self._metrics.op_failures.labels("write").inc()
        if tables:
            info = CommitInfo(self.db_id, frozenset(tables), len(ops))
            for listener in list(self._listeners):
                try:
                    listener(info)
                except Exception:
                    log.exception("commit listener failed")
        for op, result in zip(ops, results, strict=True):
            if isinstance(result, outcome.Error):
                result = outcome.Error(_translate(result.error))
            op.finish(result)


def _group_commit(
    conn: DocConnection,
    fns: list[Callable[[DocConnection], Any]],
    hooks: tuple[Callable[[DocConnection], None], ...] = (),
) -> tuple[list[outcome.Outcome[Any]], set[str]]:
    """Run ``fns`` in one transaction, each in a savepoint; return per-op outcomes and tables written."""
    results: list[outcome.Outcome[Any]] = []
    tables: set[str] = set()
    conn.execute("BEGIN IMMEDIATE")
    try:
        for fn in fns:
            conn.written_tables = set()
            conn.execute("SAVEPOINT skald_op")
            try:
                value = fn(conn)
                for hook in hooks:
                    hook(conn)
            except Exception as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK TO skald_op")
                    conn.execute("RELEASE skald_op")
                else:  # the op ended the transaction itself: start a fresh one for the rest
                    conn.execute("BEGIN IMMEDIATE")
                results.append(outcome.Error(exc))
            else:
                conn.execute("RELEASE skald_op")
                tables |= conn.written_tables
                results.append(outcome.Value(value))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return results, tables


def _translate(exc: BaseException) -> BaseException:
    """sqlite3 errors that escape an op become skald errors at the actor boundary."""
    if isinstance(exc, SkaldError):
        return exc
    if isinstance(exc, sqlite3.Error):
        return StorageError(f"{type(exc).__name__}: {exc}")
    return exc
