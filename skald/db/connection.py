"""SQLite connections as skald opens them.

:class:`DocConnection` is a ``sqlite3.Connection`` with one authorizer that
does two jobs: it records which tables a statement reads and writes (query
watches and commit fan-out need that) and delegates to an optional
per-statement ``policy`` (scope classes for ``/query``). SQLite allows a
single authorizer per connection, so everything that wants one goes through
:meth:`DocConnection.policy`.

It also replaces the SQL functions whose cost SQLite does not bound by the size of
their result (printf/format, instr, replace, trim/ltrim/rtrim, like, glob,
json_patch) with
versions that answer the same and run in bounded time: see the comment above
:meth:`DocConnection._builtin`.
"""

from __future__ import annotations

import functools
import itertools
import json
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from skald.db import sqlpattern

if TYPE_CHECKING:
    from sqlite3 import _Parameters

# An authorizer policy: (action, arg1, arg2, db_name, trigger_or_view) -> SQLITE_OK | DENY | IGNORE
Policy = Callable[[int, str | None, str | None, str | None, str | None], int]

SQLValue = str | bytes | int | float | None

STATEMENT_CACHE_SIZE = 128
"""Prepared statements sqlite3 keeps per connection (skald's own texts; user SQL is never reused)."""
_UNTRUSTED_MARK = "/* skald:"  # DocConnection.execute_untrusted's unique prefix
_TRACKED_TEXTS = 1024  # texts whose tables DocConnection.execute remembers (> STATEMENT_CACHE_SIZE: see _tracking)
_WRITE_ACTIONS = {sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE}
# Every action that changes the schema (what a statement compiles to): the connection counts them
# so that what was learnt about a SQL text under the old schema can be forgotten (schema_changes).
_SCHEMA_ACTIONS = {
    sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_TRIGGER,
    sqlite3.SQLITE_CREATE_VIEW, sqlite3.SQLITE_DROP_INDEX, sqlite3.SQLITE_DROP_TABLE,
    sqlite3.SQLITE_DROP_TRIGGER, sqlite3.SQLITE_DROP_VIEW, sqlite3.SQLITE_ALTER_TABLE,
    sqlite3.SQLITE_CREATE_VTABLE, sqlite3.SQLITE_DROP_VTABLE, sqlite3.SQLITE_ANALYZE,
    sqlite3.SQLITE_REINDEX, sqlite3.SQLITE_CREATE_TEMP_INDEX, sqlite3.SQLITE_CREATE_TEMP_TABLE,
    sqlite3.SQLITE_CREATE_TEMP_TRIGGER, sqlite3.SQLITE_CREATE_TEMP_VIEW, sqlite3.SQLITE_DROP_TEMP_INDEX,
    sqlite3.SQLITE_DROP_TEMP_TABLE, sqlite3.SQLITE_DROP_TEMP_TRIGGER, sqlite3.SQLITE_DROP_TEMP_VIEW,
    sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH,
}
# Most character comparisons SQLite's own instr/replace/trim may make in one call (about 0.1 s);
# beyond it a blob argument is refused as too big rather than compared quadratically.
_WORK_BUDGET = 1 << 26


def _text(raw: bytes) -> str | bytes:
    # SQLite's text functions applied to a blob can build text that is not UTF-8
    # (replace(x'ff00', x'00', x'01')): Python can hand that back only as a blob.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _int_text(value: SQLValue) -> SQLValue:
    # An integer's text is the same in SQLite and Python (a real's is not: 1e+20 vs 1e20).
    return str(value) if type(value) is int else value


def _compile_option(name: str) -> bool:
    conn = sqlite3.connect(":memory:")
    try:
        return bool(conn.execute("SELECT sqlite_compileoption_used(?)", (name,)).fetchone()[0])
    finally:
        conn.close()


_LIKE_DOESNT_MATCH_BLOBS = _compile_option("LIKE_DOESNT_MATCH_BLOBS")


def _utf8(value: SQLValue) -> SQLValue:
    # SQLite's text functions read a blob's bytes as text
    return _text(value) if isinstance(value, bytes) else value


def _merge_cost(target: object, patch: object) -> int:
    """Key comparisons SQLite's json_patch makes (RFC 7396 merge, a linear search per key)."""
    if not isinstance(patch, dict):
        return 1
    target = target if isinstance(target, dict) else {}
    cost = len(patch) * max(1, len(target))
    for key, value in patch.items():
        if isinstance(value, dict):
            cost += _merge_cost(target.get(key), value)
    return cost


