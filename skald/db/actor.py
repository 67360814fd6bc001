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
* **loan** (:meth:`DocumentActor.lend_writer`): queued like a write; when its
  turn comes the actor lends its write connection to one holder (an
  interactive transaction) until the holder ends it or its deadline passes,
  then rolls back whatever is still open. Other writes queue in the mailbox
  meanwhile (bounded: a full mailbox answers 503). :meth:`lend_reader` lends a
  read-only connection of the pool the same way (a read transaction).

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
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

import outcome
import structlog
import trio

from skald.db.connection import DocConnection, open_connection
from skald.db.migrations import apply_migrations
from skald.db.sqlscope import StatementClass
from skald.db.worker import ConnectionWorker, WorkerPool
from skald.errors import (
    DocumentUnavailable,
    MailboxFull,
    SkaldError,
    StorageError,
    TransactionRolledBack,
)
from skald.metrics import Metrics

T = TypeVar("T")
log = structlog.get_logger("skald.db.actor")
STATEMENT_MEMO_SIZE = 512
CONNECTION_IDLE_SECONDS = 30.0
"""A connection (the writer or a reader) unused for this long is closed; the next op opens it again.
An open document costs its connections' memory (SQLite's schema and page cache: ~100-300 KiB each)
only while it is in use."""


class OpKind(enum.Enum):
    WRITE = "write"
    EXCLUSIVE = "exclusive"
    LEND = "lend"


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
    lend_seconds: float = 0.0
    abandoned: bool = False
    """The submitter was cancelled before its turn (a loan nobody would end is not made)."""

    def finish(self, result: outcome.Outcome[T]) -> None:
        self.result = result
        self.done.set()


CommitListener = Callable[[CommitInfo], None]


class QueuedWrite(Generic[T]):
    """A write op in the mailbox (:meth:`DocumentActor.enqueue_write`); it runs and commits
    whether or not anyone awaits :meth:`result`."""

    def __init__(self, op: _Op[T]) -> None:
        self._op = op

    @property
    def done(self) -> bool:
        """True once :meth:`result` would return without waiting."""
        return self._op.done.is_set()

    async def result(self) -> T:
        """The op's result once its transaction committed, or its error."""
        await self._op.done.wait()
        assert self._op.result is not None
        return self._op.result.unwrap()


