"""Many documents: the write rate spread over 1,000 documents, and what 10,000 open documents cost.

Two parts, each against a fresh ``python -m skald serve`` (its own data folder):

(a) **spread**: the same write load, wrk at ``--connections`` (16) posting
    ``INSERT INTO t(v) VALUES (?)`` through ``/query``, once to one document and once
    spread at random over ``--documents`` (1,000) documents, taking turns ``--rounds``
    times (median printed). Prints requests/s, the server's CPU µs per request (all
    threads, from ``/proc``) and the ratio spread / one (goal: >= 0.9). CPU per request
    moves much less than the rate with a neighbour's load on a shared machine.
(b) **open**: opens ``--open`` (10,000) documents, each with one tiny write (create it,
    publish one message), and prints the server's RSS and thread count (``/proc/<pid>/status``)
    and its open actors after 1k, 5k and 10k, then waits for the supervisor to reap them
    (``idle_timeout`` = ``--idle-timeout``) and prints the same again. The open actors are
    printed beside each figure: if opening takes longer than the idle timeout, early documents
    are already reaped (raise ``--idle-timeout``).

The load average is printed beside every figure. Usage:
``python bench/documents.py [--only spread,open] [--seconds 5] [--rounds 3] [--documents 1000]
[--open 10000] [--idle-timeout 180]``; wrap it in ``flock /tmp/bench.lock`` on a shared machine.
Needs ``wrk`` (``apt install wrk``). Server settings (``SKALD_*`` in the environment, e.g.
``SKALD_DB_WRITER_THREADS``) are passed through.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import trio

TOKEN = "skd_bench_admin_token_0123456789abcdefghijklmnop"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
INSERT = '{"sql": "INSERT INTO t(v) VALUES (?)", "args": ["hello"]}'


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}/{fifteen:.1f}"


def start(data_dir: Path, **settings: str) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "SKALD_ADMIN_TOKEN": TOKEN, "SKALD_LOG_LEVEL": "warning"}
    env.update({f"SKALD_{k.upper()}": v for k, v in settings.items()})
    argv = [sys.executable, "-m", "skald", "serve", "--port", "0", "--data-dir", str(data_dir)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(rb"listening on (http://\S+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"skald did not start: {line!r}")
    return proc, match[1].decode()


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=60)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and all its threads so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory(pid: int) -> tuple[float, int]:
    """(RSS in MiB, threads) of process ``pid``."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(status["VmRSS"].split()[0]) / 1024, int(status["Threads"])


Request = tuple[str, str, str | None]  # method, path, JSON body


async def each(url: str, groups: Iterable[list[Request]], concurrency: int = 16) -> None:
    """Send each group's requests in order, ``concurrency`` groups at a time; a non-2xx stops the bench."""
    pending = iter(groups)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120) as client:

        async def lane() -> None:
            for group in pending:
                for method, path, body in group:
                    headers = {"Content-Type": "application/json"} if body else None
                    r = await client.request(method, path, content=body, headers=headers)
                    if r.status_code >= 300:
                        raise SystemExit(f"{method} {path}: {r.status_code} {r.text}")

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(lane)


def open_actors(url: str) -> int:
    r = httpx.get(f"{url}/status", headers=AUTH, timeout=60)
    r.raise_for_status()
    return int(r.json()["open_actors"])


# ---- (a) one document vs spread ------------------------------------------------------------------


def _lua(documents: int) -> str:
    # documents == 1: every request to "d0"; else a random one of d0..d{documents-1}
    return f"""
wrk.method = "POST"
wrk.body = '{INSERT}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {TOKEN}"
math.randomseed(os.time())
request = function()
  return wrk.format(nil, "/api/v1/db/d" .. math.random(0, {documents - 1}) .. "/query")
end
"""


def wrk(url: str, connections: int, seconds: int, script: Path, pid: int) -> tuple[float, int, float]:
    """Requests/s, non-2xx answers and the server's CPU µs per request of one wrk run."""
    before = cpu_seconds(pid)
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    assert rate is not None and total is not None, out
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return float(rate[1]), int(bad[1]) if bad else 0, (cpu_seconds(pid) - before) * 1e6 / max(1, int(total[1]))


