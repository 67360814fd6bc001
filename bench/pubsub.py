"""Pub/sub benchmark: framework ceiling vs durable publish, and fan-out latency.

One run, one ``skald serve`` process (fresh data folder):

(a) ``POST /api/v1/db/{db}/ping``: an authenticated no-op POST (the framework ceiling),
(b) ``POST /api/v1/db/{db}/messages``: a durable publish (201 after COMMIT),
    each with wrk at 1, 8 and 32 connections, then the ratio (b)/(a);
(c) publish -> delivery latency p50/p99 to 1, 100 and 1,000 SSE subscribers that connect at once, and how
    many of them had to retry connecting ("retried": the listen queue overflowed and dropped them).

Usage: ``python bench/pubsub.py [--seconds 3] [--rounds 3] [--messages 30]``. Needs ``wrk``.
The load generator shares the machine with the server: numbers are relative.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

TOKEN = "skd_bench_admin_token_0123456789abcdefghijklmnop"
DB = "bench"
_WRK_SCRIPT = (
    'wrk.method = "POST"\n'
    """wrk.body = '{"topic": "bench/load", "payload": {"n": 1, "text": "hello"}}'\n"""
    'wrk.headers["Content-Type"] = "application/json"\n'
    f'wrk.headers["Authorization"] = "Bearer {TOKEN}"\n'
)


def start_server(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "SKALD_ADMIN_TOKEN": TOKEN, "SKALD_LOG_LEVEL": "warning"}
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


def wrk_rate(url: str, connections: int, seconds: int, script: Path) -> tuple[float, int]:
    """Requests/s and non-2xx count from one wrk run."""
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert found is not None, f"wrk printed no rate:\n{out}"
    rate = float(found[1])
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, int(bad[1]) if bad else 0


# ---- fan-out latency ----------------------------------------------------------------------------------


class Subscriber:
    def __init__(self) -> None:
        self.live = trio.Event()
        self.seen: dict[int, float] = {}
        self.changed = trio.Event()
        self.retransmitted = 0  # TCP segments sent again while connecting (a full listen queue drops them)


def _retransmissions(stream: trio.SocketStream) -> int:
    if not hasattr(socket, "TCP_INFO"):
        return 0  # not Linux
    info = stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 100)[0])  # tcpi_total_retrans


async def run_subscriber(host: str, port: int, sub: Subscriber) -> None:
    stream = await trio.open_tcp_stream(host, port)
    request = (
        f"GET /api/v1/db/{DB}/events/stream?topic=lat HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    async with stream:
        await stream.send_all(request)
        buffer = b""
        seq = re.compile(rb'"seq":(\d+)')
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            now = time.perf_counter()
            buffer += data
            *frames, buffer = buffer.split(b"\n\n")
            for frame in frames:
                if b"event: heartbeat" in frame and not sub.live.is_set():
                    sub.retransmitted = _retransmissions(stream)
                    sub.live.set()
                found = seq.search(frame)
                if found:
                    sub.seen[int(found[1])] = now
                    sub.changed.set()


async def fanout_latency(url: str, subscribers: int, messages: int) -> tuple[float, float, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    subs = [Subscriber() for _ in range(subscribers)]
    sent: dict[int, float] = {}
    async with trio.open_nursery() as nursery:
        for sub in subs:
            nursery.start_soon(run_subscriber, host, int(port), sub)
        with trio.fail_after(120):
            for sub in subs:
                await sub.live.wait()
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            for n in range(messages):
                sent[n] = time.perf_counter()
                body = {"topic": "lat", "payload": {"seq": n}}
                r = await client.post(f"/api/v1/db/{DB}/messages", json=body)
                r.raise_for_status()
                with trio.fail_after(60):
                    for sub in subs:
                        while n not in sub.seen:
                            sub.changed = trio.Event()
                            await sub.changed.wait()
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    latencies = sorted((sub.seen[n] - sent[n]) * 1000 for sub in subs for n in range(messages))
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return p50, p99, sum(1 for sub in subs if sub.retransmitted)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=3, help="wrk duration per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating a/b rounds per point (median)")
    parser.add_argument("--messages", type=int, default=30, help="messages per latency point")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="skald-bench-"))
    proc, url = start_server(tmp / "data")
    try:
        httpx.put(f"{url}/api/v1/db/{DB}", headers={"Authorization": f"Bearer {TOKEN}"}).raise_for_status()
        script = tmp / "post.lua"
        script.write_text(_WRK_SCRIPT)
        cores = os.cpu_count()
        setup = f"{cores} cores, wrk -t1, median of {args.rounds} x {args.seconds}s"
        print(f"skald pub/sub benchmark against {url} ({setup})")
        print(f"{'clients':>8} {'(a) no-op req/s':>16} {'(b) publish req/s':>18} {'(b)/(a)':>8}")
        for connections in (1, 8, 32):
            # a and b alternate for several rounds (median of each): the machine is shared and noisy,
            # and interleaving keeps drift from favouring either side
            noops, publishes, bad_a, bad_b = [], [], 0, 0
            for _ in range(args.rounds):
                rate, bad = wrk_rate(f"{url}/api/v1/db/{DB}/ping", connections, args.seconds, script)
                noops.append(rate)
                bad_a += bad
                rate, bad = wrk_rate(f"{url}/api/v1/db/{DB}/messages", connections, args.seconds, script)
                publishes.append(rate)
                bad_b += bad
            noop, publish = statistics.median(noops), statistics.median(publishes)
            note = f"  (non-2xx: a={bad_a} b={bad_b})" if bad_a or bad_b else ""
            print(f"{connections:>8} {noop:>16.0f} {publish:>18.0f} {publish / noop:>8.2f}{note}")
        print()
        heading = f"{'subscribers':>11} {'p50 ms':>8} {'p99 ms':>8} {'retried':>8}"
        print(f"{heading}   (publish -> SSE delivery, {args.messages} msgs)")
        for count in (1, 100, 1000):
            p50, p99, retried = trio.run(fanout_latency, url, count, args.messages)
            print(f"{count:>11} {p50:>8.2f} {p99:>8.2f} {retried:>8}")
        metrics = httpx.get(f"{url}/metrics").text
        batch = re.search(
            r"skald_commit_batch_size_sum (\S+)\n.*?skald_commit_batch_size_count (\S+)", metrics, re.S
        )
        if batch:
            print(f"\nmean group-commit batch: {float(batch[1]) / float(batch[2]):.1f} ops")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
