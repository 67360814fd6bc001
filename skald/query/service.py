"""The query service: run one SQL statement (or a batch) on a document, bounded and scoped.

No HTTP here. The flow for one statement:

1. :func:`classify` prepares ``EXPLAIN <sql>`` on a read-only connection under
   a recording authorizer policy. ``EXPLAIN`` compiles the statement (and the
   triggers it would fire) without running it, so every authorizer callback
   fires and nothing is executed. The highest class seen is the statement's
   class; a FORBIDDEN action is denied at once (some PRAGMAs act while being
   compiled, so they never get that far). ``VACUUM`` reaches no authorizer
   callback and is recognised by its ``Vacuum`` opcode; a statement that
   reaches no callback at all is treated as ADMIN.
2. The route checks the caller holds ``class.action``.
3. :func:`execute` runs it: READ statements on the actor's read-only pool
   (``actor.read``, their own threads: a runaway read never stalls writers),
   anything else as one ``actor.write`` op (group commit). Either way the
   statement runs under an enforcing policy that denies anything above its
   class, so a schema change between steps 1 and 3 cannot widen what runs.

Bounds: a progress handler stops the statement after the time limit
(:class:`QueryTimeout`); rows and approximate JSON bytes are capped while
fetching (``truncated: true``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import sqlite3
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from skald.config import Settings
from skald.db.actor import STATEMENT_MEMO_SIZE, DocumentActor
from skald.db.connection import DocConnection
from skald.db.sqlscope import ClassRecorder, StatementClass
from skald.db.supervisor import Supervisor
from skald.errors import BadRequest, Conflict, Forbidden, ScopeDenied
from skald.query.values import (
    InvalidArgument,
    JSONValue,
    Params,
    approx_size,
    encode_value,
    result_hash,
)

# ---- errors --------------------------------------------------------------------------------------


class MultipleStatements(BadRequest):
    code = "multiple_statements"
    title = "Exactly one SQL statement is allowed"


class EmptyStatement(BadRequest):
    code = "empty_statement"
    title = "The SQL text is empty"


class SQLError(BadRequest):
    code = "sql_error"
    title = "SQLite rejected the statement"


class ConstraintViolation(Conflict):
    code = "constraint_violation"
    title = "A constraint failed"


class StatementForbidden(Forbidden):
    code = "statement_forbidden"
    title = "This statement is refused for every token"


class QueryTimeout(BadRequest):
    code = "query_timeout"
    title = "The query ran past its time limit"


class ValueTooLarge(BadRequest):
    code = "value_too_large"
    title = "The statement built a value larger than the server allows"


class NotReadOnly(BadRequest):
    code = "not_read_only"
    title = "Only read-only statements can be watched"


# ---- limits --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Limits:
    timeout_ms: int
    max_rows: int
    max_bytes: int
    max_value_bytes: int = 16 * 1024 * 1024

    @classmethod
    def from_request(cls, settings: Settings, options: Mapping[str, Any] | None) -> Limits:
        """Server limits, lowered (never raised) by ``options.timeout_ms`` / ``options.max_rows``."""
        options = options or {}
        timeout = settings.query_timeout_ms
        rows = settings.query_max_rows
        if options.get("timeout_ms") is not None:
            timeout = min(timeout, max(1, int(options["timeout_ms"])))
        if options.get("max_rows") is not None:
            rows = min(rows, max(0, int(options["max_rows"])))
        return cls(timeout, rows, settings.query_max_bytes, settings.query_max_value_bytes)


@dataclasses.dataclass
class StatementResult:
    columns: list[str]
    rows: list[list[JSONValue]]
    truncated: bool
    changes: int
    last_insert_rowid: int | None
    read_tables: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "rows": self.rows,
            "row_count": len(self.rows),
            "truncated": self.truncated,
            "changes": self.changes,
            "last_insert_rowid": self.last_insert_rowid,
        }

    @functools.cached_property
    def event_json(self) -> bytes:
        """The watch event payload (columns, rows, row_count, truncated, result_hash), encoded once."""
        payload = {
            "columns": self.columns,
            "rows": self.rows,
            "row_count": len(self.rows),
            "truncated": self.truncated,
            "result_hash": self.hash,
        }
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @functools.cached_property
    def hash(self) -> str:
        """``result_hash``; computed once (watches of one query share the result)."""
        return result_hash(self.columns, self.rows)


@dataclasses.dataclass(frozen=True)
class Statement:
    sql: str
    params: Params


_REUSED_TEXTS = 1024  # distinct texts one ReusedTexts keeps what it learnt about (then: prepared afresh)
_stream_numbers = itertools.count()


@dataclasses.dataclass
class ReusedTexts:
    """Prepared statements that the lines of one NDJSON query stream, or the single statements of one
    open document, share (:func:`run_statement`).

    User SQL was prepared afresh every run (``execute_untrusted``): SQLite consults the authorizer
    only while it prepares, and a cached statement would skip the policy. But a stream's lines and
    an application's requests mostly repeat a few texts (``INSERT INTO t VALUES (?)`` ten thousand
    times), and preparing one (every authorizer callback a Python call taking the GIL from the
    event loop) was most of a stream line's cost. Reuse is safe when the cached statement was
    prepared under the *same* enforcing policy: the text skald runs starts with a comment naming
    this set and the statement's class, so a statement is only ever handed back to a statement of
    the same class, whose policy allowed every action it compiled to (a denied prepare is never
    cached). A schema change makes SQLite prepare it again, under the policy of the statement that
    runs it. The token's own scopes are checked as before (the class's action, per request or
    line). Only READ and WRITE statements reuse: ADMIN ones (DDL) are prepared afresh every time.

    What the authorizer taught about a text (does it write rows, insert rows) is kept in ``seen``,
    for runs whose statement came from the cache and reached no callback; the tables written and
    read are remembered by :meth:`DocConnection.execute`, as for skald's own statements.
    """

    prefix: str
    seen: dict[tuple[str, StatementClass], tuple[bool, bool]] = dataclasses.field(default_factory=dict)

    @classmethod
    def fresh(cls) -> ReusedTexts:
        return cls(f"/* skald-stream {next(_stream_numbers)} ")

    def text(self, sql: str, allowed: StatementClass) -> str | None:
        """What to run for ``sql`` under ``allowed`` (None: run it as untrusted, never reused)."""
        if allowed not in (StatementClass.READ, StatementClass.WRITE):
            return None
        if (sql, allowed) not in self.seen and len(self.seen) >= _REUSED_TEXTS:
            return None
        # Leading, as execute_untrusted's mark (ALTER TABLE keeps no leading comment in the schema).
        return f"{self.prefix}{allowed.name} */ {sql}"

    def learn(self, sql: str, allowed: StatementClass, recorder: ClassRecorder) -> tuple[bool, bool]:
        """``(writes, inserts)`` of ``sql``: what ``recorder`` saw if it was prepared now, else what was kept."""
        key = (sql, allowed)
        if recorder.calls and not recorder.denied:
            self.seen[key] = (recorder.writes, recorder.inserts)
            return recorder.writes, recorder.inserts
        return self.seen.get(key, (recorder.writes, recorder.inserts))


# ---- in the connection's thread ------------------------------------------------------------------


def classify_sync(conn: DocConnection, stmt: Statement) -> StatementClass:
    """Class of ``stmt`` (see module docs). Raises the skald error a bad statement deserves."""
    sql = stmt.sql.strip()
    if not sql.rstrip(";").strip():
        raise EmptyStatement()
    upper = sql[:32].upper()
    # A user's own EXPLAIN is classified as the statement it explains (it is authorized alike).
    inner = sql
    if upper.startswith("EXPLAIN"):
        inner = sql[len("EXPLAIN") :].lstrip()
        if inner[:10].upper().startswith("QUERY"):
            inner = inner[5:].lstrip()[4:].lstrip()  # QUERY PLAN
    recorder = ClassRecorder(StatementClass.ADMIN, shadow_tables(conn))
    try:
        with conn.policy(recorder):
            opcodes = {row[1] for row in conn.execute_untrusted("EXPLAIN " + inner, stmt.params)}
    except sqlite3.Error as exc:
        if recorder.denied:
            raise StatementForbidden(f"refused: {', '.join(recorder.denied)}") from None
        raise _translate_error(exc) from None
    if "Vacuum" in opcodes:
        raise StatementForbidden("refused: VACUUM")
    if recorder.highest is None:
        return StatementClass.ADMIN
    if recorder.highest == StatementClass.READ and "OpenWrite" in opcodes:
        return StatementClass.ADMIN
    return recorder.highest


def run_statement(
    conn: DocConnection,
    stmt: Statement,
    allowed: StatementClass,
    limits: Limits,
    deadline: float | None = None,
    encode: Callable[[Any], JSONValue] = encode_value,
    reuse: ReusedTexts | None = None,
) -> StatementResult:
    """Run one statement under an enforcing policy and the limits; fetch its bounded result.

    ``deadline`` (``time.monotonic()``) defaults to now + ``limits.timeout_ms``; a batch
    passes one deadline for all its statements. ``encode`` turns each SQLite value into
    its wire form (the query API's JSON by default; :mod:`skald.libsql` passes Hrana's).
    ``reuse``: the prepared statements of one query stream (see :class:`ReusedTexts`).
    """
    stop_at = time.monotonic() + limits.timeout_ms / 1000 if deadline is None else deadline
    timed_out = False

    def progress() -> int:
        nonlocal timed_out
        if time.monotonic() > stop_at:
            timed_out = True
            return 1
        return 0

    recorder = ClassRecorder(allowed, shadow_tables(conn))
    text = reuse.text(stmt.sql, allowed) if reuse is not None else None
    learned = (False, False)
    capability_objects = _capability_objects(conn) if allowed == StatementClass.ADMIN else None
    conn.set_progress_handler(progress, 1000)
    # The progress handler runs between VM instructions, never inside one function call: what
    # bounds a single call is the size of the value it may build (randomblob(1e9), a group_concat
    # over a million rows, replace() that multiplies its input): SQLite stops at this length.
    previous_length = conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limits.max_value_bytes)
    try:
        with conn.track_reads() as tables:
            with conn.policy(recorder):
                # Once the statement starts running, every further authorizer callback comes
                # from statements a virtual table module prepares for itself (fts5 writing its
                # shadow tables); the user's statement, its triggers and views are compiled.
                conn.set_trace_callback(recorder.started)
                try:
                    cursor = (
                        conn.execute_untrusted(stmt.sql, stmt.params) if text is None
                        else conn.execute(text, stmt.params)
                    )
                finally:
                    conn.set_trace_callback(None)
                    if text is not None and reuse is not None:  # even if it failed running: it is cached
                        learned = reuse.learn(stmt.sql, allowed, recorder)
            columns = [d[0] for d in cursor.description or ()]
            rows, truncated = _fetch(cursor, limits, encode)
            cursor.close()
    except sqlite3.Error as exc:
        if isinstance(exc, sqlite3.DataError) and "too big" in str(exc):
            raise ValueTooLarge(
                f"a value would exceed {limits.max_value_bytes} bytes", max_value_bytes=limits.max_value_bytes
            ) from None
        if timed_out:
            raise QueryTimeout(
                f"stopped after {limits.timeout_ms} ms", timeout_ms=limits.timeout_ms
            ) from None
        if recorder.denied:
            if recorder.highest == StatementClass.FORBIDDEN:
                raise StatementForbidden(f"refused: {', '.join(recorder.denied)}") from None
            raise ScopeDenied(
                f"statement needs more than {allowed.action}: {', '.join(recorder.denied)}"
            ) from None
        raise _translate_error(exc) from None
    finally:
        conn.set_progress_handler(None, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, previous_length)
    if capability_objects is not None and _capability_objects(conn) != capability_objects:
        # The authorizer does not report the new name of ALTER TABLE ... RENAME TO; a user
        # object under skald's prefix would collide with a later migration.
        raise StatementForbidden("refused: the statement creates or renames a capability table")
    writes, inserts = (recorder.writes, recorder.inserts) if text is None else learned
    changes, rowid = conn.execute("SELECT changes(), last_insert_rowid()").fetchone()
    if allowed == StatementClass.READ or not writes:
        changes, rowid = 0, None  # changes() still holds the previous statement's count
    elif not (inserts and changes):
        rowid = None  # only an INSERT/REPLACE that inserted has a rowid to report
    return StatementResult(columns, rows, truncated, changes, rowid, frozenset(tables))


def shadow_tables(conn: DocConnection) -> frozenset[str]:
    """Lower-cased names of the document's shadow tables (fts3/4/5 and r-tree index storage).

    Cached per connection by the schema cookie, which every DDL statement changes: listing the
    tables costs ~75 µs, reading the cookie a few.
    """
    version: int = conn.execute("PRAGMA schema_version").fetchone()[0]
    if conn.shadow_cache is not None and conn.shadow_cache[0] == version:
        return conn.shadow_cache[1]
    rows = conn.execute("SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'shadow'")
    names = frozenset(row[0].lower() for row in rows)
    conn.shadow_cache = (version, names)
    return names


def _capability_objects(conn: DocConnection) -> set[str]:
    # The change feed's triggers on user tables come and go with those tables: not counted.
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE (lower(name) LIKE '\\_skald\\_%' ESCAPE '\\' "
        "OR lower(tbl_name) LIKE '\\_skald\\_%' ESCAPE '\\' OR name = 'schema_migrations') "
        "AND NOT (type = 'trigger' AND lower(name) LIKE '\\_skald\\_chg\\_%' ESCAPE '\\' "
        "AND lower(tbl_name) NOT LIKE '\\_skald\\_%' ESCAPE '\\')"
    )
    return {row[0] for row in rows}


def _fetch(
    cursor: sqlite3.Cursor, limits: Limits, encode: Callable[[Any], JSONValue] = encode_value
) -> tuple[list[list[JSONValue]], bool]:
    rows: list[list[JSONValue]] = []
    size = 0
    while True:
        chunk = cursor.fetchmany(256)
        if not chunk:
            return rows, False
        for raw in chunk:
            if len(rows) >= limits.max_rows:
                return rows, True
            row = [encode(v) for v in raw]
            size += sum(approx_size(v) + 1 for v in row) + 2
            if size > limits.max_bytes:
                return rows, True
            rows.append(row)


def run_batch(
    conn: DocConnection, stmts: Sequence[Statement], allowed: StatementClass, limits: Limits
) -> list[StatementResult]:
    """Run ``stmts`` in order; the first failure raises with ``statement_index`` (the caller's
    transaction or savepoint then rolls everything back)."""
    results = []
    deadline = time.monotonic() + limits.timeout_ms / 1000  # the time limit covers the whole batch
    for index, stmt in enumerate(stmts):
        try:
            results.append(run_statement(conn, stmt, allowed, limits, deadline))
        except (BadRequest, Forbidden, Conflict) as exc:
            exc.extra["statement_index"] = index
            exc.detail = f"statement {index}: {exc.detail}"
            raise
    return results


def _read_batch(conn: DocConnection, stmts: Sequence[Statement], limits: Limits) -> list[StatementResult]:
    conn.execute("BEGIN")  # one snapshot for every statement
    try:
        return run_batch(conn, stmts, StatementClass.READ, limits)
    finally:
        conn.execute("COMMIT")


def _translate_error(exc: sqlite3.Error) -> Exception:
    message = str(exc)
    if isinstance(exc, sqlite3.ProgrammingError) and "one statement at a time" in message:
        return MultipleStatements("send exactly one statement (use /query/batch for several)")
    if isinstance(exc, sqlite3.ProgrammingError) and "binding" in message.lower():
        return InvalidArgument(message)
    if isinstance(exc, sqlite3.IntegrityError):
        return ConstraintViolation(message)
    if isinstance(exc, sqlite3.InterfaceError):
        return InvalidArgument(message)
    return SQLError(message)


# ---- async service -------------------------------------------------------------------------------


def remembered_class(actor: DocumentActor, sql: str) -> StatementClass | None:
    """The class :func:`classify` remembered for ``sql`` under the current schema, if any."""
    hit = actor.statement_classes.get(sql)
    return hit[1] if hit is not None and hit[0] == actor.schema_generation else None


def remember_class(actor: DocumentActor, generation: int, sql: str, cls: StatementClass) -> None:
    """Keep ``cls`` for ``sql`` unless the schema changed while it was being worked out (the
    reader's snapshot may then predate the change)."""
    if actor.schema_generation != generation:
        return
    memo = actor.statement_classes
    if sql not in memo and len(memo) >= STATEMENT_MEMO_SIZE:
        del memo[next(iter(memo))]  # the oldest entry: a dict keeps insertion order
    memo[sql] = (generation, cls)


async def classify(actor: DocumentActor, stmt: Statement) -> StatementClass:
    """Classify on a read-only connection; raises 400/403 skald errors for bad statements.

    The class of a SQL text depends only on the text and the schema (the authorizer reports what
    the statement compiles to, never the values bound to it), so it is remembered per document
    and schema generation: a repeated statement skips the ``EXPLAIN`` compile and the trip to a
    reader thread. Nothing is given away by a remembered class: the statement still runs under
    the enforcing policy of that class (:func:`run_statement`), which denies whatever the
    statement would do beyond it. Only successes are remembered; a refused statement is
    classified again every time.
    """
    known = remembered_class(actor, stmt.sql)
    if known is not None:
        return known
    generation = actor.schema_generation
    cls = await actor.read(lambda conn: classify_sync(conn, stmt))
    remember_class(actor, generation, stmt.sql, cls)
    return cls


async def classify_all(actor: DocumentActor, stmts: Sequence[Statement]) -> StatementClass:
    """The highest class in a batch.

    A statement that cannot be prepared yet because an earlier DDL statement of the
    same batch creates what it uses (``CREATE TABLE x ...; INSERT INTO x ...``) makes
    the batch ADMIN; it then runs under the ADMIN enforcing policy, which still
    refuses every forbidden action. Classes are remembered as by :func:`classify`.
    """
    known = [remembered_class(actor, stmt.sql) for stmt in stmts]
    if all(cls is not None for cls in known):
        return max(cls for cls in known if cls is not None)

    def run(conn: DocConnection) -> list[StatementClass | None]:
        classes: list[StatementClass | None] = []
        highest = StatementClass.READ
        for index, stmt in enumerate(stmts):
            try:
                cls = known[index] or classify_sync(conn, stmt)
            except (BadRequest, Forbidden) as exc:
                if isinstance(exc, SQLError) and highest == StatementClass.ADMIN:
                    classes.append(None)  # depends on an earlier statement's DDL: not remembered
                    continue
                exc.extra["statement_index"] = index
                exc.detail = f"statement {index}: {exc.detail}"
                raise
            highest = max(highest, cls)
            classes.append(cls)
        return classes

    generation = actor.schema_generation
    classes = await actor.read(run)
    for stmt, cls in zip(stmts, classes, strict=True):
        if cls is not None:
            remember_class(actor, generation, stmt.sql, cls)
    return max([StatementClass.READ, *(cls for cls in classes if cls is not None)])


_texts_of: weakref.WeakKeyDictionary[DocumentActor, ReusedTexts] = weakref.WeakKeyDictionary()


def _document_texts(actor: DocumentActor) -> ReusedTexts:
    """The prepared statements single ``/query`` statements (and watch re-runs) of one open document share.

    As a stream's (:class:`ReusedTexts` says why a class-keyed text is safe to hand back): a
    repeated ``INSERT`` or primary-key read compiles once per connection, not once per request.
    Read statements run on several reader threads at once; what ``seen`` keeps matters only for
    writes (a READ reports no changes), which run on the one writer thread.
    """
    texts = _texts_of.get(actor)
    if texts is None:
        texts = _texts_of[actor] = ReusedTexts.fresh()
    return texts


Guard = Callable[[DocConnection], None]
"""A check run first inside the same write op (e.g. a lease fence): raising refuses the write."""


async def execute(
    actor: DocumentActor, stmt: Statement, cls: StatementClass, limits: Limits, guard: Guard | None = None
) -> StatementResult:
    """Run a classified statement: reads on the read pool, the rest as one group-commit op.

    With a ``guard`` the statement always runs as a write op, right after the guard,
    so nothing can change what the guard checked in between.
    """
    reuse = _document_texts(actor)
    if cls == StatementClass.READ and guard is None:
        return await actor.read(lambda conn: run_statement(conn, stmt, cls, limits, reuse=reuse))

    def op(conn: DocConnection) -> StatementResult:
        if guard is not None:
            guard(conn)
        return run_statement(conn, stmt, cls, limits, reuse=reuse)

    return await actor.write(op)


async def execute_batch(
    actor: DocumentActor,
    stmts: Sequence[Statement],
    cls: StatementClass,
    limits: Limits,
    guard: Guard | None = None,
) -> list[StatementResult]:
    """All statements in one transaction (one read snapshot, or one write op: all or nothing)."""
    if cls == StatementClass.READ and guard is None:
        return await actor.read(lambda conn: _read_batch(conn, stmts, limits))

    def op(conn: DocConnection) -> list[StatementResult]:
        if guard is not None:
            guard(conn)
        return run_batch(conn, stmts, cls, limits)

    return await actor.write(op)


Authorize = Callable[[StatementClass], Awaitable[None]]
"""Called with the class SQLite's authorizer gave the statement (or batch), before it runs: raising refuses it."""


class QueryService:
    """The query API on documents by id (``state.query``): classify, authorize, run, in one hold of the document."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    async def classify(self, db_id: str, stmt: Statement) -> StatementClass:
        async with self.supervisor.open_document(db_id) as actor:
            return await classify(actor, stmt)

    async def run(
        self, db_id: str, stmt: Statement, limits: Limits, authorize: Authorize, guard: Guard | None = None
    ) -> tuple[StatementClass, StatementResult]:
        async with self.supervisor.open_document(db_id) as actor:
            cls = await classify(actor, stmt)
            await authorize(cls)
            return cls, await execute(actor, stmt, cls, limits, guard)

    async def run_batch(
        self, db_id: str, stmts: Sequence[Statement], limits: Limits, authorize: Authorize, guard: Guard | None = None
    ) -> tuple[StatementClass, list[StatementResult]]:
        async with self.supervisor.open_document(db_id) as actor:
            cls = await classify_all(actor, stmts)
            await authorize(cls)
            return cls, await execute_batch(actor, stmts, cls, limits, guard)
