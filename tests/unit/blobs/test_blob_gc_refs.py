"""Reading a closed document's references from its file, read-only and WAL-safe."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from skald.blobs.gc import read_refs_from_file


def make_doc(path: Path, with_table: bool = True) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    if with_table:
        conn.execute(
            "CREATE TABLE _skald_blobs (sha256 TEXT, ref TEXT, claimed_at TEXT, PRIMARY KEY (sha256, ref))"
        )
    return conn


def test_reads_committed_refs_and_ignores_an_open_write_transaction(tmp_path: Path) -> None:
    path = tmp_path / "doc.sqlite3"
    conn = make_doc(path)
    conn.execute("INSERT INTO _skald_blobs VALUES ('a', 'r1', 'now'), ('a', 'r2', 'now'), ('b', 'r', 'now')")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO _skald_blobs VALUES ('c', 'r', 'now')")
    assert read_refs_from_file(path) == {"a", "b"}  # the writer is not blocked, uncommitted rows unseen
    conn.execute("COMMIT")
    assert read_refs_from_file(path) == {"a", "b", "c"}
    conn.close()
    assert read_refs_from_file(path) == {"a", "b", "c"}
    assert not (tmp_path / "doc.sqlite3-journal").exists()


def test_missing_file_or_unmigrated_document_has_no_refs(tmp_path: Path) -> None:
    assert read_refs_from_file(tmp_path / "absent.sqlite3") == set()
    path = tmp_path / "old.sqlite3"
    make_doc(path, with_table=False).close()
    assert read_refs_from_file(path) == set()


def test_unreadable_document_raises_rather_than_counting_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "broken.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        read_refs_from_file(path)