class DocumentActor:
    """Owns one SQLite file. Create through :class:`skald.db.supervisor.Supervisor`."""

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
        cache_kib: int | None = None,
        connection_idle_seconds: float = CONNECTION_IDLE_SECONDS,
        writer_pool: WorkerPool | None = None,
        reader_pool: WorkerPool | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """``writer_pool`` / ``reader_pool``: the threads that run this document's write and read
        connections (the supervisor shares one of each among all documents, so a slow read never
        holds a thread a write needs); without them the actor runs a pool of its own, with a thread
        for each of its connections, closed when it stops. ``cache_kib``: SQLite's page cache per
        connection (``PRAGMA cache_size``; None keeps SQLite's default, 2 MiB)."""
        self.db_id = db_id
        self.path = path
        self._migrations = migrations
        self._send, self._receive = trio.open_memory_channel[_Op[Any]](mailbox_size)
        self._max_batch = max_batch
        self._read_pool_size = read_pool_size
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._cache_kib = cache_kib
        self._idle_seconds = connection_idle_seconds
        self._writer_idle_since: float | None = None
        """When the writer's connection was last used (None: it is not open)."""
        self._writer_pool = writer_pool
        self._reader_pool = reader_pool
        self._metrics = metrics
        self._writer: ConnectionWorker | None = None
        self._readers: list[ConnectionWorker] = []
        self._idle_readers: list[ConnectionWorker] = []
        """Readers not in use, the one returned last at the end (taken first: its cache is warm)."""
        self._reader_idle_since: dict[ConnectionWorker, float] = {}
        self._mailbox_wait: trio.CancelScope | None = None
        self._reader_available = trio.Condition()
        self._listeners: list[CommitListener] = []
        self.write_hooks: list[Callable[[DocConnection], None]] = []
        """Run in the writer thread after every successful write op, inside its savepoint
        (e.g. the change feed keeps its triggers in step with the schema). A hook that
        raises fails that op alone."""
        self.commit_gate: Callable[[DocumentActor], Awaitable[None]] | None = None
        """Awaited after each group commit, before its writes are acknowledged (a cluster node checks it
        still owns the document and, with ``durability = "replicated"``, waits for Litestream to confirm
        the transaction is in S3: one wait per group commit). If it raises, every write of the batch is
        answered with that error instead of its result: committed locally, but not acknowledged."""
        self.holds = 0
        self.inflight = 1  # opening counts as work: a starting actor is never reaped
        self.last_active = trio.current_time()
        self.keep_alive_deadline = -math.inf
        self.on_idle: Callable[[], None] | None = None
        """Called when the actor may have become idle (the supervisor's reaper wakes on it)."""
        self.reap_scheduled = False
        """The supervisor's reaper has this actor lined up (see Supervisor._schedule_reap)."""
        self.closing = trio.Event()
        """Set when the actor starts stopping; long-lived holders (SSE) end on it."""
        self.stopped = trio.Event()
        self.stop_reason = "shutdown"
        self.started_at = time.time()
        self.commits = 0
        self.schema_generation = 0
        """Bumped (on the event loop) after every commit whose ops compiled a schema change, after
        every exclusive op and whenever the writer is replaced: what was learnt about a SQL text
        at generation N (skald.query.service's statement classes) holds while it is still N.
        Readers never change the schema (``mode=ro``); one process owns the file."""
        self.statement_classes: dict[str, tuple[int, StatementClass]] = {}
        """SQL text -> (schema generation, class): :func:`skald.query.service.classify`'s memo,
        bounded by :data:`STATEMENT_MEMO_SIZE` (oldest forgotten first)."""
        self._writer_schema_changes = 0
        self._loan: WriterLoan | None = None

    # ---- lifecycle --------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the document (creating and migrating it), report ready, then serve the mailbox.

        Returns after :meth:`stop` once every queued op has been answered and
        every connection and thread is closed.
        """
        structlog.contextvars.bind_contextvars(db_id=self.db_id, request_id=None)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        own_pool: WorkerPool | None = None
        if self._writer_pool is None or self._reader_pool is None:
            # a thread per connection, as many as this actor can open at once
            own_pool = WorkerPool(1 + self._read_pool_size, name=f"skald-doc-{self.db_id}")
            self._writer_pool = self._writer_pool or own_pool
            self._reader_pool = self._reader_pool or own_pool
        self._writer = self._open_writer()
        started = False
        try:
            kind = self._migrations
            try:
                await self._writer.run(lambda conn: apply_migrations(conn, kind))
            except sqlite3.Error as exc:
                raise StorageError(f"cannot open document {self.db_id}: {exc}") from None
            self._writer_idle_since = trio.current_time()
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
                if own_pool is not None:
                    await own_pool.aclose()
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
        if self._loan is not None:
            self._loan.end("closing")  # rolled back by the actor; queued writes then commit

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

    async def enqueue_write(
        self, fn: Callable[[DocConnection], T], *, after_commit: Callable[[T], None] | None = None
    ) -> QueuedWrite[T]:
        """Queue ``fn`` for a group commit, waiting for room in the mailbox; return once queued.

        The streaming routes' twin of :meth:`write`: one task can keep many writes in flight,
        queued in the order it calls this, and await each :meth:`QueuedWrite.result` later. A full
        mailbox makes it wait (backpressure on the stream) instead of failing with 503.
        Raises :class:`DocumentUnavailable` if the actor is stopping.
        """
        op = _Op(fn, OpKind.WRITE, after_commit)
        if self.closing.is_set():
            raise DocumentUnavailable(f"document {self.db_id} is closing")
        try:
            await self._send.send(op)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise DocumentUnavailable(f"document {self.db_id} is closing") from None
        self.last_active = trio.current_time()
        return QueuedWrite(op)

    async def lend_writer(self, seconds: float) -> WriterLoan:
        """Wait for the write connection's turn, then hold it alone for at most ``seconds``.

        Queued like a write (:class:`MailboxFull` when the mailbox is full). The loan ends
        when the holder commits, rolls back or calls :meth:`WriterLoan.end`, when ``seconds``
        have passed since it was granted, or when the actor stops; whatever transaction is
        still open then is rolled back, and queued writes run again in group commits. If the
        caller is cancelled while waiting, no loan is made (or the one just made is ended).
        """
        op: _Op[Any] = _Op(_no_op, OpKind.LEND, None, lend_seconds=seconds)
        try:
            loan: WriterLoan = await self._submit(op)
        except BaseException:
            op.abandoned = True
            if op.result is not None and isinstance(op.result, outcome.Value):
                op.result.value.end("abandoned")
            raise
        return loan

    async def lend_reader(self) -> ReaderLoan:
        """Take a read-only connection out of the pool until :meth:`ReaderLoan.aclose`.

        The document stays open (not reaped) while lent. Waits for a free connection.
        """
        if self.closing.is_set():
            raise DocumentUnavailable(f"document {self.db_id} is closing")
        self.inflight += 1
        try:
            reader = await self._take_reader()
        except BaseException:
            self.inflight -= 1
            raise
        return ReaderLoan(self, reader)

    async def _return_reader(self, reader: ConnectionWorker) -> None:
        self._put_reader(reader)
        self.inflight -= 1
        async with self._reader_available:
            self._reader_available.notify()
        self._touch()

    def _put_reader(self, reader: ConnectionWorker) -> None:
        if reader not in self._readers:
            return  # closed meanwhile (the actor is stopping)
        self._idle_readers.append(reader)
        now = trio.current_time()
        self._reader_idle_since[reader] = now
        if self._mailbox_wait is not None:  # the actor waits for ops: wake it to close this one later
            self._mailbox_wait.deadline = min(self._mailbox_wait.deadline, now + self._idle_seconds)

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
        return await QueuedWrite(op).result()

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
                self._put_reader(reader)
                async with self._reader_available:
                    self._reader_available.notify()
        finally:
            self.inflight -= 1
            self._touch()

    async def _take_reader(self) -> ConnectionWorker:
        async with self._reader_available:
            while True:
                if self._idle_readers:
                    reader = self._idle_readers.pop()
                    del self._reader_idle_since[reader]
                    return reader
                if len(self._readers) < self._read_pool_size:
                    assert self._reader_pool is not None
                    reader = ConnectionWorker(
                        lambda: open_connection(
                            self.path, readonly=True, busy_timeout_ms=self._busy_timeout_ms,
                            cache_kib=self._cache_kib,
                        ),
                        name=f"skald-reader-{self.db_id}",
                        pool=self._reader_pool,
                    )
                    self._readers.append(reader)
                    return reader
                await self._reader_available.wait()

    # ---- the loop -----------------------------------------------------------------------------------

    async def _next_op(self) -> _Op[Any] | None:
        """The next op, or None at the end of the mailbox; closes idle connections while it waits."""
        while True:
            with trio.CancelScope(deadline=self._connections_expire_at()) as wait:
                self._mailbox_wait = wait
                try:
                    return await self._receive.receive()
                except trio.EndOfChannel:
                    return None
                finally:
                    self._mailbox_wait = None
            await self._close_idle_connections()

    def _connections_expire_at(self) -> float:
        since = list(self._reader_idle_since.values())
        if self._writer_idle_since is not None:
            since.append(self._writer_idle_since)
        return min(since, default=math.inf) + self._idle_seconds

    async def _close_idle_connections(self) -> None:
        """Close the connections unused for ``connection_idle_seconds`` (memory, file descriptors).

        Runs on the actor's task between batches: no op, loan or commit is using the writer then.
        """
        now = trio.current_time()
        if self._writer_idle_since is not None and self._writer_idle_since + self._idle_seconds <= now:
            old, self._writer = self._writer, self._open_writer()  # opens its connection on first use
            self._writer_idle_since = None
            self._writer_schema_changes = 0  # the new connection counts from zero; the schema is the same
            if old is not None:
                await old.aclose()
        expired = [r for r, since in self._reader_idle_since.items() if since + self._idle_seconds <= now]
        for reader in expired:  # out of every list first: nobody can take it while it closes
            del self._reader_idle_since[reader]
            self._idle_readers.remove(reader)
            self._readers.remove(reader)
        for reader in expired:
            await reader.aclose()

    async def _serve_mailbox(self) -> None:
        while (first := await self._next_op()) is not None:
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
                self._writer_idle_since = trio.current_time()
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
            elif op.kind is OpKind.LEND:
                await self._commit_writes(writes)
                writes = []
                await self._lend(op)
            else:
                writes.append(op)
        await self._commit_writes(writes)

    async def _lend(self, op: _Op[Any]) -> None:
        """Lend the writer to ``op``'s submitter until the loan ends (see :meth:`lend_writer`)."""
        assert self._writer is not None
        if op.abandoned:
            op.finish(outcome.Error(DocumentUnavailable("the loan was abandoned")))
            return
        if self.closing.is_set():
            op.finish(outcome.Error(DocumentUnavailable(f"document {self.db_id} is closing")))
            return
        loan = WriterLoan(
            self._writer, trio.current_time() + op.lend_seconds, tuple(self.write_hooks), self._gate_commit
        )
        self._loan = loan
        op.finish(outcome.Value(loan))
        try:
            with trio.move_on_at(loan.deadline):
                await loan.ended.wait()
            tables = await loan.finish("timeout")
        finally:
            self._loan = None
            # whatever the holder ran (DDL included) is committed or gone now: forget what was
            # learnt under the schema before it (the writer's own count catches up at the next commit)
            self._schema_changed()
        if tables:
            self.commits += 1
            self._notify(CommitInfo(self.db_id, frozenset(tables), 1))

    async def _gate_commit(self) -> None:
        """A lent transaction committed: the same gate as a group commit's before it is acknowledged."""
        if self.commit_gate is not None:
            await self.commit_gate(self)

    def _notify(self, info: CommitInfo) -> None:
        for listener in list(self._listeners):
            try:
                listener(info)
            except Exception:
                log.exception("commit listener failed")

    async def _run_exclusive(self, op: _Op[Any]) -> None:
        assert self._writer is not None
        try:
            result: outcome.Outcome[Any] = outcome.Value(await self._writer.run(op.fn))
        except Exception as exc:
            result = outcome.Error(_translate(exc))
        self._schema_changed()  # migrations, restores, VACUUM: assume the worst
        op.finish(result)

    def _schema_changed(self) -> None:
        self.schema_generation += 1
        self.statement_classes.clear()

    def _note_schema(self, changes: int) -> None:
        """After a commit: forget what was learnt under the old schema if the writer compiled DDL."""
        if changes != self._writer_schema_changes:
            self._writer_schema_changes = changes
            self._schema_changed()

    async def _commit_writes(self, ops: list[_Op[Any]]) -> None:
        if not ops:
            return
        assert self._writer is not None
        fns = [op.fn for op in ops]
        started = time.perf_counter()
        hooks = tuple(self.write_hooks)
        try:
            batch = await self._writer.run(lambda conn: _group_commit(conn, fns, hooks))
        except Exception as exc:  # the worker itself failed: nothing of this batch was committed
            batch = _BatchResult([outcome.Error(_connection_failed(exc))] * len(ops), set(), 0, exc)
        # before anything else runs on the event loop: no request classifies against a stale memo
        self._note_schema(batch.schema_changes)
        if batch.failure is not None:
            log.error("group commit failed", error=repr(batch.failure), batch=len(ops))
            await self._restart_writer()
        if batch.commits:
            self.commits += 1
            if self._metrics:
                self._metrics.commit_batch.observe(len(ops))
                self._metrics.commit_duration.observe(time.perf_counter() - started)
            if self.commit_gate is not None:
                try:
                    await self.commit_gate(self)
                except Exception as exc:
                    batch.results = [
                        outcome.Error(exc) if isinstance(r, outcome.Value) else r for r in batch.results
                    ]
        for op, result in zip(ops, batch.results, strict=True):
            if isinstance(result, outcome.Value) and op.after_commit is not None:
                try:
                    op.after_commit(result.value)
                except Exception:
                    log.exception("after_commit callback failed")
            elif isinstance(result, outcome.Error) and self._metrics:
                self._metrics.op_failures.labels("write").inc()
        if batch.tables:
            self._notify(CommitInfo(self.db_id, frozenset(batch.tables), len(ops)))
        for op, result in zip(ops, batch.results, strict=True):
            if isinstance(result, outcome.Error):
                result = outcome.Error(_translate(result.error))
            op.finish(result)

    def _open_writer(self) -> ConnectionWorker:
        assert self._writer_pool is not None
        return ConnectionWorker(
            lambda: open_connection(
                self.path, synchronous=self._synchronous, busy_timeout_ms=self._busy_timeout_ms,
                cache_kib=self._cache_kib,
            ),
            name=f"skald-writer-{self.db_id}",
            pool=self._writer_pool,
        )

    async def _restart_writer(self) -> None:
        """Replace the write connection and its thread after the connection itself failed.

        Closing the old connection rolls back whatever it had open, so nothing half-written
        stays. If the document cannot be opened again the actor stops (reason ``failed``):
        queued ops are answered with the error and the supervisor starts a fresh actor for
        the next request.
        """
        old = self._writer
        self._writer = self._open_writer()
        self._writer_schema_changes = 0  # the new connection counts from zero
        self._schema_changed()
        if old is not None:
            await old.aclose()
        try:
            await self._writer.run(lambda conn: conn.execute("SELECT 1").fetchone())
        except Exception as exc:
            log.error("cannot reopen document", error=repr(exc))
            self.stop("failed")
            return
        if self._metrics:
            self._metrics.writer_restarts.inc()
        log.warning("write connection replaced")


