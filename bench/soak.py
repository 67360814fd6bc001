"""Memory soak: a steady mixed load against ``skald serve``; RSS, open fds and threads per window.

One ``skald serve`` process (fresh data folder, ``idle_timeout`` short so the supervisor reaps) under a
steady, modest, mixed load for ``--minutes``:

- publishes to one document, over a rolling set of topics (new topics keep appearing);
- SSE subscribers (``/events/stream``) that read a few events, hang up and reconnect;
- queries (an INSERT and a read) and live-query watches (``/query/watch``) that reconnect;
- webhook ingests to a few endpoints;
- relay transfers (``/p/…``, a consumer and a producer per message);
- documents created, written once and left to the supervisor to reap (a rolling window of them is
  deleted again, so the data folder stays small);
- a token minted, used and revoked every few seconds (token cache, rate-limit buckets, audit log).

Every ``--window`` it prints the server's RSS, open file descriptors, threads and open actors, and the
requests done and failed. After the load it waits until every document is closed and prints RSS then.
With ``--tracemalloc`` the server runs with ``SKALD_TRACEMALLOC=1`` and is sent ``SIGUSR1`` at the end of
each window: the top growth since the previous window (from the file the server writes) is printed.

With ``--compare`` a second server (``peer``) runs beside it under the same load, with the native-memory
settings off (``SKALD_MALLOC_ARENA_MAX=0 SKALD_MALLOC_TRIM_SECONDS=0``: glibc's defaults, as before them),
so the before and the after come from one run.

Usage: ``python bench/soak.py [--minutes 20] [--window 120] [--compare] [--tracemalloc]``
(iterating: ``--minutes 4 --window 30``). The load generator shares the machine; the figures are
the server process's own (``/proc/<pid>``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import trio

TOKEN = "skd_bench_admin_token_0123456789abcdefghijklmnop"
DB = "soak"
IDLE_TIMEOUT = 3.0  # seconds: documents the load stops touching are reaped within a window


# The peer of --compare: skald with what fixed its native memory turned off (docs/operations.md#memory).
PEER_ENV = {"SKALD_MALLOC_ARENA_MAX": "0", "SKALD_MALLOC_TRIM_SECONDS": "0"}


def start_server(data_dir: Path, tracemalloc: bool, extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    env = {
        **os.environ, "SKALD_ADMIN_TOKEN": TOKEN, "SKALD_LOG_LEVEL": "warning",
        "SKALD_IDLE_TIMEOUT": str(IDLE_TIMEOUT), "SKALD_RATE_LIMIT_PER_SECOND": "0",
        "SKALD_PUBLIC_RATE_PER_SECOND": "1000000", "SKALD_PUBLIC_RATE_BURST": "1000000",
        "SKALD_TRACEMALLOC": "1" if tracemalloc else "0", **extra,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "skald", "serve", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(rb"listening on (http://\S+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, match[1].decode()


def process_figures(pid: int) -> tuple[float, int, int]:
    """(RSS in MB, open fds, threads) of ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status)[1])  # type: ignore[index]
    threads = int(re.search(r"Threads:\s+(\d+)", status)[1])  # type: ignore[index]
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd")), threads


