"""``skald sync pull|status``: keep a local SQLite replica of a document."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from skald.client import Client
from skald.client.errors import SkaldClientError
from skald.commands.grammar import (
    OK,
    USAGE,
    Subparsers,
    UsageError,
    command,
    connection_options,
    document_argument,
    endpoint,
    error_line,
    exit_code,
    fail,
)
from skald.sync.replica import pull, read_state

# Without --follow, a pull gives up after this many failed attempts in a row (about 6 s of backoff):
# a cron job must end, and say why, rather than hang on a server that is down.
PULL_ATTEMPTS = 5


def register(subparsers: Subparsers) -> None:
    sync = command(
        subparsers,
        "sync",
        "replicate a document into a local SQLite file",
        examples=["skald sync pull notes --to notes.sqlite", "skald sync status --to notes.sqlite"],
    )
    sub = sync.add_subparsers(dest="sync_command", metavar="ACTION")
    p = command(
        sub,
        "pull",
        "bring a local replica up to date (a snapshot first if needed)",
        description="Without --follow: exits 3 at once if no server answers, and gives up (exit 3) after"
        f" {PULL_ATTEMPTS} failed attempts in a row if the connection is lost during the pull."
        " With --follow: keeps applying changes and keeps retrying with backoff (up to --max-delay),"
        " saying so on stderr, until interrupted (SIGINT/SIGTERM exit 0).",
        examples=[
            "skald sync pull notes --to notes.sqlite",
            "skald sync pull notes --to notes.sqlite --follow --max-delay 10",
        ],
        parents=[connection_options()],
    )
    document_argument(p)
    p.add_argument("--to", required=True, metavar="FILE", help="replica file (.sqlite)")
    p.add_argument("--follow", action="store_true", help="keep following the change feed")
    p.add_argument("--max-delay", type=float, default=30.0, help="longest backoff between retries (s)")
    p.set_defaults(func=cmd_pull)
    s = command(
        sub,
        "status",
        "show a replica's document, sequence, lag and last error",
        examples=["skald sync status --to notes.sqlite"],
        parents=[connection_options()],
    )
    s.add_argument("--to", required=True, metavar="FILE", help="replica file")
    s.set_defaults(func=cmd_status)


def cmd_pull(args: argparse.Namespace) -> int:
    try:
        target = endpoint(args)
    except UsageError as exc:
        return fail(str(exc), USAGE)
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
    if args.follow:
        print(f"skald: following {args.db} into {args.to} (retrying with backoff up to {args.max_delay:g}s if"
              " the server is lost; Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        with Client(target.url, target.token) as client:
            if not args.follow:
                client.health()  # nothing answers at all: one line, exit 3, no retries to watch
            seq = pull(
                client,
                args.db,
                Path(args.to),
                follow=args.follow,
                max_delay=args.max_delay,
                max_attempts=None if args.follow else PULL_ATTEMPTS,
                report=lambda message: print(f"skald: {message}", file=sys.stderr, flush=True),
                should_stop=lambda: stopping,
            )
    except SkaldClientError as exc:
        return fail(error_line(exc), exit_code(exc))
    except KeyboardInterrupt:
        return 0 if stopping else 130
    print(f"{args.db} at sequence {seq} in {args.to}")
    return OK


def cmd_status(args: argparse.Namespace) -> int:
    state = read_state(Path(args.to))
    if state is None:
        return fail(f"{args.to} is not a skald replica (run `skald sync pull` first)")
    seq = int(state.get("seq", "0"))
    print(f"db:         {state.get('db_id')}")
    print(f"file:       {args.to}")
    print(f"last seq:   {seq}")
    print(f"updated:    {state.get('updated_at', '')}")
    print(f"last error: {state.get('last_error') or '-'}")
    try:
        target = endpoint(args)
    except UsageError:
        print(f"endpoint:   {state.get('url')} (no profile configured)")
        return OK
    print(f"profile:    {target.profile}")
    print(f"endpoint:   {target.url}")
    try:
        with Client(target.url, target.token) as client:
            page = client.changes(state["db_id"], since=seq, limit=1)
        print(f"lag:        {'reset needed' if page['reset'] else page['last_seq'] - seq} change(s)")
    except SkaldClientError as exc:
        print(f"lag:        unknown ({error_line(exc)})")
    return OK
