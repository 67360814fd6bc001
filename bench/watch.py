"""Write throughput of /query with 0 watches, 100 watches on unrelated tables, 100 on the written table.

Starts ``python -m skald serve`` on port 0 in a subprocess (its own process, as
in production), then drives it from this process over HTTP:

    python bench/watch.py [--seconds 5] [--writers 16] [--watches 100] [--rounds 2]

Prints the three write rates and their ratios to the 0-watch rate (goal:
unrelated >= 0.9x none), plus how many watch updates were delivered.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import aclosing
from pathlib import Path

import httpx
import trio
from httpx_sse import aconnect_sse

TOKEN = "skd_bench_admin_token_0123456789abcdefghijklmnop"


async def start_server(data_dir: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m skald serve`` on port 0 with the bench's admin token (``env``: more ``SKALD_*`` settings)."""
    full_env = {**os.environ, "SKALD_ADMIN_TOKEN": TOKEN, "SKALD_LOG_LEVEL": "warning", **env}
    command = [sys.executable, "-m", "skald", "serve", "--port", "0", "--data-dir", str(data_dir)]
    proc = await trio.to_thread.run_sync(
        lambda: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=full_env)
    )
    assert proc.stdout is not None
    line = await trio.to_thread.run_sync(proc.stdout.readline)
    match = re.search(rb"listening on (http://\S+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, match[1].decode()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux ``/proc``), 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def write_rate(client: httpx.AsyncClient, writers: int, seconds: float) -> float:
    count = 0
    deadline = trio.current_time() + seconds

    async def writer() -> None:
        nonlocal count
        while trio.current_time() < deadline:
            r = await client.post("/api/v1/db/bench/query", json={"sql": "INSERT INTO hot(v) VALUES (1)"})
            r.raise_for_status()
            count += 1

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(writers):
            nursery.start_soon(writer)
    return count / (time.perf_counter() - started)


async def run_watch(client: httpx.AsyncClient, sql: str, ready: trio.Event, counts: list[int]) -> None:
    body = {"sql": sql, "options": {"heartbeat_seconds": 30}}
    async with (
        aconnect_sse(client, "POST", "/api/v1/db/bench/query/watch", json=body) as source,
        aclosing(source.aiter_sse()) as events,
    ):
        async for event in events:
            if event.event == "snapshot":
                ready.set()
            elif event.event == "update":
                counts[0] += 1


async def watcher_process(url: str, sql: str, watches: int) -> None:
    """Child mode: hold ``watches`` watches, print "ready", count updates until stdin closes."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    limits = httpx.Limits(max_connections=watches + 10)
    async with (
        httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client,
        trio.open_nursery() as nursery,
    ):
        counts = [0]
        for _ in range(watches):
            ready = trio.Event()
            nursery.start_soon(run_watch, client, sql, ready, counts)
            await ready.wait()
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)
        await trio.sleep(0.5)  # let the last updates arrive before counting them
        print(counts[0], flush=True)
        nursery.cancel_scope.cancel(reason="bench phase done")


async def phase(url: str, label: str, sql: str | None, args: argparse.Namespace) -> tuple[float, int]:
    """One measurement. Watchers run in their own process (as separate clients would in
    production), so their client-side work does not eat the writers' CPU."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    child: subprocess.Popen[str] | None = None
    if sql is not None:
        command = [
            sys.executable,
            __file__,
            "--watcher-url",
            url,
            "--watcher-sql",
            sql,
            "--watches",
            str(args.watches),
        ]
        child = await trio.to_thread.run_sync(
            lambda: subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        )
        assert child.stdout is not None
        line = await trio.to_thread.run_sync(child.stdout.readline)
        if line.strip() != "ready":
            raise SystemExit(f"watchers did not start: {line!r}")
    cpu_before = cpu_seconds(args.server_pid)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as writers:
        rate = await write_rate(writers, args.writers, args.seconds)
    server_cpu = cpu_seconds(args.server_pid) - cpu_before
    updates = 0
    if child is not None:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.close()
        updates = int(await trio.to_thread.run_sync(child.stdout.readline))
        await trio.to_thread.run_sync(child.wait)
        child.stdout.close()
    cpu_ms = server_cpu * 1000 / max(1, rate * args.seconds)
    print(
        f"{label:>28}: {rate:8.0f} writes/s  server CPU {cpu_ms:.2f} ms/write  ({updates} watch updates)",
        flush=True,
    )
    return rate, cpu_ms


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="skald-bench-") as tmp:
        proc, url = await start_server(Path(tmp))
        try:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
                (await client.put("/api/v1/db/bench")).raise_for_status()
                for ddl in (
                    "CREATE TABLE hot(id INTEGER PRIMARY KEY, v)",
                    "CREATE TABLE cold(id INTEGER PRIMARY KEY, v)",
                ):
                    (await client.post("/api/v1/db/bench/query", json={"sql": ddl})).raise_for_status()
                await write_rate(client, args.writers, 1.0)  # warm-up
            print(f"skald watch bench: {args.writers} writers, {args.seconds:.0f} s per phase,", end=" ")
            print(f"{args.watches} watches, best of {args.rounds} rounds (phases interleaved)")
            configs = [
                ("0 watches", None),
                (f"{args.watches} watches, other table", "SELECT count(*) FROM cold"),
                (f"{args.watches} watches, written table", "SELECT count(*), max(id) FROM hot"),
            ]
            args.server_pid = proc.pid
            best = [0.0, 0.0, 0.0]
            cpu = [math.inf, math.inf, math.inf]
            for _round in range(args.rounds):
                for index, (label, sql) in enumerate(configs):
                    rate, cpu_ms = await phase(url, label, sql, args)
                    best[index] = max(best[index], rate)
                    cpu[index] = min(cpu[index], cpu_ms)
            none, unrelated, related = best
            print(f"best: none {none:.0f}/s, unrelated {unrelated:.0f}/s, written table {related:.0f}/s")
            print(f"ratio unrelated/none: {unrelated / none:.2f}  (goal >= 0.90)")
            print(f"ratio written/none:   {related / none:.2f}")
            # CPU per write is far less sensitive to other load on a shared machine than wall-clock rates.
            print(
                f"server CPU ms/write: none {cpu[0]:.2f}, unrelated {cpu[1]:.2f}, written table {cpu[2]:.2f}"
            )
            print(f"rate implied by server CPU, unrelated/none: {cpu[0] / cpu[1]:.2f}")
        finally:
            proc.terminate()
            await trio.to_thread.run_sync(proc.wait)
            if proc.stdout is not None:
                proc.stdout.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--watches", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--watcher-url", help=argparse.SUPPRESS)
    parser.add_argument("--watcher-sql", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.watcher_url:
        trio.run(watcher_process, parsed.watcher_url, parsed.watcher_sql, parsed.watches)
    else:
        trio.run(main, parsed)
