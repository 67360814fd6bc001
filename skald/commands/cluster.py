"""``skald cluster up --nodes N``: a whole cluster on loopback (see docs/cluster.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from skald.commands.grammar import Subparsers, command
from skald.commands.server import port_number


def register(subparsers: Subparsers) -> None:
    cluster = command(
        subparsers,
        "cluster",
        "run several nodes behind HAProxy on this machine",
        examples=["skald cluster up --nodes 2 --port 8000"],
    )
    commands = cluster.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)
    up = command(
        commands,
        "up",
        "start etcd, an S3 API, Litestream, N nodes and HAProxy; Ctrl-C stops",
        description="Every part runs as its own local process; the cluster serves on 127.0.0.1:--port.",
        examples=["skald cluster up --nodes 2 --port 8000 --dir ./cluster", "skald cluster up --durability replicated"],
    )
    up.add_argument("--nodes", type=int, default=os.cpu_count() or 2, help="nodes (default: one per core)")
    up.add_argument("--port", type=port_number, default=8000, help="HAProxy's port on 127.0.0.1 (default 8000)")
    up.add_argument("--dir", default="./cluster", help="where the nodes, etcd and HAProxy keep their files")
    up.add_argument(
        "--durability", choices=["local", "replicated"], default="local", help="when a write is acknowledged"
    )
    up.set_defaults(func=cmd_up)


def cmd_up(args: argparse.Namespace) -> int:
    import trio

    from skald.cluster.local import run_local_cluster

    if args.nodes < 1:
        raise SystemExit("skald cluster up: --nodes must be at least 1")
    trio.run(run_local_cluster, Path(args.dir), args.nodes, args.durability, args.port)
    return 0
