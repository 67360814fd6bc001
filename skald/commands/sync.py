"""``skald sync pull|status``: keep a local SQLite replica of a document."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from skald.client import Client, profiles
from skald.client.errors import SkaldClientError
from skald.commands.client import describe, fail
from skald.sync.replica import pull, read_state


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sync = subparsers.add_parser("sync", help="replicate a document into a local SQLite file")
    sub = sync.add_subparsers(dest="sync_command", metavar="ACTION")
    p = sub.add_parser("pull", help="snapshot if needed, apply changes; --follow keeps following")
    p.add_argument("--db", required=True)
    p.add_argument("--to", required=True, help="replica file (.sqlite)")
    p.add_argument("--follow", action="store_true")
    p.add_argument("--profile", default=None)
    p.add_argument("--max-delay", type=float, default=30.0, help="longest backoff between retries (s)")
    p.set_defaults(func=cmd_pull)
    s = sub.add_parser("status", help="profile, endpoint, last sequence, lag, last error")
    s.add_argument("--to", required=True, help="replica file")
    s.add_argument("--profile", default=None)
    s.set_defaults(func=cmd_status)


def cmd_pull(args: argparse.Namespace) -> int:
    try:
        endpoint = profiles.resolve(args.profile)
    except profiles.NoProfile as exc:
        return fail(str(exc))
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
    try:
        with Client(endpoint.url, endpoint.token) as client:
            seq = pull(
                client,
                args.db,
                Path(args.to),
                follow=args.follow,
                max_delay=args.max_delay,
                report=lambda message: print(f"skald: {message}", file=sys.stderr, flush=True),
                should_stop=lambda: stopping,
            )
    except SkaldClientError as exc:
        return fail(describe(exc))
    except KeyboardInterrupt:
        return 0 if stopping else 130
    print(f"{args.db} at sequence {seq} in {args.to}")
    return 0


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
        endpoint = profiles.resolve(args.profile)
    except profiles.NoProfile:
        print(f"endpoint:   {state.get('url')} (no profile configured)")
        return 0
    print(f"profile:    {endpoint.profile}")
    print(f"endpoint:   {endpoint.url}")
    try:
        with Client(endpoint.url, endpoint.token) as client:
            page = client.changes(state["db_id"], since=seq, limit=1)
        print(f"lag:        {'reset needed' if page['reset'] else page['last_seq'] - seq} change(s)")
    except SkaldClientError as exc:
        print(f"lag:        unknown ({describe(exc)})")
    return 0
