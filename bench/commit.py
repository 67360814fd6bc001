"""Single-row INSERT throughput: raw sqlite3 (one commit per row) vs the actor's group commit.

(a) raw sqlite3: N threads share one connection (a lock serializes them, as
    SQLite would), each INSERT its own transaction and commit: the physical
    reference for "one fsync per write".
(b) DocumentActor: N trio tasks call ``actor.write``; queued writes share a
    transaction (group commit), each caller still waits for its own commit.

Usage: python bench/commit.py [--rows 20000] [--synchronous NORMAL|FULL]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import trio

from skald.db.actor import DocumentActor
from skald.db.connection import DocConnection
from skald.logs import configure_logging

CALLERS = (1, 8, 32)


def raw_rate(path: Path, callers: int, rows: int, synchronous: str) -> float:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER)")
    lock = threading.Lock()
    per = rows // callers

    def caller(k: int) -> None:
        for i in range(per):
            with lock:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO t (v) VALUES (?)", (k * per + i,))
                conn.execute("COMMIT")

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    conn.close()
    return per * callers / elapsed


async def actor_rate(path: Path, callers: int, rows: int, synchronous: str) -> float:
    per = rows // callers
    async with trio.open_nursery() as nursery:
        actor = DocumentActor("bench", path, synchronous=synchronous)
        await nursery.start(actor.serve)
        await actor.write(lambda c: c.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER)"))

        async def caller(k: int) -> None:
            for i in range(per):
                value = k * per + i

                def op(conn: DocConnection, value: int = value) -> None:
                    conn.execute("INSERT INTO t (v) VALUES (?)", (value,))

                await actor.write(op)

        started = time.perf_counter()
        async with trio.open_nursery() as callers_nursery:
            for k in range(callers):
                callers_nursery.start_soon(caller, k)
        elapsed = time.perf_counter() - started
        actor.stop()
    return per * callers / elapsed


def main() -> None:
    configure_logging("warning")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--synchronous", default="NORMAL", choices=["NORMAL", "FULL"])
    parser.add_argument("--rounds", type=int, default=3, help="alternate (a) and (b) this often; best of each")
    args = parser.parse_args()
    print(
        f"single-row INSERTs, {args.rows} rows per run, WAL, synchronous={args.synchronous}, "
        f"best of {args.rounds} alternating rounds"
    )
    print(f"{'callers':>8} {'(a) raw rows/s':>16} {'(b) actor rows/s':>18} {'(b)/(a)':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for callers in CALLERS:
            a = b = 0.0
            for r in range(args.rounds):  # alternate so machine noise hits both sides alike
                a = max(a, raw_rate(Path(tmp) / f"raw-{callers}-{r}.db", callers, args.rows, args.synchronous))
                path = Path(tmp) / f"actor-{callers}-{r}.db"
                b = max(b, trio.run(actor_rate, path, callers, args.rows, args.synchronous))
            print(f"{callers:>8} {a:>16,.0f} {b:>18,.0f} {b / a:>8.2f}")


if __name__ == "__main__":
    main()
