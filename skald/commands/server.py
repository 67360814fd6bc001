"""``skald serve``, ``skald migrate``, ``skald doctor``."""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path
from typing import Any

from skald.cli import add_server_options
from skald.config import Settings, load_settings
from skald.db.migrations import apply_migrations
from skald.documents.doctor import format_report, run_doctor
from skald.logs import configure_logging


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides = {"data_dir": getattr(args, "data_dir", None), **extra}
    return load_settings(Path(args.config) if getattr(args, "config", None) else None, overrides=overrides)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser("serve", help="run the HTTP server")
    add_server_options(serve)
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--log-level", dest="log_level", default=None)
    serve.add_argument("--log-format", dest="log_format", choices=["console", "json"], default=None)
    serve.set_defaults(func=cmd_serve)

    migrate = subparsers.add_parser("migrate", help="apply schema migrations to the data folder")
    add_server_options(migrate)
    migrate.set_defaults(func=cmd_migrate)

    doctor = subparsers.add_parser("doctor", help="check the data folder (read-only)")
    add_server_options(doctor)
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(func=cmd_doctor)


def cmd_serve(args: argparse.Namespace) -> int:
    from skald.server.runner import run

    settings = settings_from_args(
        args, host=args.host, port=args.port, log_level=args.log_level, log_format=args.log_format
    )
    configure_logging(settings.log_level, settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    run(settings)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    settings.documents_dir.mkdir(parents=True, exist_ok=True)
    targets = [(settings.service_db_path, "service")]
    targets += [(p, "document") for p in sorted(settings.documents_dir.glob("*.sqlite3"))]
    for path, kind in targets:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            applied = apply_migrations(conn, kind)
        finally:
            conn.close()
        print(f"{path}: {'applied ' + ', '.join(map(str, applied)) if applied else 'up to date'}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    report, code = run_doctor(settings.data_dir)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return code
