"""HTTP benchmark: skald's hot routes against the bare no-op app on the same stack.

One run starts two processes on fresh ports:

* the **no-op app** (``bench/noop_app.py``): a 10-line quart-trio ``POST /ping`` on stock
  hypercorn's trio worker, the framework's ceiling on this machine;
* **skald** (``python -m skald serve``, fresh data folder, one document ``bench`` with a
  table ``t``),

then measures with wrk, at 1, 16 and 64 connections, taking turns (no-op, then each skald
workload, repeated ``--rounds`` times; the median of each):

=========  ===============================================================
ping       authenticated ``POST /api/v1/db/bench/ping`` (auth, JSON body, no document)
insert     ``POST /api/v1/db/bench/query`` ``INSERT INTO t(v) VALUES (?)`` (group commit)
read       ``POST /api/v1/db/bench/query`` ``SELECT id, v FROM t WHERE id = ?`` (read pool)
publish    ``POST /api/v1/db/bench/messages`` (durable, 2xx after commit)
=========  ===============================================================

and prints requests/s and each ratio to the no-op app (goals: ping >= 0.9, the others
>= 0.7). Non-2xx answers are counted and printed: a fast error is not a fast answer.

A second table prints the server's CPU time per request (user + system, all threads, from
``/proc``) and the ratio no-op CPU / skald CPU: on a machine shared with other work the
rates swing with the neighbours' load, the CPU cost of a request much less; when the server
is CPU-bound the two ratios agree.

Usage: ``python bench/http_stack.py [--seconds 3] [--rounds 3] [--connections 1,16,64]
[--only ping,insert]``. Needs ``wrk`` (``apt install wrk``; benches are not run by CI).
The load generator shares the machine with the server: compare ratios, not absolutes.

(The issue calls it ``bench/http.py``; a script of that name shadows the standard library's
``http`` package, for its own imports and for mypy's ``bench`` base.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

TOKEN = "skd_bench_admin_token_0123456789abcdefghijklmnop"
DB = "bench"
HERE = Path(__file__).resolve().parent


def _lua(body: object, token: str | None) -> str:
    text = json.dumps(body).replace("\\", "\\\\").replace("'", "\\'")
    lines = ['wrk.method = "POST"', f"wrk.body = '{text}'", 'wrk.headers["Content-Type"] = "application/json"']
    if token:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {token}"')
    return "\n".join(lines) + "\n"


# name -> (path on skald, body); "noop" is served by the no-op app
WORKLOADS: dict[str, tuple[str, object]] = {
    "ping": (f"/api/v1/db/{DB}/ping", {"topic": "bench/load", "payload": {"n": 1}}),
    "insert": (f"/api/v1/db/{DB}/query", {"sql": "INSERT INTO t(v) VALUES (?)", "args": ["hello"]}),
    "read": (f"/api/v1/db/{DB}/query", {"sql": "SELECT id, v FROM t WHERE id = ?", "args": [1]}),
    "publish": (f"/api/v1/db/{DB}/messages", {"topic": "bench/load", "payload": {"n": 1, "text": "hello"}}),
}


def start(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(rb"listening on (http://\S+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"{argv[1]} did not start: {line!r}")
    return proc, match[1].decode()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and all its threads so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, connections: int, seconds: int, script: Path, pid: int) -> tuple[float, int, float]:
    """Requests/s, the count of non-2xx answers and the server's CPU µs per request of one wrk run."""
    before = cpu_seconds(pid)
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert found is not None, f"wrk printed no rate:\n{out}"
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    assert total is not None, out
    cpu_us = (cpu_seconds(pid) - before) * 1e6 / max(1, int(total[1]))
    return float(found[1]), int(bad[1]) if bad else 0, cpu_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=3, help="wrk duration per run")
    parser.add_argument("--rounds", type=int, default=3, help="turns per point (the median is printed)")
    parser.add_argument("--connections", default="1,16,64", help="comma-separated wrk connection counts")
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated skald workloads")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt install wrk)")
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(WORKLOADS)
    if unknown:
        raise SystemExit(f"unknown workloads: {', '.join(sorted(unknown))}")
    tmp = Path(tempfile.mkdtemp(prefix="skald-bench-http-"))
    env = {**os.environ, "SKALD_ADMIN_TOKEN": TOKEN, "SKALD_LOG_LEVEL": "warning"}
    serve_noop = f"import sys; sys.path.insert(0, {str(HERE)!r}); import noop_app; noop_app.serve_forever()"
    noop_proc, noop_url = start([sys.executable, "-c", serve_noop], env)
    skald_proc, skald_url = start(
        [sys.executable, "-m", "skald", "serve", "--port", "0", "--data-dir", str(tmp / "data")], env
    )
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        httpx.put(f"{skald_url}/api/v1/db/{DB}", headers=auth).raise_for_status()
        setup = {"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"}
        httpx.post(f"{skald_url}/api/v1/db/{DB}/query", headers=auth, json=setup).raise_for_status()
        seed = {"sql": "INSERT INTO t(v) VALUES (?)", "args": ["seed"]}
        httpx.post(f"{skald_url}/api/v1/db/{DB}/query", headers=auth, json=seed).raise_for_status()
        scripts = {"noop": tmp / "noop.lua"}
        scripts["noop"].write_text(_lua(WORKLOADS["ping"][1], None))
        for name in names:
            scripts[name] = tmp / f"{name}.lua"
            scripts[name].write_text(_lua(WORKLOADS[name][1], TOKEN))
        print(f"skald HTTP benchmark ({os.cpu_count()} cores, wrk -t1, median of {args.rounds} x {args.seconds}s)"
              f"  load {os.getloadavg()[0]:.2f}")
        print(f"  no-op app {noop_url}  skald {skald_url}")
        header = f"{'conns':>5} {'no-op/s':>8}" + "".join(f" {n + '/s':>10} {'ratio':>6}" for n in names)
        print(header)
        cpu_lines = []
        for connections in (int(c) for c in args.connections.split(",")):
            rates: dict[str, list[float]] = {n: [] for n in ["noop", *names]}
            cpus: dict[str, list[float]] = {n: [] for n in rates}
            bad: dict[str, int] = dict.fromkeys(rates, 0)
            for _ in range(args.rounds):
                # taking turns: drift on a shared machine then favours no side
                for name in rates:
                    url = f"{noop_url}/ping" if name == "noop" else skald_url + WORKLOADS[name][0]
                    pid = noop_proc.pid if name == "noop" else skald_proc.pid
                    rate, errors, cpu = wrk(url, connections, args.seconds, scripts[name], pid)
                    rates[name].append(rate)
                    cpus[name].append(cpu)
                    bad[name] += errors
            noop = statistics.median(rates["noop"])
            noop_cpu = statistics.median(cpus["noop"])
            line = f"{connections:>5} {noop:>8.0f}"
            cpu_line = f"{connections:>5} {noop_cpu:>8.0f}"
            for name in names:
                rate, cpu = statistics.median(rates[name]), statistics.median(cpus[name])
                line += f" {rate:>10.0f} {rate / noop:>6.2f}"
                cpu_line += f" {cpu:>10.0f} {noop_cpu / cpu:>6.2f}"
            failed = {n: c for n, c in bad.items() if c}
            print(line + (f"  non-2xx: {failed}" if failed else ""), flush=True)
            cpu_lines.append(cpu_line)
        print("\nserver CPU µs per request (ratio: no-op CPU / skald CPU)")
        print(f"{'conns':>5} {'no-op µs':>8}" + "".join(f" {n + ' µs':>10} {'ratio':>6}" for n in names))
        print("\n".join(cpu_lines))
        print(f"load {os.getloadavg()[0]:.2f} after")
    finally:
        for proc in (skald_proc, noop_proc):
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