def _cost(value: object) -> int:
    """An upper bound of the characters SQLite sees in ``value`` as text (a number's text is short)."""
    return len(value) if isinstance(value, (str, bytes)) else 32


def _strip_set(text: str, chars: frozenset[str], *, left: bool, right: bool) -> str:
    """``text`` without the leading/trailing characters in ``chars``: linear in ``len(text)``."""
    start, end = 0, len(text)
    while left and start < end and text[start] in chars:
        start += 1
    while right and end > start and text[end - 1] in chars:
        end -= 1
    return text[start:end]


class DocConnection(sqlite3.Connection):
    """A connection that tracks tables touched and supports a pluggable policy."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.read_tables: set[str] = set()
        self.written_tables: set[str] = set()
        self._policy: Policy | None = None
        self.set_authorizer(self._authorize)
        self.shadow_cache: tuple[int, frozenset[str]] | None = None  # skald.query.service.shadow_tables
        self._fresh = itertools.count()
        self._tracked: OrderedDict[str, tuple[frozenset[str], frozenset[str]]] = OrderedDict()
        self.schema_changes = 0
        """Schema-changing actions compiled on this connection (counted at prepare, so a DDL that
        later fails or rolls back counts too: over-counting only forgets a memo early). The
        actor reads it after each commit (:attr:`skald.db.actor.DocumentActor.schema_generation`)."""
        # skald never changes SQLITE_LIMIT_LIKE_PATTERN_LENGTH; a pattern of at most a quarter of
        # it in characters is within it in UTF-8 bytes
        self._like_fast_limit = self.getlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH) // 4
        # A private in-memory connection whose functions are SQLite's own (see _builtin).
        self._builtins: sqlite3.Connection | None = None
        for name, nargs, func in (
            ("printf", -1, self._printf),
            ("format", -1, self._printf),
            ("instr", 2, self._instr),
            ("replace", 3, self._replace),
            ("trim", 2, functools.partial(self._trim, "trim", str.strip)),
            ("ltrim", 2, functools.partial(self._trim, "ltrim", str.lstrip)),
            ("rtrim", 2, functools.partial(self._trim, "rtrim", str.rstrip)),
            ("like", 2, functools.partial(self._match, False)),
            ("like", 3, functools.partial(self._match, False)),
            ("glob", 2, functools.partial(self._match, True)),
            ("json_patch", 2, self._json_patch),
        ):
            self.create_function(name, nargs, func, deterministic=True)

    # ---- SQL functions whose cost SQLite does not bound by the size of their result ----------
    #
    # The progress handler never runs inside one function call, so one call must be bounded by
    # SQLITE_LIMIT_LENGTH. Most are (they stop when their result would pass it), but these loop
    # longer than any result: printf's %c repeats its character N times even after the string hit
    # the limit (N = 2^31-1: 11 s); SQLite's instr and replace compare the pattern at every offset
    # (a 16 MiB text and an 8 MiB pattern: hours) and trim(X, Y) compares every character of X
    # with every character of Y (64 KiB by 32 KiB: 11 s); LIKE/GLOB retry the rest of the pattern
    # at every occurrence of its next character (16 MB by 256: 18-36 s). Text arguments (the usual
    # case) go to Python's linear-time str.find / str.replace / a set of characters /
    # skald.db.sqlpattern; anything else (reals, blobs, NULL) runs SQLite's own function, after the
    # cost check where one is needed.

    def _builtin(self, name: str, *args: object) -> SQLValue:
        """SQLite's own ``name(*args)``, on a private connection under this connection's length limit."""
        if self._builtins is None:
            self._builtins = sqlite3.connect(":memory:", check_same_thread=False)
            self._builtins.text_factory = _text
        self._builtins.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, self.getlimit(sqlite3.SQLITE_LIMIT_LENGTH))
        marks = ", ".join("?" * len(args))
        result: SQLValue = self._builtins.execute(f"SELECT {name}({marks})", args).fetchone()[0]
        return result

    def _too_big(self) -> bytes:
        # A result over the limit makes SQLite fail the statement with SQLITE_TOOBIG ("string or
        # blob too big", what its own functions report); bytes(n) costs no copying.
        return bytes(self.getlimit(sqlite3.SQLITE_LIMIT_LENGTH) + 1)

    def _printf(self, fmt: object = None, *args: object) -> SQLValue:
        """printf/format: a ``%c`` whose repeat count exceeds the limit answers NULL at once (what
        SQLite answers for any result over the limit, after its loop); the rest is SQLite's own."""
        limit = self.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
        if isinstance(fmt, str) and any(p > limit for p in _repeat_counts(fmt, args)):
            return None
        return self._builtin("printf", fmt, *args)

    def _instr(self, haystack: SQLValue, needle: SQLValue) -> SQLValue:
        h, n = _int_text(haystack), _int_text(needle)
        if isinstance(h, str) and isinstance(n, str):
            return h.find(n) + 1  # character offsets, like SQLite's for text
        if isinstance(h, bytes) and isinstance(n, bytes):
            return h.find(n) + 1  # byte offsets, like SQLite's for two blobs
        if _cost(h) * _cost(n) > _WORK_BUDGET:
            return self._too_big()
        return self._builtin("instr", haystack, needle)

    def _replace(self, text: SQLValue, old: SQLValue, new: SQLValue) -> SQLValue:
        t, o, n = _int_text(text), _int_text(old), _int_text(new)
        if isinstance(t, str) and isinstance(o, str) and isinstance(n, str):
            if not o or o[0] == "\x00":
                return text  # SQLite answers its first argument as it is (it tests o[0] == NUL)
            # What the result will hold, before building it: replace('a' x 1M, 'a', 'b' x 1M).
            if len(t) + t.count(o) * (len(n) - len(o)) > self.getlimit(sqlite3.SQLITE_LIMIT_LENGTH):
                return self._too_big()
            return t.replace(o, n)
        if _cost(t) * _cost(o) > _WORK_BUDGET:
            return self._too_big()
        return self._builtin("replace", text, old, new)

    def _trim(self, name: str, strip: Callable[[str, str], str], text: SQLValue, chars: SQLValue) -> SQLValue:
        t, c = _int_text(text), _int_text(chars)
        if isinstance(t, str) and isinstance(c, str):
            unique = "".join(set(c.partition("\x00")[0]))  # SQLite reads the set up to a NUL
            if len(unique) <= 64:
                return strip(t, unique)
            return _strip_set(t, frozenset(unique), left=name != "rtrim", right=name != "ltrim")
        if _cost(text) * _cost(chars) > _WORK_BUDGET:
            return self._too_big()
        return self._builtin(name, text, chars)

    def _match(self, glob: bool, pattern: SQLValue, text: SQLValue, *escape: SQLValue) -> SQLValue:
        """``text LIKE pattern [ESCAPE e]`` / ``text GLOB pattern`` (SQL's like(pattern, text[, e]))."""
        if type(pattern) is str and type(text) is str and not escape and len(pattern) <= self._like_fast_limit:
            try:  # the usual case first: text against a text pattern well under the length limit
                return int(sqlpattern.glob(pattern, text) if glob else sqlpattern.like(pattern, text))
            except sqlpattern.PatternTooCostly:
                return self._too_big()
        if _LIKE_DOESNT_MATCH_BLOBS and (isinstance(pattern, bytes) or isinstance(text, bytes)):
            return 0  # this SQLite's build answers 0 for a blob, before anything else
        p, t = _utf8(_int_text(pattern)), _utf8(_int_text(text))
        e = _utf8(_int_text(escape[0])) if escape else None
        limit = self.getlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH)
        if (
            isinstance(p, str)
            and isinstance(t, str)
            and (not escape or (isinstance(e, str) and len(e) == 1))
            and (len(p) * 4 <= limit or len(p.encode()) <= limit)
        ):
            try:
                return int(sqlpattern.glob(p, t) if glob else sqlpattern.like(p, t, e if isinstance(e, str) else None))
            except sqlpattern.PatternTooCostly:
                return self._too_big()
        # NULL, reals, text that is not UTF-8, a bad ESCAPE or pattern: SQLite's own answer
        if _cost(pattern) * _cost(text) > _WORK_BUDGET:
            return self._too_big()
        return self._builtin("glob" if glob else "like", pattern, text, *escape)

    def _json_patch(self, target: SQLValue, patch: SQLValue) -> SQLValue:
        """SQLite's json_patch, refused as too big when its merge would cost too much: for every
        object of the patch it searches the matching target object's keys one by one
        (8,000 by 8,000 keys: 0.6 s; 80,000: a minute)."""
        if _cost(target) * _cost(patch) > _WORK_BUDGET and isinstance(target, str) and isinstance(patch, str):
            try:
                cost = _merge_cost(json.loads(target), json.loads(patch))
            except (ValueError, RecursionError):
                cost = _WORK_BUDGET + 1  # not JSON Python reads: judge by size alone
            if cost > _WORK_BUDGET:
                return self._too_big()
        elif _cost(target) * _cost(patch) > _WORK_BUDGET:
            return self._too_big()
        return self._builtin("json_patch", target, patch)

    # ---- the statement cache ------------------------------------------------------------------
    #
    # SQLite calls the authorizer only while it prepares a statement, and sqlite3's statement cache
    # hands back a prepared statement for a SQL text it has seen (on this connection): a cache hit
    # reaches no authorizer callback at all. Two consequences, handled here:
    #
    # * user SQL must never be a cache hit, or it would skip the policy that bounds it: it goes
    #   through :meth:`execute_untrusted`, which makes every text unique;
    # * skald's own statements are cached (compiling the publish INSERT with its triggers cost
    #   ~0.3 ms, more than running it) but the tables they read and write still count for commit
    #   fan-out and watches: what a text touched when it was prepared is remembered and added on
    #   every later run. After a schema change SQLite prepares it again (callbacks again) and what
    #   it touches now is added, so the sets are a superset of the truth: a watch may be woken once
    #   too often, never missed.

    def execute_untrusted(self, sql: str, parameters: _Parameters = (), /) -> sqlite3.Cursor:
        """Run user SQL, always freshly prepared (every authorizer callback fires; never cached).

        A unique *leading* comment makes the text new to the cache. Leading, not trailing: SQLite
        keeps no leading comment in the schema, but ``ALTER TABLE … ADD COLUMN`` copies the
        statement's tail into it (a trailing ``-- …`` broke the stored CREATE TABLE).
        """
        return self.execute(f"{_UNTRUSTED_MARK}{next(self._fresh)} */ {sql}", parameters)

    def execute(self, sql: str, parameters: _Parameters = (), /) -> sqlite3.Cursor:
        return self._tracking(sql, lambda: super(DocConnection, self).execute(sql, parameters))

    def executemany(self, sql: str, seq_of_parameters: Iterable[_Parameters], /) -> sqlite3.Cursor:
        return self._tracking(sql, lambda: super(DocConnection, self).executemany(sql, seq_of_parameters))

    def _tracking(self, sql: str, run: Callable[[], sqlite3.Cursor]) -> sqlite3.Cursor:
        # this statement's own callbacks go to fresh sets, then into the caller's (the same set
        # objects: track_reads hands its set out)
        written, read = self.written_tables, self.read_tables
        self.written_tables, self.read_tables = set(), set()
        try:
            return run()
        finally:
            fresh_written, fresh_read = self.written_tables, self.read_tables
            self.written_tables, self.read_tables = written, read
            known = self._tracked.get(sql)
            if known is None:
                mine = (frozenset(fresh_written), frozenset(fresh_read))
            elif fresh_written or fresh_read:  # prepared again (a schema change, or evicted from the cache)
                mine = (known[0] | fresh_written, known[1] | fresh_read)
            else:
                mine = known  # a cache hit: no callback, what the text touched when it was prepared
            written |= mine[0]
            read |= mine[1]
            # Kept even when the run failed: a statement that prepared and then failed while
            # running (a constraint) is in sqlite3's cache, and its next run reaches no callback.
            # User SQL is never run again under the same text; the rest is kept most recently
            # used last and forgotten oldest first, so every text sqlite3 may still hand back
            # from its cache (the last STATEMENT_CACHE_SIZE used) is remembered.
            if not sql.startswith(_UNTRUSTED_MARK):
                if known is not None:
                    self._tracked.move_to_end(sql)
                elif len(self._tracked) >= _TRACKED_TEXTS:
                    self._tracked.popitem(last=False)
                self._tracked[sql] = mine

    def close(self) -> None:
        if self._builtins is not None:
            self._builtins.close()
        super().close()

    def _authorize(
        self, action: int, arg1: str | None, arg2: str | None, db_name: str | None, source: str | None
    ) -> int:
        if action in _WRITE_ACTIONS and arg1 is not None and db_name == "main":
            self.written_tables.add(arg1)
        elif action == sqlite3.SQLITE_READ and arg1 is not None:
            self.read_tables.add(arg1)
        elif action in _SCHEMA_ACTIONS:
            self.schema_changes += 1
        if self._policy is not None:
            if (
                action == sqlite3.SQLITE_INSERT
                and arg1 == "_skald_changes"
                and (source or "").startswith("_skald_chg_")
            ):
                return sqlite3.SQLITE_OK  # the change feed's own triggers (skald.sync.changefeed) always record
            return self._policy(action, arg1, arg2, db_name, source)
        return sqlite3.SQLITE_OK

    @contextmanager
    def policy(self, policy: Policy) -> Iterator[None]:
        """Apply ``policy`` to every statement prepared inside the block."""
        previous = self._policy
        self._policy = policy
        try:
            yield
        finally:
            self._policy = previous

    @contextmanager
    def track_reads(self) -> Iterator[set[str]]:
        """Collect the tables read by statements prepared inside the block."""
        saved = self.read_tables
        self.read_tables = set()
        try:
            yield self.read_tables
        finally:
            self.read_tables = saved | self.read_tables


