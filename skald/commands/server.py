"""``skald serve``, ``skald migrate``, ``skald doctor``."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from skald.cli import add_server_options
from skald.commands.grammar import Subparsers, command
from skald.config import Settings, load_settings
from skald.db.migrations import apply_migrations
from skald.documents.doctor import format_report, run_doctor
from skald.logs import configure_logging


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides = {"data_dir": getattr(args, "data_dir", None), **extra}
    return load_settings(Path(args.config) if getattr(args, "config", None) else None, overrides=overrides)


def register(subparsers: Subparsers) -> None:
    serve = command(
        subparsers,
        "serve",
        "run the HTTP server",
        description="Settings: defaults < config file < SKALD_* environment < these flags. On the first start"
        " with an empty token table the admin token is printed once (or read from SKALD_ADMIN_TOKEN). A port"
        " that is in use or invalid exits 2 before anything starts.",
        examples=["skald serve --data-dir ./data --port 8080", "SKALD_LOG_FORMAT=json skald serve --host 0.0.0.0"],
    )
    add_server_options(serve)
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=port_number, default=None, help="TCP port, 0-65535 (0: any free port)")
    serve.add_argument("--mqtt-port", dest="mqtt_port", type=port_number, default=None,
                       help="also serve MQTT 3.1.1/5.0 on this TCP port (0: any free port; off by default)")
    serve.add_argument("--log-level", dest="log_level", default=None, help="debug, info, warning, error")
    serve.add_argument(
        "--log-format", dest="log_format", choices=["console", "json"], default=None, help="log line format"
    )
    serve.set_defaults(func=cmd_serve)

    migrate = command(
        subparsers,
        "migrate",
        "apply schema migrations to the data folder",
        description="Applies pending migrations to the service database and every document (stop the server"
        " first, or let it migrate documents as it opens them).",
        examples=["skald migrate --data-dir /var/lib/skald"],
    )
    add_server_options(migrate)
    migrate.set_defaults(func=cmd_migrate)

    doctor = command(
        subparsers,
        "doctor",
        "check the data folder (read-only)",
        description="Reports the data folder, the service schema and every document's schema version and"
        " integrity. Exit 0 when everything is ok.",
        examples=["skald doctor --data-dir ./data", "skald doctor --json"],
    )
    add_server_options(doctor)
    doctor.add_argument("--json", action="store_true", help="print the report as JSON (one line)")
    doctor.add_argument("--pretty", action="store_true", help="indent the JSON report")
    doctor.set_defaults(func=cmd_doctor)


def port_number(text: str) -> int:
    """argparse type of ``--port``: a bad value is a usage error (exit 2), not a traceback at bind time."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535)")
    return port


def cmd_serve(args: argparse.Namespace) -> int:
    from skald.server.runner import CannotListen, run

    settings = settings_from_args(
        args, host=args.host, port=args.port, log_level=args.log_level, log_format=args.log_format,
        mqtt_port=args.mqtt_port,
    )
    configure_logging(settings.log_level, settings.log_format)
    try:
        run(settings)
    except CannotListen as exc:
        print(f"skald: {exc}", file=sys.stderr)
        return 2
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
    print(json.dumps(report, indent=2 if args.pretty else None) if args.json else format_report(report))
    return code