class Load:
    """The load's tasks; each counts its requests and failures by kind."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.api = f"{base}/api/v1/db"
        self.done: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.stop = trio.Event()

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)

    def count(self, kind: str, response: httpx.Response, *ok: int) -> None:
        if response.status_code in (ok or (200, 201, 204)):
            self.done[kind] += 1
        else:
            self.failed[f"{kind} {response.status_code}"] += 1

    async def every(self, seconds: float, step: Callable[[int], Awaitable[None]], kind: str) -> None:
        """Run ``step(n)`` every ``seconds`` until the load stops; a transport error is counted, not fatal."""
        for n in itertools.count():
            if self.stop.is_set():
                return
            try:
                await step(n)
            except (httpx.HTTPError, OSError) as exc:
                self.failed[f"{kind} {type(exc).__name__}"] += 1
            with trio.move_on_after(seconds):
                await self.stop.wait()

    async def publisher(self) -> None:
        async with self.client() as http:
            async def step(n: int) -> None:
                body = {"topic": f"soak/{n % 5000}", "payload": {"n": n, "text": "x" * (n % 200)}}
                self.count("publish", await http.post(f"{self.api}/{DB}/messages", json=body))
            await self.every(0.02, step, "publish")

    async def subscriber(self, index: int) -> None:
        async with self.client() as http:
            async def step(n: int) -> None:
                params = {"topic": "soak/#", "tail": "2"}
                async with http.stream("GET", f"{self.api}/{DB}/events/stream", params=params) as response:
                    events = 0
                    with trio.move_on_after(2 + index % 3):
                        async for line in response.aiter_lines():
                            events += line.startswith("data:")
                            if events >= 20:
                                break
                    self.count("subscribe", response)
            await self.every(0.1, step, "subscribe")

    async def querier(self) -> None:
        async with self.client() as http:
            async def step(n: int) -> None:
                insert = {"sql": "INSERT INTO notes (body) VALUES (?)", "args": [f"note {n}"]}
                self.count("query", await http.post(f"{self.api}/{DB}/query", json=insert))
                read = {"sql": "SELECT count(*) AS n, max(id) AS last FROM notes WHERE id > ?", "args": [n % 97]}
                self.count("query", await http.post(f"{self.api}/{DB}/query", json=read))
            await self.every(0.05, step, "query")

    async def watcher(self, index: int) -> None:
        async with self.client() as http:
            async def step(n: int) -> None:
                body = {"sql": "SELECT count(*) AS n FROM notes", "options": {"heartbeat_seconds": 1}}
                async with http.stream("POST", f"{self.api}/{DB}/query/watch", json=body) as response:
                    with trio.move_on_after(3 + index):
                        async for _ in response.aiter_lines():
                            pass
                    self.count("watch", response)
            await self.every(0.2, step, "watch")

    async def webhooks(self) -> None:
        async with self.client() as http:
            async def step(n: int) -> None:
                response = await http.post(f"{self.api}/{DB}/webhooks/hook{n % 7}", params={"n": str(n)},
                                           json={"event": "soak", "n": n}, headers={"X-Delivery": str(n)})
                self.count("webhook", response, 200, 201, 202, 204)
            await self.every(0.1, step, "webhook")

    async def relay(self) -> None:
        async with httpx.AsyncClient(timeout=30) as producer, httpx.AsyncClient(timeout=30) as consumer:
            async def step(n: int) -> None:
                url = f"{self.base}/p/soak-{n}"
                got: list[httpx.Response] = []

                async def consume() -> None:
                    got.append(await consumer.get(url))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(consume)
                    self.count("relay", await producer.post(url, content=b"r" * (512 + n % 4096)))
                self.count("relay", got[0])
            await self.every(0.1, step, "relay")

    async def documents(self) -> None:
        """A new document every step, written once, reaped when idle; those 20 steps old are deleted."""
        async with self.client() as http:
            async def step(n: int) -> None:
                db = f"soak-doc-{n}"
                self.count("document", await http.put(f"{self.api}/{db}"))
                body = {"sql": "CREATE TABLE IF NOT EXISTS t (v)"}
                self.count("document", await http.post(f"{self.api}/{db}/query", json=body))
                self.count("document", await http.post(f"{self.api}/{db}/messages",
                                                       json={"topic": "t", "payload": n}))
                if n >= 20:
                    self.count("document", await http.delete(f"{self.api}/soak-doc-{n - 20}"))
            await self.every(0.5, step, "document")

    async def tokens(self) -> None:
        """A token minted, used a few times and revoked, over and over."""
        async with self.client() as http:
            async def step(n: int) -> None:
                scopes = [{"db": DB, "action": "query.read"}, {"db": DB, "action": "pub.publish"}]
                minted = await http.post(f"{self.base}/api/v1/admin/tokens", json={"label": f"soak {n}",
                                                                                   "scopes": scopes})
                self.count("token", minted)
                if minted.status_code != 201:
                    return
                token = minted.json()
                own = {"Authorization": f"Bearer {token['token']}"}
                for _ in range(3):
                    self.count("token", await http.post(f"{self.api}/{DB}/query", headers=own,
                                                        json={"sql": "SELECT 1"}))
                self.count("token", await http.delete(f"{self.base}/api/v1/admin/tokens/{token['id']}"))
            await self.every(2.0, step, "token")


async def setup(base: str) -> None:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
        (await http.put(f"{base}/api/v1/db/{DB}")).raise_for_status()
        body = {"sql": "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)"}
        (await http.post(f"{base}/api/v1/db/{DB}/query", json=body)).raise_for_status()


async def open_actors(base: str) -> int:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
        status = (await http.get(f"{base}/status")).json()
    return int(status["open_actors"])


def tracemalloc_report(data_dir: Path, pid: int, before: set[Path], lines: int) -> None:
    """Send SIGUSR1 and print the head of the snapshot diff the server writes for it."""
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        written = set(data_dir.glob("tracemalloc-*.txt")) - before
        done = [p for p in written if p.read_text().endswith("# end\n")]
        if done:
            before.add(done[0])
            print("  tracemalloc, top growth since the previous window:")
            for line in done[0].read_text().splitlines()[:lines]:
                print("   ", line)
            return
        time.sleep(0.2)
    print("  (no tracemalloc report: was the server started with SKALD_TRACEMALLOC=1?)")


@dataclasses.dataclass
class Server:
    name: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    base: str
    load: Load = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.load = Load(self.base)

    async def sample(self, minute: float) -> str:
        rss, fds, threads = process_figures(self.proc.pid)
        actors = await open_actors(self.base)
        load = self.load
        return (f"{minute:>6.1f} {self.name:>8} {rss:>7.1f} {fds:>5} {threads:>7} {actors:>6}"
                f" {sum(load.done.values()):>9} {sum(load.failed.values()):>6}  {os.getloadavg()[0]:.1f}")


def start_load(nursery: trio.Nursery, load: Load) -> None:
    nursery.start_soon(load.publisher)
    for i in range(4):
        nursery.start_soon(load.subscriber, i)
    nursery.start_soon(load.querier)
    for i in range(2):
        nursery.start_soon(load.watcher, i)
    nursery.start_soon(load.webhooks)
    nursery.start_soon(load.relay)
    nursery.start_soon(load.documents)
    nursery.start_soon(load.tokens)


async def run(args: argparse.Namespace, servers: list[Server]) -> None:
    for server in servers:
        await setup(server.base)
    print(f"{'minute':>6} {'server':>8} {'RSS MB':>7} {'fds':>5} {'threads':>7} {'actors':>6} {'requests':>9}"
          f" {'failed':>6}  load avg")
    reports: set[Path] = set()
    async with trio.open_nursery() as nursery:
        for server in servers:
            start_load(nursery, server.load)
        started = time.monotonic()
        end = started + args.minutes * 60
        next_sample = started
        while True:
            now = time.monotonic()
            if now >= next_sample:
                for server in servers:
                    print(await server.sample((now - started) / 60), flush=True)
                if args.tracemalloc and now > started:
                    await trio.to_thread.run_sync(tracemalloc_report, servers[0].data_dir, servers[0].proc.pid,
                                                  reports, args.top)
                next_sample += args.window
            if now >= end:
                break
            await trio.sleep(min(1.0, max(0.0, min(next_sample, end) - time.monotonic())))
        for server in servers:
            server.load.stop.set()
    # Every document idle: the supervisor closes them all (the load's main document too); then a little
    # longer than one malloc_trim_seconds (30 s), so what a trim gives back is seen.
    closed_by = time.monotonic() + IDLE_TIMEOUT * 10 + 30
    for server in servers:
        # Polling another process: there is no event to wait on.
        while await open_actors(server.base) > 0 and time.monotonic() < closed_by:  # noqa: ASYNC110
            await trio.sleep(1)
    await trio.sleep(args.settle)
    for server in servers:
        rss, fds, threads = process_figures(server.proc.pid)
        actors = await open_actors(server.base)
        print(f"{server.name}: load stopped, {actors} documents open {args.settle:g} s later: RSS {rss:.1f} MB,"
              f" {fds} fds, {threads} threads")
    if args.tracemalloc:
        await trio.to_thread.run_sync(tracemalloc_report, servers[0].data_dir, servers[0].proc.pid, reports,
                                      args.top)
    for server in servers:
        print(f"{server.name} requests:", json.dumps(dict(sorted(server.load.done.items()))))
        print(f"{server.name} failed:",
              json.dumps(dict(sorted(server.load.failed.items()))) if server.load.failed else "none")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--window", type=float, default=120.0, help="seconds between samples")
    parser.add_argument("--tracemalloc", action="store_true", help="SKALD_TRACEMALLOC=1, a diff per window")
    parser.add_argument("--top", type=int, default=12, help="tracemalloc lines printed per window")
    parser.add_argument("--compare", action="store_true",
                        help="a second server beside it, same load, native-memory settings off (the 'before')")
    parser.add_argument("--settle", type=float, default=35.0,
                        help="seconds waited after every document closed before the last sample")
    args = parser.parse_args()
    print(f"soak: {args.minutes:g} minutes, a sample every {args.window:g} s, idle_timeout {IDLE_TIMEOUT:g} s,"
          f" load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        servers: list[Server] = []
        try:
            variants: list[tuple[str, dict[str, str]]] = [("skald", {})]
            if args.compare:
                variants.append(("peer", PEER_ENV))
            for n, (name, env) in enumerate(variants):
                data_dir = Path(tmp) / f"data{n}"
                proc, base = start_server(data_dir, args.tracemalloc and n == 0, env)
                servers.append(Server(name, data_dir, proc, base))
            trio.run(run, args, servers)
        finally:
            for server in servers:
                server.proc.send_signal(signal.SIGTERM)
            for server in servers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.proc.wait(timeout=30)
                if server.proc.poll() is None:
                    server.proc.kill()
                    server.proc.wait()


if __name__ == "__main__":
    main()
