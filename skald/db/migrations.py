"""Schema migrations for the service database and for every document.

Files live in ``migrations/service/`` and ``migrations/document/`` and are
named ``NNNN_name.sql``. Each is applied in one transaction together with
its row in ``schema_migrations`` (id, name, checksum, applied_at). A file
whose first line is ``-- skald: no-transaction`` runs outside a transaction
(for the rare statement SQLite refuses inside one, like VACUUM).

Applied files are immutable: a changed checksum, or a database that records a
migration this code does not have (a newer database), is refused with
:class:`MigrationError` rather than guessed at.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sqlite3
import time
from functools import cache
from pathlib import Path

from skald.errors import MigrationError

MIGRATIONS_ROOT = Path(__file__).resolve().parents[2] / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_NO_TRANSACTION = "-- skald: no-transaction"


@dataclasses.dataclass(frozen=True)
class Migration:
    id: int
    name: str
    sql: str
    checksum: str

    @property
    def transactional(self) -> bool:
        return not self.sql.lstrip().startswith(_NO_TRANSACTION)


@cache
def load_migrations(kind: str) -> tuple[Migration, ...]:
    """Read ``migrations/<kind>/`` (kind is ``service`` or ``document``) in id order."""
    folder = MIGRATIONS_ROOT / kind
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file {path.name} is not named NNNN_name.sql")
        sql = path.read_text()
        found.append(
            Migration(int(match[1]), match[2], sql, hashlib.sha256(sql.encode()).hexdigest())
        )
    ids = [m.id for m in found]
    if len(set(ids)) != len(ids):
        raise MigrationError(f"duplicate migration ids in {folder}")
    return tuple(found)


_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL
)
"""


def applied_migrations(conn: sqlite3.Connection) -> dict[int, tuple[str, str]]:
    """Return ``{id: (name, checksum)}`` of what the database records (empty if none)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_migrations'"
    ).fetchone()
    if not exists:
        return {}
    return {row[0]: (row[1], row[2]) for row in conn.execute("SELECT id, name, checksum FROM schema_migrations")}


def check_migrations(conn: sqlite3.Connection, kind: str) -> list[Migration]:
    """Return the migrations still to apply; raise if the database is newer or was changed."""
    known = {m.id: m for m in load_migrations(kind)}
    applied = applied_migrations(conn)
    for mid, (name, checksum) in applied.items():
        migration = known.get(mid)
        if migration is None:
            raise MigrationError(
                f"database has migration {mid:04d}_{name} which this skald does not know: "
                "the database is newer than the code; upgrade skald"
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"migration {mid:04d}_{name} changed after it was applied (checksum mismatch); "
                "applied migrations are immutable, add a new one instead"
            )
    return [m for m in known.values() if m.id not in applied]


def apply_migrations(conn: sqlite3.Connection, kind: str) -> list[int]:
    """Apply pending migrations in order, each atomically; return the ids applied."""
    conn.execute(_LEDGER)
    pending = check_migrations(conn, kind)
    done: list[int] = []
    for migration in sorted(pending, key=lambda m: m.id):
        record = (
            "INSERT INTO schema_migrations (id, name, checksum, applied_at) VALUES "
            f"({migration.id}, '{migration.name}', '{migration.checksum}', "
            f"'{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}');"
        )
        try:
            if migration.transactional:
                conn.executescript(f"BEGIN IMMEDIATE;\n{migration.sql}\n;{record}\nCOMMIT;")
            else:
                conn.executescript(f"{migration.sql}\n;{record}")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise MigrationError(f"migration {migration.id:04d}_{migration.name} failed: {exc}") from None
        done.append(migration.id)
    return done


def schema_version(conn: sqlite3.Connection) -> int:
    applied = applied_migrations(conn)
    return max(applied) if applied else 0


def latest_version(kind: str) -> int:
    migrations = load_migrations(kind)
    return migrations[-1].id if migrations else 0
