"""``skald cluster up --nodes N``: a whole cluster on loopback (see docs/cluster.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cluster = subparsers.add_parser("cluster", help="run several nodes behind HAProxy on this machine")
    commands = cluster.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)
    up = commands.add_parser("up", help="start etcd, an S3 API, Litestream, N nodes and HAProxy; Ctrl-C stops")
    up.add_argument("--nodes", type=int, default=os.cpu_count() or 2, help="nodes (default: one per core)")
    up.add_argument("--port", type=int, default=8000, help="HAProxy's port on 127.0.0.1 (default 8000)")
    up.add_argument("--dir", default="./cluster", help="where the nodes, etcd and HAProxy keep their files")
    up.add_argument("--durability", choices=["local", "replicated"], default="local")
    up.set_defaults(func=cmd_up)


def cmd_up(args: argparse.Namespace) -> int:
    import trio

    from skald.cluster.local import run_local_cluster

    if args.nodes < 1:
        raise SystemExit("skald cluster up: --nodes must be at least 1")
    trio.run(run_local_cluster, Path(args.dir), args.nodes, args.durability, args.port)
    return 0
