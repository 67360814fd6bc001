"""``skald backup``: copy a data folder's databases with the SQLite backup API (server may be running)."""

from __future__ import annotations

import argparse
from pathlib import Path

from skald.cli import add_server_options
from skald.commands.grammar import Subparsers, command, print_json
from skald.commands.server import settings_from_args
from skald.documents.backup import backup_data_dir


def register(subparsers: Subparsers) -> None:
    backup = command(
        subparsers,
        "backup",
        "copy the service database, every document and the key files to a folder (safe while serving)",
        description="Each database is copied with SQLite's online backup API and checked; hook.key is copied"
        " too, so a restore keeps every secret. Restore: stop the server, copy the folder back, run doctor.",
        examples=[
            "skald backup --data-dir ./data --to ./backup-$(date +%F)",
            "skald backup --data-dir ./data --to /srv/b1 --output json",
        ],
    )
    add_server_options(backup)
    backup.add_argument("--to", dest="to", required=True, help="target folder (new or empty)")
    backup.add_argument("--output", choices=["text", "json"], default="text", help="output format")
    backup.add_argument("--pretty", action="store_true", help="indent JSON output")
    backup.set_defaults(func=cmd_backup)


def cmd_backup(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    copied = backup_data_dir(settings.data_dir, Path(args.to), busy_timeout_ms=settings.busy_timeout_ms)
    if args.output == "json":
        print_json([{"source": str(c.source), "target": str(c.target), "pages": c.pages,
                     "bytes": c.bytes} for c in copied], args.pretty)
    else:
        for c in copied:
            print(f"{c.source} -> {c.target} ({c.bytes} bytes)")
        print(f"backed up {len(copied)} files to {args.to}")
    return 0
