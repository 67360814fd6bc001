"""Online backup of a data folder with SQLite's backup API.

Each database (the service database ``_skald.db`` and every
``documents/<db_id>.sqlite3``) is copied with :meth:`sqlite3.Connection.backup`
from a read-only connection, in one step: the copy is a consistent snapshot
of that database, taken inside one read transaction. In WAL mode a reader
never blocks the server's writer, so this is safe while skald runs. Databases
are snapshotted one after another, so the backup is consistent per database,
not across databases.

Every copy is written under a temporary name, checked with
``PRAGMA quick_check`` and renamed into place, so an interrupted backup never
leaves a file that looks complete.

Besides the databases, the folder's key files (:data:`KEY_FILES`: ``hook.key``,
from which every ``/h`` and ``/r`` hook secret is derived) are copied too, so a
restore from the backup keeps every secret and token working.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from pathlib import Path

from skald.errors import StorageError

SERVICE_DB = "_skald.db"
DOCUMENTS = "documents"
_PARTIAL = ".partial"
# Files besides the databases that a restore needs: without hook.key every hook secret changes.
KEY_FILES = ("hook.key",)


class BackupFailed(StorageError):
    code = "backup_failed"
    title = "Backup failed"


@dataclasses.dataclass(frozen=True)
class CopiedDatabase:
    source: Path
    target: Path
    pages: int
    bytes: int


def backup_data_dir(data_dir: Path, target_dir: Path, *, busy_timeout_ms: int = 5000) -> list[CopiedDatabase]:
    """Copy every database of ``data_dir`` into ``target_dir`` (same layout); return what was copied.

    ``target_dir`` may exist but must not already hold a backup. Raises :class:`BackupFailed` when the
    data folder has no service database, the target is not empty, or a copy fails its check.
    """
    service = data_dir / SERVICE_DB
    if not service.is_file():
        raise BackupFailed(f"{data_dir} is not a skald data folder (no {SERVICE_DB})")
    if target_dir.exists() and any(target_dir.iterdir()):
        raise BackupFailed(f"backup target {target_dir} is not empty")
    (target_dir / DOCUMENTS).mkdir(parents=True, exist_ok=True)
    sources = [(service, target_dir / SERVICE_DB)]
    docs = data_dir / DOCUMENTS
    if docs.is_dir():
        sources += [(p, target_dir / DOCUMENTS / p.name) for p in sorted(docs.glob("*.sqlite3"))]
    copied = []
    for source, target in sources:
        if not source.exists():
            continue  # deleted while we were copying the others
        copied.append(_copy_database(source, target, busy_timeout_ms))
    for name in KEY_FILES:
        if (data_dir / name).is_file():
            copied.append(_copy_key_file(data_dir / name, target_dir / name))
    return copied


def _copy_key_file(source: Path, target: Path) -> CopiedDatabase:
    """Copy a secret key file, readable by its owner only (as the server writes it)."""
    partial = target.with_name(target.name + _PARTIAL)
    data = source.read_bytes()
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    partial.rename(target)
    return CopiedDatabase(source, target, 0, len(data))


def _copy_database(source: Path, target: Path, busy_timeout_ms: int) -> CopiedDatabase:
    partial = target.with_name(target.name + _PARTIAL)
    partial.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=busy_timeout_ms / 1000)
    except sqlite3.Error as exc:
        raise BackupFailed(f"cannot open {source} read-only: {exc}") from None
    try:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst, pages=-1)  # one step: a single consistent snapshot
            pages = dst.execute("PRAGMA page_count").fetchone()[0]
            # A self-contained file: no -wal beside it to lose when the backup is moved.
            dst.execute("PRAGMA journal_mode=DELETE")
            check = [row[0] for row in dst.execute("PRAGMA quick_check").fetchall()]
        finally:
            dst.close()
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise BackupFailed(f"backup of {source} failed: {exc}") from None
    finally:
        src.close()
    if check != ["ok"]:
        partial.unlink(missing_ok=True)
        raise BackupFailed(f"backup of {source} failed its check: {check[:5]}")
    partial.rename(target)
    return CopiedDatabase(source, target, pages, target.stat().st_size)