def spread(tmp: Path, args: argparse.Namespace) -> None:
    proc, url = start(tmp / "spread")
    try:
        started = time.perf_counter()
        create = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"
        body = f'{{"sql": "{create}"}}'
        # one INSERT each before measuring: what a document learns on its first statement (its
        # class, remembered per schema) is learnt by the one document in its first request
        trio.run(each, url, [[("PUT", f"/api/v1/db/d{i}", None), ("POST", f"/api/v1/db/d{i}/query", body),
                              ("POST", f"/api/v1/db/d{i}/query", INSERT)] for i in range(args.documents)])
        print(f"(a) {args.documents} documents created in {time.perf_counter() - started:.0f}s; {load()}")
        scripts = {1: tmp / "one.lua", args.documents: tmp / "spread.lua"}
        for documents, script in scripts.items():
            script.write_text(_lua(documents))
        rates: dict[int, list[float]] = {d: [] for d in scripts}
        cpus: dict[int, list[float]] = {d: [] for d in scripts}
        ratios: list[float] = []
        for round_ in range(args.rounds):
            for documents, script in scripts.items():  # taking turns: drift favours neither
                rate, bad, cpu = wrk(url, args.connections, args.seconds, script, proc.pid)
                if bad:
                    raise SystemExit(f"{bad} non-2xx answers writing to {documents} documents")
                rates[documents].append(rate)
                cpus[documents].append(cpu)
            ratios.append(rates[args.documents][-1] / rates[1][-1])
            print(
                f"    round {round_ + 1}: one {rates[1][-1]:.0f}/s ({cpus[1][-1]:.0f} µs CPU/req), "
                f"spread {rates[args.documents][-1]:.0f}/s ({cpus[args.documents][-1]:.0f} µs CPU/req); {load()}"
            )
        one, many = statistics.median(rates[1]), statistics.median(rates[args.documents])
        cpu_one, cpu_many = statistics.median(cpus[1]), statistics.median(cpus[args.documents])
        rss, threads = memory(proc.pid)
        print(
            f"(a) INSERT via /query, wrk {args.connections} connections, median of {args.rounds} x {args.seconds}s:\n"
            f"    one document {one:.0f}/s, {cpu_one:.0f} µs CPU/req | spread over {args.documents}: "
            f"{many:.0f}/s, {cpu_many:.0f} µs CPU/req\n"
            f"    ratio spread/one: rate {statistics.median(ratios):.2f} (median of per-round ratios), "
            f"CPU {cpu_one / cpu_many:.2f}; server RSS {rss:.0f} MiB, {threads} threads; {load()}"
        )
    finally:
        stop(proc)


# ---- (b) 10,000 open documents -------------------------------------------------------------------


def open_many(tmp: Path, args: argparse.Namespace) -> None:
    proc, url = start(tmp / "open", idle_timeout=str(args.idle_timeout))
    try:
        rss, threads = memory(proc.pid)
        print(f"(b) idle server: RSS {rss:.0f} MiB, {threads} threads; {load()}")
        checkpoints = sorted({c for c in (1_000, 5_000, 10_000) if c < args.open} | {args.open})
        done = 0
        started = time.perf_counter()
        message = '{"topic": "t", "payload": "x"}'
        for checkpoint in checkpoints:
            batch = range(done, checkpoint)
            trio.run(each, url, [[("PUT", f"/api/v1/db/m{i}", None), ("POST", f"/api/v1/db/m{i}/messages", message)]
                                 for i in batch])
            done = checkpoint
            rss, threads = memory(proc.pid)
            actors = open_actors(url)
            print(
                f"    {checkpoint:>6} documents written ({time.perf_counter() - started:.0f}s): RSS {rss:.0f} MiB, "
                f"{threads} threads, {actors} open actors, {rss * 1024 / max(1, actors):.0f} KiB per open; {load()}",
                flush=True,
            )
        deadline = time.monotonic() + args.idle_timeout + 120
        while (actors := open_actors(url)) > 0 and time.monotonic() < deadline:
            time.sleep(1)  # a benchmark, not a test: poll the server until the reaper is done
        rss, threads = memory(proc.pid)
        print(f"    after reaping: RSS {rss:.0f} MiB, {threads} threads, {actors} open actors; {load()}")
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="spread,open", help="comma-separated parts: spread, open")
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per run (spread)")
    parser.add_argument("--rounds", type=int, default=3, help="turns per side (spread)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (spread)")
    parser.add_argument("--documents", type=int, default=1000, help="documents the spread load uses")
    parser.add_argument("--open", type=int, default=10_000, help="documents to open (open)")
    parser.add_argument("--idle-timeout", type=float, default=180.0, help="the server's idle_timeout (open)")
    args = parser.parse_args()
    parts = [p for p in args.only.split(",") if p]
    if set(parts) - {"spread", "open"}:
        raise SystemExit("--only takes spread and/or open")
    if "spread" in parts and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt install wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="skald-bench-documents-"))
    print(f"skald many-documents benchmark ({os.cpu_count()} cores); {load()}")
    try:
        if "spread" in parts:
            spread(tmp, args)
        if "open" in parts:
            open_many(tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