class LoanEnded(SkaldError):
    """The lent connection was taken back (deadline, actor stopping); its transaction rolled back."""

    status = 409
    code = "transaction_timeout"
    title = "The transaction was rolled back: it held the document's writer too long"


class WriterLoan:
    """The document's write connection, lent to one holder (see :meth:`DocumentActor.lend_writer`).

    The holder runs plain ``fn(conn)`` functions on the writer's thread with :meth:`run`, one
    at a time, and issues ``BEGIN``/``COMMIT``/``ROLLBACK`` itself. The loan ends when a
    function leaves the connection outside a transaction after one was opened (commit or
    rollback), when :meth:`end` is called, or when the actor takes it back at the deadline.
    """

    def __init__(
        self,
        worker: ConnectionWorker,
        deadline: float,
        hooks: tuple[Callable[[DocConnection], None], ...],
        gate: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._worker = worker
        self._gate = gate
        self.deadline = deadline
        self._hooks = hooks
        self._lock = trio.Lock()
        self.ended = trio.Event()
        self.end_reason: str | None = None
        self._began = False
        self._pending: set[str] = set()  # tables written by the open transaction
        self._committed: set[str] = set()

    @property
    def active(self) -> bool:
        return not self.ended.is_set()

    def end(self, reason: str = "released") -> None:
        """Give the connection back; the actor rolls back an open transaction."""
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()

    async def run(self, fn: Callable[[DocConnection], T], *, statement: bool = True) -> T:
        """Run ``fn`` on the lent connection; :class:`LoanEnded` once the loan is over.

        With ``statement=True`` (user SQL) ``fn`` runs in a savepoint with the actor's write
        hooks after it, so a failing statement or hook undoes that statement alone, as a
        group-committed write would; the tables it wrote are reported to commit listeners
        when the transaction commits.
        """
        async with self._lock:
            if self.ended.is_set():
                raise LoanEnded(f"the transaction ended ({self.end_reason}); it was rolled back")
            hooks = self._hooks

            def call(conn: DocConnection) -> tuple[T, set[str], bool]:
                conn.written_tables = set()
                if not (statement and conn.in_transaction):
                    value = fn(conn)
                    return value, set(conn.written_tables), conn.in_transaction
                conn.execute("SAVEPOINT skald_stmt")
                try:
                    value = fn(conn)
                    for hook in hooks:
                        hook(conn)
                except Exception:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK TO skald_stmt")
                        conn.execute("RELEASE skald_stmt")
                    raise
                conn.execute("RELEASE skald_stmt")
                return value, set(conn.written_tables), True

            try:
                value, written, in_transaction = await self._worker.run(call)
            except BaseException:
                in_transaction = await self._in_transaction()
                if self._began and not in_transaction:  # the statement ended the transaction
                    self._pending.clear()
                    self.end("rolled back")
                raise
            if in_transaction:
                self._began = True
                self._pending |= written
            elif self._began:
                # COMMIT (or ROLLBACK, which the caller runs with statement=False and no tables
                # pending on our side: it clears them first).
                self._committed |= self._pending
                self._pending.clear()
                self.end("finished")
            return value

    async def confirm_commit(self) -> None:
        """After the holder's ``COMMIT``: pass the actor's commit gate (in a cluster: still the owner, and
        replicated when durability asks for it) before the commit is acknowledged. Raises what the gate
        raises (the client must not be told its transaction is safe)."""
        if self._gate is not None:
            await self._gate()

    def discard_pending(self) -> None:
        """Forget the open transaction's tables (the holder is about to roll it back)."""
        self._pending.clear()

    async def _in_transaction(self) -> bool:
        with trio.CancelScope(shield=True):
            try:
                return await self._worker.run(lambda conn: conn.in_transaction)
            except Exception:
                pass
        return False

    async def finish(self, reason: str) -> set[str]:
        """(Actor side) end the loan, wait for a running function, roll back; the committed tables."""
        self.end(reason)
        async with self._lock:
            with trio.CancelScope(shield=True):
                try:
                    await self._worker.run(_rollback_open)
                except Exception:
                    log.exception("rolling back a lent transaction failed")
        return self._committed


class ReaderLoan:
    """A read-only connection of the pool, lent until :meth:`aclose` (see :meth:`DocumentActor.lend_reader`)."""

    def __init__(self, actor: DocumentActor, worker: ConnectionWorker) -> None:
        self._actor = actor
        self._worker: ConnectionWorker | None = worker
        self._lock = trio.Lock()

    async def run(self, fn: Callable[[DocConnection], T]) -> T:
        async with self._lock:
            if self._worker is None:
                raise LoanEnded("the read transaction ended")
            try:
                return await self._worker.run(fn)
            except sqlite3.Error as exc:
                raise _translate(exc) from None
            except trio.ClosedResourceError:  # the actor stopped and closed its connections
                raise DocumentUnavailable(f"document {self._actor.db_id} is closing") from None

    async def aclose(self) -> None:
        """Roll back an open read transaction and give the connection back to the pool."""
        async with self._lock:
            worker, self._worker = self._worker, None
            if worker is None:
                return
            with trio.CancelScope(shield=True):
                try:
                    await worker.run(_rollback_open)
                except trio.ClosedResourceError:
                    pass  # the actor stopped first: closing the connection ended the transaction
                except Exception:
                    log.exception("ending a lent read transaction failed")
                await self._actor._return_reader(worker)


def _rollback_open(conn: DocConnection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _no_op(conn: DocConnection) -> None:
    return None


@dataclasses.dataclass
class _BatchResult:
    """What :func:`_group_commit` did: one outcome per op (``Value`` only if committed)."""

    results: list[outcome.Outcome[Any]]
    tables: set[str]
    commits: int
    failure: BaseException | None
    """Set when the connection itself failed (BEGIN/COMMIT/savepoint bookkeeping, a closed
    connection, an op raising past ``Exception``): every op not yet committed was answered
    with it and the writer should be replaced."""
    schema_changes: int = -1
    """The writer's :attr:`DocConnection.schema_changes` after the batch (-1: unknown)."""


def _group_commit(
    conn: DocConnection,
    fns: list[Callable[[DocConnection], Any]],
    hooks: tuple[Callable[[DocConnection], None], ...] = (),
) -> _BatchResult:
    """Run ``fns`` in one transaction, each in a savepoint, and commit.

    An op that fails inside its savepoint is rolled back to it and fails alone.
    An op that ends the whole transaction (``INSERT OR ROLLBACK``, a trigger's
    ``RAISE(ROLLBACK)``, SQLite's own rollback on SQLITE_FULL or an I/O error)
    took every op before it down too: it fails alone with
    :class:`TransactionRolledBack`, the ops before it are run again in a fresh
    transaction and committed, and the rest of the batch continues in the next
    one. An op that behaves the same when run again therefore runs at most twice,
    so a client sending rollbacks cannot make a batch quadratic (one that ends the
    transaction only on its second run shrinks the prefix again, and so on). Ops
    must be safe to run again after a rollback: plain
    functions on the connection, no side effects outside it.
    """
    results: list[outcome.Outcome[Any] | None] = [None] * len(fns)
    ended: set[int] = set()
    tables: set[str] = set()
    commits = 0
    start, stop = 0, len(fns)  # the ops of the current transaction: fns[start:stop]
    failure: BaseException | None = None
    while start < len(fns):
        if all(index in ended for index in range(start, stop)):
            start, stop = stop, len(fns)
            continue
        written: set[str] = set()
        try:
            conn.execute("BEGIN IMMEDIATE")
            lost = _run_ops(conn, fns, hooks, range(start, stop), ended, results, written)
            if lost is None:
                conn.execute("COMMIT")
        except BaseException as exc:  # the writer thread must answer every op, whatever broke
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            failure = exc
            break
        if lost is None:
            commits += 1
            tables |= written
            start, stop = stop, len(fns)
        else:  # fns[start:lost] were rolled back with it: run them again, alone, then go on
            ended.add(lost)
            stop = lost
    if failure is not None:
        error = _connection_failed(failure)
        for index in range(start, len(fns)):
            if index not in ended:
                results[index] = outcome.Error(error)
    final = [result for result in results if result is not None]
    assert len(final) == len(fns)
    return _BatchResult(final, tables, commits, failure, conn.schema_changes)


def _run_ops(
    conn: DocConnection,
    fns: list[Callable[[DocConnection], Any]],
    hooks: tuple[Callable[[DocConnection], None], ...],
    indexes: range,
    ended: set[int],
    results: list[outcome.Outcome[Any] | None],
    tables: set[str],
) -> int | None:
    """Run ``fns[indexes]`` (but not ``ended``) in the open transaction; the index of an op that ended it."""
    for index in indexes:
        if index in ended:
            continue
        conn.written_tables = set()
        conn.execute("SAVEPOINT skald_op")
        try:
            value = fns[index](conn)
            for hook in hooks:
                hook(conn)
        except Exception as exc:
            if not conn.in_transaction:
                results[index] = outcome.Error(_rolled_back(exc))
                return index
            conn.execute("ROLLBACK TO skald_op")
            conn.execute("RELEASE skald_op")
            results[index] = outcome.Error(exc)
        else:
            conn.execute("RELEASE skald_op")
            tables |= conn.written_tables
            results[index] = outcome.Value(value)
    return None


def _connection_failed(exc: BaseException) -> DocumentUnavailable:
    # 503 with Retry-After: the actor replaces the connection before its next batch, so a
    # retry is expected to work; the write itself was rolled back with the connection.
    error = DocumentUnavailable(
        f"the document's write connection failed ({type(exc).__name__}: {exc}); "
        "this write was not committed, retry it"
    )
    error.__cause__ = exc
    return error


def _rolled_back(exc: Exception) -> Exception:
    """The answer for an op that ended the whole transaction."""
    cause = sqlite_cause(exc)
    name = getattr(cause, "sqlite_errorname", None)
    if name == "SQLITE_INTERRUPT":
        # skald stopped it (a query's time limit): its own error says more than the rollback
        # SQLite makes of an interrupted write.
        return exc
    extra: dict[str, Any] = {}
    if isinstance(exc, SkaldError):
        reason = exc.detail
        extra.update(exc.extra)  # e.g. a batch's statement_index
    elif isinstance(exc, sqlite3.Error):
        reason = str(exc)
    else:
        reason = f"{type(exc).__name__}: {exc}"
    if name:
        extra["sqlite_error"] = name
    error = TransactionRolledBack(
        f"{reason}; this write ended its transaction, so it was not applied "
        "(the other writes committed with it were run again without it)",
        **extra,
    )
    error.__cause__ = exc
    return error


def sqlite_cause(exc: BaseException) -> sqlite3.Error | None:
    """The sqlite3 error behind ``exc`` (services translate with ``from None``, which keeps the context)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None or isinstance(seen, sqlite3.Error):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _translate(exc: BaseException) -> BaseException:
    """sqlite3 errors that escape an op become skald errors at the actor boundary."""
    if isinstance(exc, SkaldError):
        return exc
    if isinstance(exc, sqlite3.Error):
        return StorageError(f"{type(exc).__name__}: {exc}")
    return exc
