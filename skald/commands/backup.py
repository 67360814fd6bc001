"""``skald backup``: copy a data folder's databases with the SQLite backup API (server may be running)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from skald.cli import add_server_options
from skald.commands.server import settings_from_args
from skald.documents.backup import backup_data_dir


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backup = subparsers.add_parser(
        "backup", help="copy the service database and every document to a folder (safe while serving)"
    )
    add_server_options(backup)
    backup.add_argument("--to", dest="to", required=True, help="target folder (new or empty)")
    backup.add_argument("--output", choices=["text", "json"], default="text")
    backup.set_defaults(func=cmd_backup)


def cmd_backup(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    copied = backup_data_dir(settings.data_dir, Path(args.to), busy_timeout_ms=settings.busy_timeout_ms)
    if args.output == "json":
        print(json.dumps([{"source": str(c.source), "target": str(c.target), "pages": c.pages,
                           "bytes": c.bytes} for c in copied], indent=2))
    else:
        for c in copied:
            print(f"{c.source} -> {c.target} ({c.bytes} bytes)")
        print(f"backed up {len(copied)} databases to {args.to}")
    return 0