_PRINTF_FLAGS = frozenset("-+ #!0,l")
_PRINTF_TYPES = frozenset("dsgzqQwcouxXfeEGipr")  # conversions that consume an argument


def _int_arg(args: Sequence[object], index: int) -> int:
    """The integer SQLite's printf takes from argument ``index`` (0 when missing or not a number)."""
    if index >= len(args):
        return 0
    value = args[index]
    try:
        return int(float(value.decode() if isinstance(value, bytes) else value))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, UnicodeDecodeError):
        return 0


def _repeat_counts(fmt: str, args: Sequence[object]) -> Iterator[int]:
    """The repeat count (precision) of every ``%c`` in ``fmt``, following SQLite's printf grammar:
    flags, width (digits or ``*``), ``.precision`` (digits or ``*``), ``l``/``ll``, a conversion.
    ``*`` and each conversion but ``%%`` and ``%n`` take the next argument."""
    i, n, arg = 0, len(fmt), 0
    while (i := fmt.find("%", i) + 1) > 0:
        precision: int | None = None
        while i < n:
            c = fmt[i]
            if c in _PRINTF_FLAGS or c.isdigit():
                i += 1
            elif c == "*":
                arg, i = arg + 1, i + 1
            elif c == ".":
                i += 1
                if i < n and fmt[i] == "*":
                    precision, arg, i = abs(_int_arg(args, arg)), arg + 1, i + 1
                else:
                    start = i
                    while i < n and fmt[i].isdigit():
                        i += 1
                    precision = int(fmt[start:i] or 0)
            else:
                break
        if i >= n or fmt[i] not in _PRINTF_TYPES:
            if i < n and fmt[i] in "%n":
                i += 1
                continue
            return  # SQLite stops formatting at an unknown conversion
        if fmt[i] == "c" and precision is not None:
            yield precision
        arg, i = arg + 1, i + 1


