"""The replica tests' workload: a schema, random mixed ops through a document's actor, a follower process.

Shared by ``tests/integration/test_replica.py`` and ``test_replica_network.py``.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from skald.db.connection import DocConnection
from skald.sync.changefeed import last_seq, replicated_tables
from skald.sync.replica import read_state
from support.live import ADMIN_TOKEN, LiveServer

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = [
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, price REAL, data BLOB)",
    "CREATE TABLE kv (k TEXT PRIMARY KEY, v) WITHOUT ROWID",
    "CREATE TABLE log (msg TEXT, n INTEGER)",  # no primary key: keyed by rowid
]


def random_statements(rng: random.Random, step: int) -> list[tuple[str, tuple[Any, ...]]]:
    """One op: a single statement, a multi-row statement or a small batch."""
    i = rng.randrange(1, 400)
    choices: list[list[tuple[str, tuple[Any, ...]]]] = [
        [
            (
                "INSERT OR REPLACE INTO items (id, name, qty, price, data) VALUES (?, ?, ?, ?, ?)",
                (
                    i,
                    f"n{step}",
                    rng.randrange(100),
                    rng.random() * 1e6,
                    rng.randbytes(rng.randrange(0, 20)) or None,
                ),
            )
        ],
        [("UPDATE items SET qty = qty + 1, price = ? WHERE id = ?", (rng.random(), i))],
        [("DELETE FROM items WHERE id = ?", (i,))],
        [("UPDATE items SET name = name || 'x' WHERE id % 7 = ?", (i % 7,))],
        [("DELETE FROM items WHERE qty < ? AND id % 5 = 0", (rng.randrange(10),))],
        [("UPDATE OR IGNORE items SET id = id + 1000 WHERE id = ?", (i,))],
        [
            (
                "INSERT OR REPLACE INTO kv VALUES (?, ?)",
                (f"k{i % 50}", rng.choice([step, "t", 1.5, None, b"\x00\x01", float("-inf")])),
            )
        ],
        [("DELETE FROM kv WHERE k = ?", (f"k{i % 50}",))],
        [
            ("INSERT INTO log VALUES (?, ?)", (f"m{step}", i)),
            ("INSERT INTO log SELECT msg || '+', n + 1 FROM log WHERE n = ?", (i,)),
        ],
        [("DELETE FROM log WHERE n % 11 = ?", (i % 11,))],
        [
            (
                "UPDATE log SET msg = ? WHERE rowid IN (SELECT rowid FROM log ORDER BY random() LIMIT 3)",
                (f"u{step}",),
            )
        ],
        [
            ("INSERT INTO items (name, qty, price) VALUES (?, ?, ?)", (f"b{step}", 1, 0.1)),
            ("UPDATE kv SET v = ? WHERE k = ?", (step, f"k{i % 50}")),
            ("DELETE FROM log WHERE rowid = (SELECT min(rowid) FROM log)", ()),
        ],
    ]
    return rng.choice(choices)


async def run_ops(server: LiveServer, rng: random.Random, start: int, count: int) -> None:
    async with server.state.supervisor.open_document("notes") as actor:
        for chunk in range(start, start + count, 25):
            async with trio.open_nursery() as nursery:  # 25 concurrent ops exercise group commit
                for step in range(chunk, min(chunk + 25, start + count)):
                    statements = random_statements(rng, step)
                    if step == 2500:
                        statements = [("ALTER TABLE items ADD COLUMN note TEXT DEFAULT 'n'", ())]

                    def op(
                        conn: DocConnection, statements: list[tuple[str, tuple[Any, ...]]] = statements
                    ) -> None:
                        for sql, args in statements:
                            conn.execute(sql, args)

                    nursery.start_soon(actor.write, op)


def dump(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for table in sorted(replicated_tables(conn)):
        with_rowid = table != "kv"
        rows = conn.execute(f"SELECT {'rowid, ' if with_rowid else ''}* FROM {table}").fetchall()
        out[table] = sorted(rows, key=repr)
    return out


def start_follower(url: str, replica: Path, tmp_path: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    """``skald sync pull --follow`` of ``notes`` from ``url`` (a server, or a proxy in front of one)."""
    env = {
        **os.environ,
        "SKALD_URL": url,
        "SKALD_TOKEN": ADMIN_TOKEN,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    with log.open("wb") as stderr:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "skald",
                "sync",
                "pull",
                "notes",
                "--to",
                str(replica),
                "--follow",
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


async def wait_for_seq(replica: Path, target: int, proc: subprocess.Popen[bytes]) -> None:
    with trio.fail_after(120):
        while True:
            state = read_state(replica)
            if state is not None and int(state["seq"]) >= target:
                return
            assert proc.poll() is None, "follower exited"
            await trio.sleep(0.05)


async def server_seq(server: LiveServer) -> int:
    async with server.state.supervisor.open_document("notes") as actor:
        return await actor.read(last_seq)
