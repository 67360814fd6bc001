"""How long SIGTERM takes, and whether every request the server took got an answer.

Starts ``python -m skald serve`` on port 0 in a subprocess with a grace period
(default 10 s), sets up a scenario, sends SIGTERM and measures the time until
the process exits. Requests keep arriving during the grace; each one's outcome
is recorded: an answer (its status), ``refused`` (the connection was never
accepted: fine, the client knows nothing was done) or ``no answer`` (the
request was sent and the connection then closed or reset without a response).

    python bench/shutdown.py [--grace 10] [--rounds 3] [--scenario relay|idle|streams|mixed]

Prints one line per round: seconds from SIGTERM to exit, outcomes by kind, and
how each long-lived stream ended.
"""

from __future__ import annotations

import argparse
import collections
import functools
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import trio
import watch  # bench/ is on sys.path when a script runs: the server start is shared
from httpx_sse import aconnect_sse

TOKEN = watch.TOKEN
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


async def start_server(data_dir: Path, grace: float) -> tuple[subprocess.Popen[bytes], str]:
    # one client IP drives the load: the limiters stay far above it
    return await watch.start_server(
        data_dir,
        SKALD_GRACE_SECONDS=str(grace),
        SKALD_RATE_LIMIT_PER_SECOND="100000",
        SKALD_RATE_LIMIT_BURST="100000",
        SKALD_PUBLIC_RATE_PER_SECOND="100000",
        SKALD_PUBLIC_RATE_BURST="100000",
    )


class Outcomes:
    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.streams: list[str] = []
        self.exited = False  # outcomes after the process exited say nothing about shutdown

    def count(self, outcome: str) -> str:
        if not self.exited:
            self.counts[outcome] += 1
        return outcome

    async def call(self, client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> str:
        try:
            response = await client.request(method, path, **kwargs)
        except httpx.ConnectError:
            return self.count("refused")
        except httpx.TransportError as exc:
            return self.count(f"no answer ({type(exc).__name__}, {method} {path.split('/')[1]})")
        code = ""
        if response.headers.get("content-type", "").startswith("application/problem+json"):
            code = " " + response.json().get("code", "")
        return self.count(f"{response.status_code}{code}")

    async def stream(self, client: httpx.AsyncClient, name: str, method: str, path: str, **kwargs: Any) -> None:
        events: list[str] = []
        try:
            async with aconnect_sse(client, method, path, **kwargs) as source:
                if source.response.status_code != 200:
                    self.streams.append(f"{name}: {source.response.status_code}")
                    return
                async with aclosing(source.aiter_sse()) as sse:
                    async for event in sse:
                        events.append(event.event)
            self.streams.append(f"{name}: ended cleanly, last event {events[-1] if events else None!r}")
        except httpx.ConnectError:
            self.streams.append(f"{name}: refused")
        except httpx.TransportError as exc:
            self.streams.append(f"{name}: cut ({type(exc).__name__}), last event {events[-1] if events else None!r}")


async def scenario_streams(url: str, out: Outcomes, nursery: trio.Nursery, started: trio.Event) -> None:
    """An SSE subscriber, a query watch and the change feed on one document."""
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=60) as client:
        await client.put("/api/v1/db/s")
        await client.post("/api/v1/db/s/query", json={"sql": "CREATE TABLE IF NOT EXISTS t (x)"})
    for name, method, path, kwargs in (
        ("subscriber", "GET", "/api/v1/db/s/events/stream?topic=%23", {}),
        ("watch", "POST", "/api/v1/db/s/query/watch", {"json": {"sql": "SELECT count(*) FROM t"}}),
        ("changes", "GET", "/api/v1/db/s/changes/stream", {}),
    ):
        client = httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=60)
        nursery.start_soon(_closing, client, out.stream(client, name, method, path, **kwargs))
    started.set()


async def _closing(client: httpx.AsyncClient, work: Awaitable[object]) -> None:
    async with client:
        await work


