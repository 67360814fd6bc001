"""``skald doctor``: a read-only health report of a data folder.

Opens every database read-only (never through an actor, so it is safe with
the server running) and reports the service schema, each document's schema
version and ``PRAGMA quick_check``, plus the integrity check of every
full-text (fts3/fts4/fts5) and r-tree index: ``quick_check`` only looks at
b-trees, so an index whose shadow tables disagree with each other looks fine
to it. Exit code 0 when everything is healthy or the folder is simply not
initialized yet; 1 when anything is damaged, unreadable or newer than this
code.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

from skald.db.migrations import check_migrations, latest_version, schema_version
from skald.errors import MigrationError


def _check_db(path: Path, kind: str) -> dict[str, Any]:
    report: dict[str, Any] = {"path": str(path), "ok": False}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        report["error"] = f"cannot open: {exc}"
        return report
    try:
        report["schema_version"] = schema_version(conn)
        report["latest_schema_version"] = latest_version(kind)
        try:
            pending = check_migrations(conn, kind)
            report["pending_migrations"] = [m.id for m in pending]
        except MigrationError as exc:
            report["error"] = exc.detail
            return report
        result = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        report["quick_check"] = "ok" if result == ["ok"] else result[:20]
        report["ok"] = result == ["ok"]
        if report["ok"]:
            checks = _index_checks(conn, path)
            if checks:
                report["index_checks"] = checks
                report["ok"] = all(v == "ok" or v.startswith("skipped") for v in checks.values())
    except sqlite3.Error as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return report


_MODULE = re.compile(r"\bUSING\s+(\w+)", re.IGNORECASE)


def _index_checks(ro: sqlite3.Connection, path: Path) -> dict[str, str]:
    """``{virtual table: "ok" | what is wrong}`` for every full-text and r-tree index.

    fts4/fts5 check themselves with ``INSERT INTO t(t) VALUES('integrity-check')``: a statement
    SQLite only runs on a writable connection, so it runs on one inside a transaction that is
    always rolled back (it reads; nothing is written either way). r-trees have
    ``rtreecheck()``, which reads.
    """
    checks: dict[str, str] = {}
    tables = ro.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL%'")
    work = []
    for name, sql in tables.fetchall():
        match = _MODULE.search(sql or "")
        module = match.group(1).lower() if match else ""
        if module in ("fts4", "fts5", "fts3", "rtree", "rtree_i32"):
            work.append((name, module))
    if not work:
        return checks
    rw = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    try:
        for name, module in work:
            quoted = '"' + name.replace('"', '""') + '"'
            try:
                if module.startswith("rtree"):
                    result = ro.execute("SELECT rtreecheck(?)", (name,)).fetchone()[0]
                    checks[name] = "ok" if result == "ok" else str(result)[:2000]
                    continue
                rw.execute("BEGIN")
                try:
                    rw.execute(f"INSERT INTO {quoted}({quoted}) VALUES ('integrity-check')")
                    checks[name] = "ok"
                finally:
                    rw.execute("ROLLBACK")
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    checks[name] = f"skipped: {exc}"  # the server is writing this document right now
                else:
                    checks[name] = f"{type(exc).__name__}: {exc}"
            except sqlite3.Error as exc:
                checks[name] = f"{type(exc).__name__}: {exc}"
    finally:
        rw.close()
    return checks


def run_doctor(data_dir: Path) -> tuple[dict[str, Any], int]:
    """Return ``(report, exit_code)``."""
    report: dict[str, Any] = {"data_dir": str(data_dir)}
    service = data_dir / "_skald.db"
    if not data_dir.exists() or not service.exists():
        report["status"] = "not initialized yet"
        report["documents"] = []
        return report, 0
    report["service"] = _check_db(service, "service")
    documents = []
    docs_dir = data_dir / "documents"
    for path in sorted(docs_dir.glob("*.sqlite3")) if docs_dir.exists() else []:
        documents.append({"db_id": path.name.removesuffix(".sqlite3"), **_check_db(path, "document")})
    report["documents"] = documents
    healthy = report["service"]["ok"] and all(d["ok"] for d in documents)
    report["status"] = "ok" if healthy else "problems found"
    return report, 0 if healthy else 1


def format_report(report: dict[str, Any]) -> str:
    lines = [f"data folder: {report['data_dir']}", f"status: {report['status']}"]
    if "service" in report:
        lines.append(_line("service database", report["service"]))
    for doc in report.get("documents", []):
        lines.append(_line(f"document {doc['db_id']}", doc))
    return "\n".join(lines)


def _line(name: str, item: dict[str, Any]) -> str:
    if item.get("error"):
        return f"  {name}: ERROR {item['error']}"
    check = item.get("quick_check")
    line = (
        f"  {name}: schema {item.get('schema_version')}/{item.get('latest_schema_version')}, "
        f"pending {item.get('pending_migrations')}, quick_check {check if check == 'ok' else 'FAILED: ' + str(check)}"
    )
    bad = {k: v for k, v in item.get("index_checks", {}).items() if v != "ok" and not v.startswith("skipped")}
    if item.get("index_checks"):
        line += f", indexes {'ok' if not bad else 'FAILED: ' + str(bad)}"
    return line
