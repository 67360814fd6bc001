"""Documents as a service: create, list, inspect, delete (no HTTP here)."""

from __future__ import annotations

from typing import Any

from skald.db.actor import DocumentActor
from skald.db.connection import DocConnection
from skald.db.migrations import latest_version, schema_version
from skald.db.supervisor import Supervisor
from skald.errors import DocumentNotFound


def _stats(conn: DocConnection) -> dict[str, Any]:
    page_count = conn.execute("PRAGMA page_count").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    created = conn.execute("SELECT value FROM _skald_meta WHERE key = 'created_at'").fetchone()
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND name NOT LIKE '\\_skald\\_%' ESCAPE '\\' AND name != 'schema_migrations' ORDER BY name"
        )
    ]
    return {
        "page_count": page_count,
        "page_size": page_size,
        "schema_version": schema_version(conn),
        "created_at": created[0] if created else None,
        "tables": tables,
    }


async def inspect_document(supervisor: Supervisor, db_id: str) -> dict[str, Any]:
    if not supervisor.exists(db_id):
        raise DocumentNotFound(f"document {db_id} does not exist")
    async with supervisor.open_document(db_id) as actor:
        stats = await actor.read(_stats)
    return {"db_id": db_id, **_file_sizes(actor), **stats, "latest_schema_version": latest_version("document")}


def _file_sizes(actor: DocumentActor) -> dict[str, int]:
    size = actor.path.stat().st_size if actor.path.exists() else 0
    wal = actor.path.with_name(actor.path.name + "-wal")
    return {"size_bytes": size, "wal_bytes": wal.stat().st_size if wal.exists() else 0}


def list_documents(supervisor: Supervisor) -> list[dict[str, Any]]:
    open_actors = supervisor.open_actors
    return [{"db_id": db_id, "open": db_id in open_actors} for db_id in sorted(supervisor.known_documents)]