def open_connection(
    path: Path,
    *,
    readonly: bool = False,
    synchronous: str = "NORMAL",
    busy_timeout_ms: int = 5000,
    cache_kib: int | None = None,
) -> DocConnection:
    """Open ``path`` with skald's pragmas.

    The statement cache is on for skald's own statements (see
    :meth:`DocConnection.execute_untrusted` for why user SQL never hits it, and
    :meth:`DocConnection.execute` for how table tracking survives a hit).

    Write connections get WAL, the chosen ``synchronous`` level, foreign keys
    and a busy timeout, and run in autocommit mode (``isolation_level=None``)
    so the actor controls transactions explicitly. Read-only connections open
    with ``mode=ro`` and can never write.
    """
    if readonly:
        uri = f"file:{path.resolve()}?mode=ro"
        conn = sqlite3.connect(
            uri,
            uri=True,
            factory=DocConnection,
            check_same_thread=False,
            isolation_level=None,
            cached_statements=STATEMENT_CACHE_SIZE,
        )
    else:
        conn = sqlite3.connect(
            str(path),
            factory=DocConnection,
            check_same_thread=False,
            isolation_level=None,
            cached_statements=STATEMENT_CACHE_SIZE,
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    if cache_kib is not None:
        # negative: a size in KiB, not in pages (SQLite's default is -2000). Pages are allocated as
        # they are read, so this caps a large document's cache without costing a small one anything.
        conn.execute(f"PRAGMA cache_size={-max(1, int(cache_kib))}")
    assert isinstance(conn, DocConnection)
    return conn
