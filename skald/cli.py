"""The ``skald`` command line: one argparse tree, subcommands in ``skald.commands``.

Each module in :data:`COMMAND_MODULES` has ``register(subparsers)`` which adds
its subcommands and sets ``func`` (``func(args) -> int`` exit code).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from skald import __version__
from skald.commands.grammar import REFUSED, USAGE, UsageError
from skald.errors import SkaldError

COMMAND_MODULES = (
    "skald.commands.server",
    "skald.commands.tokens",
    "skald.commands.blobs",
    "skald.commands.client",
    "skald.commands.sync",
    "skald.commands.backup",
    "skald.commands.jobs",
    "skald.commands.cluster",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skald",
        description="Document-centric SQLite service: the server, its data folder, and a client for it.",
        epilog="exit codes: 0 ok, 1 the server refused, 2 usage (bad arguments or configuration),"
        " 3 server unreachable. `skald COMMAND --help` shows each command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"skald {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = __import__(name, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"skald: {exc}", file=sys.stderr)
        return USAGE
    except SkaldError as exc:
        print(f"skald: {exc.detail}", file=sys.stderr)
        return REFUSED
    except KeyboardInterrupt:
        return 130
    return code


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """Flags shared by commands that act on a data folder (the top layer of settings)."""
    parser.add_argument("--config", type=str, default=None, help="TOML config file (default $SKALD_CONFIG)")
    parser.add_argument("--data-dir", dest="data_dir", default=None, help="data folder (default ./data)")
