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
from collections.abc import Callable, Iterator
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
