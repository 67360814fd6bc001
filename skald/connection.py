"""SQLite connections as skald opens them.

:class:`DocConnection` is a ``sqlite3.Connection`` with one authorizer that
does two jobs: it records which tables a statement reads and writes (query
watches and commit fan-out need that) and delegates to an optional
per-statement ``policy`` (scope classes for ``/query``). SQLite allows a
single authorizer per connection, so everything that wants one goes through
:meth:`DocConnection.policy`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

# An authorizer policy: (action, arg1, arg2, db_name, trigger_or_view) -> SQLITE_OK | DENY | IGNORE
Policy = Callable[[int, str | None, str | None, str | None, str | None], int]

_WRITE_ACTIONS = {sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE}


class DocConnection(sqlite3.Connection):
    """A connection that tracks tables touched and supports a pluggable policy."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.read_tables: set[str] = set()
        self.written_tables: set[str] = set()
        self._policy: Policy | None = None
        self.set_authorizer(self._authorize)
        self._formatter: sqlite3.Connection | None = None
        for name in ("printf", "format"):
            self.create_function(name, -1, self._printf, deterministic=True)

    def _printf(self, fmt: object = None, *args: object) -> str | bytes | int | float | None:
        """SQLite's own printf(), refusing what it cannot refuse quickly itself.

        ``printf('%.*c', 2147483647, 'x')`` loops once per character even after the string
        has hit SQLITE_LIMIT_LENGTH (11 s of CPU inside one call, where no progress handler
        runs), then answers NULL as it does for any result over the limit. Every other
        conversion checks the limit before it loops. So a ``%c`` whose repeat count exceeds
        the limit answers that NULL at once, and everything else runs on a private in-memory
        connection's built-in printf under the same limit: identical results.
        """
        limit = self.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
        if isinstance(fmt, str) and any(p > limit for p in _repeat_counts(fmt, args)):
            return None
        if self._formatter is None:
            self._formatter = sqlite3.connect(":memory:", check_same_thread=False)
        self._formatter.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limit)
        marks = ", ".join("?" * (1 + len(args)))
        result: str | None = self._formatter.execute(f"SELECT printf({marks})", (fmt, *args)).fetchone()[0]
        return result

    def close(self) -> None:
        if self._formatter is not None:
            self._formatter.close()
        super().close()

    def _authorize(
        self, action: int, arg1: str | None, arg2: str | None, db_name: str | None, source: str | None
    ) -> int:
        if action in _WRITE_ACTIONS and arg1 is not None and db_name == "main":
            self.written_tables.add(arg1)
        elif action == sqlite3.SQLITE_READ and arg1 is not None:
            self.read_tables.add(arg1)
        if self._policy is not None:
            if (
                action == sqlite3.SQLITE_INSERT
                and arg1 == "_skald_changes"
                and (source or "").startswith("_skald_chg_")
            ):
                return sqlite3.SQLITE_OK  # the change feed's own triggers (skald.changefeed) always record
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
) -> DocConnection:
    """Open ``path`` with skald's pragmas.

    The statement cache is off: SQLite calls the authorizer only when a
    statement is prepared, so a cached statement would bypass both the table
    tracking (commit fan-out, query watches) and scope policies.

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
            cached_statements=0,
        )
    else:
        conn = sqlite3.connect(
            str(path),
            factory=DocConnection,
            check_same_thread=False,
            isolation_level=None,
            cached_statements=0,
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    assert isinstance(conn, DocConnection)
    return conn