async def run_round(grace: float, scenario: str) -> tuple[float, Outcomes]:
    out = Outcomes()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = await start_server(Path(tmp) / "data", grace)
        try:
            async with trio.open_nursery() as nursery:
                ready = trio.Event()
                stop_load = trio.Event()
                if scenario == "relay":
                    client = httpx.AsyncClient(base_url=url, timeout=60)
                    nursery.start_soon(_closing, client, out.call(client, "GET", "/p/x"))
                    ready.set()
                elif scenario == "idle":

                    async def kept_alive() -> None:
                        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                            await out.call(client, "GET", "/healthz")  # the connection stays open
                            ready.set()
                            await stop_load.wait()

                    nursery.start_soon(kept_alive)
                elif scenario == "streams":
                    await scenario_streams(url, out, nursery, ready)
                else:
                    await scenario_streams(url, out, nursery, trio.Event())
                    client = httpx.AsyncClient(base_url=url, timeout=60)
                    nursery.start_soon(_closing, client, out.call(client, "GET", "/p/waiting"))
                    await mixed_load(url, out, nursery, stop_load, ready)
                await ready.wait()
                await trio.sleep(0.5)  # the load runs; streams are open
                sent = time.perf_counter()
                proc.send_signal(signal.SIGTERM)
                # Requests that arrive during the grace: a publish and three watches, new connections.
                for _ in range(3):
                    late = httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=60)
                    watch = out.stream(late, "late watch", "POST", "/api/v1/db/s/query/watch", json={"sql": "SELECT 1"})
                    nursery.start_soon(_closing, late, watch)
                late = httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=60)
                nursery.start_soon(_closing, late, out.call(late, "POST", "/api/v1/db/s/messages",
                                                            json={"topic": "late", "payload": 1}))
                await trio.to_thread.run_sync(proc.wait)
                took = time.perf_counter() - sent
                out.exited = True
                stop_load.set()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    return took, out


async def mixed_load(url: str, out: Outcomes, nursery: trio.Nursery, stop: trio.Event, ready: trio.Event) -> None:
    """Eight workers on kept-alive connections: publishes, writes, reads and relay pairs, until ``stop``."""
    async with httpx.AsyncClient(base_url=url, headers=HEADERS) as client:
        await client.post("/api/v1/db/s/query", json={"sql": "CREATE TABLE IF NOT EXISTS w (x)"})

    async def worker(i: int) -> None:
        async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=60) as client:
            n, outcome = 0, ""  # outcome: what the last call got, as Outcomes.call names it
            while not stop.is_set() and outcome != "refused":  # refused: a real client goes elsewhere
                n += 1
                kind = n % 4
                if kind == 0:
                    message = {"topic": f"t/{i}", "payload": n}
                    outcome = await out.call(client, "POST", "/api/v1/db/s/messages", json=message)
                elif kind == 1:
                    insert = {"sql": "INSERT INTO w VALUES (?)", "args": [n]}
                    outcome = await out.call(client, "POST", "/api/v1/db/s/query", json=insert)
                elif kind == 2:
                    select = {"sql": "SELECT count(*) FROM w"}
                    outcome = await out.call(client, "POST", "/api/v1/db/s/query", json=select)
                else:
                    async with trio.open_nursery() as pair:
                        path = f"/p/pair-{i}-{n}"
                        pair.start_soon(functools.partial(out.call, client, "POST", path, content=b"hello"))
                        outcome = await out.call(client, "GET", path)
                if out.counts.total() > 50:
                    ready.set()

    for i in range(8):
        nursery.start_soon(worker, i)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenario", choices=["relay", "idle", "streams", "mixed"], default="mixed")
    args = parser.parse_args()
    for i in range(args.rounds):
        took, out = await run_round(args.grace, args.scenario)
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(out.counts.items()))
        print(f"round {i + 1} [{args.scenario}, grace {args.grace:g} s]: SIGTERM to exit {took:.2f} s; {outcomes}")
        for line in out.streams:
            print(f"    {line}")


if __name__ == "__main__":
    trio.run(main)
