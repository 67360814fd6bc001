from __future__ import annotations

import sqlite3

import pytest

from skald.db.migrations import apply_migrations, latest_version, schema_version
from skald.errors import MigrationError


def test_apply_is_idempotent_and_recorded() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    applied = apply_migrations(conn, "document")
    assert applied and applied == sorted(applied)
    assert apply_migrations(conn, "document") == []
    assert schema_version(conn) == latest_version("document")


def test_changed_checksum_is_refused() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    apply_migrations(conn, "document")
    conn.execute("UPDATE schema_migrations SET checksum = 'x' WHERE id = 1")
    with pytest.raises(MigrationError, match="checksum"):
        apply_migrations(conn, "document")


def test_newer_database_is_refused() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    apply_migrations(conn, "document")
    conn.execute("INSERT INTO schema_migrations VALUES (9999, 'future', 'abc', 'now')")
    with pytest.raises(MigrationError, match="newer"):
        apply_migrations(conn, "document")
