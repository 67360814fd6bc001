"""MQTT benchmark: QoS 1 publish throughput and publish-to-delivery latency, skald against mosquitto.

One run, two servers, the same load generator (this process, trio, raw sockets, MQTT 3.1.1):

* ``skald serve --mqtt-port`` on a fresh data folder (every PUBACK after the SQLite commit);
* Debian ``mosquitto`` on a free port with ``persistence true`` (it acknowledges from memory and
  writes its database every ``autosave_interval`` seconds: the durability is not the same).

32 publisher connections publish QoS 1 with a window of ``--window`` unacknowledged messages,
publisher ``i`` on topic ``bench/p<i>``; 100 subscriber connections, subscriber ``j`` on
``bench/p<j mod 32>`` (QoS 1), so each message reaches about 3 subscribers.

(a) throughput: every publisher as fast as its window allows for ``--seconds``; PUBACKs per second;
(b) latency: both servers at half of skald's peak rate (paced per publisher), the time from
    sending a PUBLISH to a subscriber receiving it, p50 and p99 over every delivery.

Each phase also prints the server's CPU time per published message (from /proc/<pid>/stat: a
figure that survives a loaded machine), the load average, and in (b) the PUBACK latency (publish
to commit to acknowledgement) beside the delivery latency.

Usage: ``flock /tmp/bench.lock python bench/mqtt.py [--seconds 5] [--window 16]``. Needs ``mosquitto``.
The load generator shares the machine (and its 2 cores) with the server: numbers are relative,
and mosquitto's can be bounded by this Python generator rather than by mosquitto.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from skald.mqtt import codec  # the repository's own codec, client side

TOKEN = "skd_bench_admin_token_0123456789abcdefghijklmnop"
PUBLISHERS = 32
SUBSCRIBERS = int(os.environ.get("BENCH_SUBSCRIBERS", "100"))
P311 = codec.PROTOCOL_311


def start_skald(data_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    env = {**os.environ, "SKALD_ADMIN_TOKEN": TOKEN, "SKALD_LOG_LEVEL": "warning",
           "SKALD_RATE_LIMIT_PER_SECOND": "1000000", "SKALD_RATE_LIMIT_BURST": "1000000"}
    proc = subprocess.Popen(
        [sys.executable, *os.environ.get("BENCH_SKALD_PREFIX", "").split(), "-m", "skald", "serve",
         "--port", "0", "--mqtt-port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )
    assert proc.stdout is not None
    mqtt_port = 0
    while True:
        line = proc.stdout.readline()
        if match := re.search(rb"mqtt listening on \S+:(\d+)", line):
            mqtt_port = int(match[1])
        elif match := re.search(rb"listening on (http://\S+)", line):
            url = match[1].decode()
            break
        elif not line:
            raise RuntimeError("skald did not start")
    r = httpx.put(f"{url}/api/v1/db/bench", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code in (200, 201), r.text
    return proc, mqtt_port


def start_mosquitto(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {folder}/\nmax_inflight_messages 64\nmax_queued_messages 100000\n"
    )
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


class Conn:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = codec.PacketReader(stream, 1 << 24)

    @classmethod
    async def open(cls, port: int, client_id: str) -> Conn:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = cls(stream)
        await stream.send_all(codec.Connect(P311, client_id, True, 60, "bench", TOKEN.encode()).encode())
        ack = codec.decode(await conn.frame(), P311)
        assert isinstance(ack, codec.ConnAck) and ack.reason == codec.Reason.SUCCESS, ack
        return conn

    async def frame(self) -> bytes:
        frame = await self.reader.next_frame()
        assert frame is not None
        return frame


async def subscriber(port: int, j: int, ready: trio.Event, counts: list[int], latencies: list[float] | None,
                     scope: trio.CancelScope) -> None:
    conn = await Conn.open(port, f"sub-{j}")
    await conn.stream.send_all(codec.Subscribe(1, [codec.Subscription(f"bench/p{j % PUBLISHERS}", 1)]).encode(P311))
    assert isinstance(codec.decode(await conn.frame(), P311), codec.SubAck)
    ready.set()
    with scope:
        while True:
            packet = codec.decode(await conn.frame(), P311)
            if isinstance(packet, codec.Publish):
                counts[0] += 1
                if latencies is not None:
                    (sent,) = struct.unpack_from("!d", packet.payload)
                    latencies.append(time.perf_counter() - sent)
                if packet.qos:
                    assert packet.packet_id is not None
                    await conn.stream.send_all(codec.PubAck(packet.packet_id).encode(P311))
    await conn.stream.aclose()


async def publisher(port: int, i: int, window: int, until: float, interval: float | None, acked: list[int],
                    ack_latencies: list[float] | None = None) -> None:
    conn = await Conn.open(port, f"pub-{i}")
    slots = trio.Semaphore(window)
    sent_at: dict[int, float] = {}

    async def read_acks() -> None:
        while True:
            packet = codec.decode(await conn.frame(), P311)
            if isinstance(packet, codec.PubAck):
                acked[0] += 1
                sent = sent_at.pop(packet.packet_id, None)
                if ack_latencies is not None and sent is not None:
                    ack_latencies.append(time.perf_counter() - sent)
                slots.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_acks)
        packet_id = 0
        next_at = time.perf_counter()
        while time.perf_counter() < until:
            if interval is not None:
                next_at += interval
                await trio.sleep_until(trio.current_time() + max(0.0, next_at - time.perf_counter()))
            await slots.acquire()
            packet_id = packet_id % 65535 + 1
            sent_at[packet_id] = now = time.perf_counter()
            payload = struct.pack("!d", now) + b"x" * 56
            await conn.stream.send_all(codec.Publish(f"bench/p{i}", payload, 1, False, False, packet_id).encode(P311))
        with trio.move_on_after(5):  # let the last acknowledgements in
            for _ in range(window):
                await slots.acquire()
        nursery.cancel_scope.cancel()
    await conn.stream.aclose()


async def run_load(port: int, seconds: float, window: int, rate: float | None,
                   ack_latencies: list[float] | None = None) -> tuple[float, int, list[float]]:
    """(PUBACKs per second, deliveries, latencies) for one phase."""
    acked, delivered = [0], [0]
    latencies: list[float] = []
    scopes = [trio.CancelScope() for _ in range(SUBSCRIBERS)]
    async with trio.open_nursery() as nursery:
        readies = [trio.Event() for _ in range(SUBSCRIBERS)]
        for j in range(SUBSCRIBERS):
            nursery.start_soon(subscriber, port, j, readies[j], delivered, latencies if rate else None, scopes[j])
        for ready in readies:
            await ready.wait()
        start = time.perf_counter()
        until = start + seconds
        interval = PUBLISHERS / rate if rate else None
        async with trio.open_nursery() as pubs:
            for i in range(PUBLISHERS):
                pubs.start_soon(publisher, port, i, window, until, interval, acked, ack_latencies)
        elapsed = time.perf_counter() - start
        await trio.sleep(1)  # deliveries still under way (only latencies of those that arrive count)
        for scope in scopes:
            scope.cancel()
    return acked[0] / elapsed, delivered[0], latencies


def pct(values: list[float], q: int) -> float:
    """The ``q``-th percentile of ``values`` (seconds) in milliseconds."""
    if len(values) < 2:
        return values[0] * 1000 if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (/proc/<pid>/stat): survives a loaded machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(name: str, pid: int, port: int, seconds: float, window: int,
                  rate: float | None) -> tuple[float, list[float]]:
    ack_latencies: list[float] = []
    before = cpu_seconds(pid)
    value, delivered, latencies = await run_load(port, seconds, window, rate, ack_latencies)
    per_message = (cpu_seconds(pid) - before) / max(1.0, value * seconds) * 1e6
    load = os.getloadavg()[0]
    if rate is None:
        print(f"  {name:10s} QoS 1 publish rate {value:9.0f} msg/s  ({delivered} deliveries)"
              f"  server CPU {per_message:4.0f} us/msg  load {load:.1f}", flush=True)
    else:
        print(f"  {name:10s} at {rate:6.0f} msg/s: p50 {pct(latencies, 50):6.1f} ms  p99 {pct(latencies, 99):6.1f} ms"
              f"  ({len(latencies)} deliveries; PUBACK p50 {pct(ack_latencies, 50):.1f} ms"
              f" p99 {pct(ack_latencies, 99):.1f} ms)  server CPU {per_message:4.0f} us/msg  load {load:.1f}",
              flush=True)
    return value, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--window", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("mosquitto") is None:
        sys.exit("mosquitto is not installed (Debian package mosquitto)")
    with tempfile.TemporaryDirectory() as tmp:
        skald_proc, skald_port = start_skald(Path(tmp) / "skald")
        (Path(tmp) / "mosq").mkdir()
        mosq_proc, mosq_port = start_mosquitto(Path(tmp) / "mosq")
        try:
            print(f"throughput: {PUBLISHERS} publishers (window {args.window}), {SUBSCRIBERS} subscribers, "
                  f"{args.seconds:.0f} s", flush=True)
            print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
            skald, mosq = ("skald", skald_proc.pid, skald_port), ("mosquitto", mosq_proc.pid, mosq_port)
            skald_rate, _ = trio.run(measure, *skald, args.seconds, args.window, None)
            mosq_rate, _ = trio.run(measure, *mosq, args.seconds, args.window, None)
            print(f"  skald / mosquitto = {skald_rate / mosq_rate:.2f} (goal >= 0.5)", flush=True)
            half = skald_rate / 2
            print(f"latency at half of skald's peak ({half:.0f} msg/s):", flush=True)
            _, skald_lat = trio.run(measure, *skald, args.seconds, args.window, half)
            trio.run(measure, *mosq, args.seconds, args.window, half)
            p99 = pct(skald_lat, 99)
            print(f"  skald p99 {p99:.1f} ms (goal <= 50 ms)", flush=True)
        finally:
            for proc in (skald_proc, mosq_proc):
                proc.terminate()
                proc.wait(10)
            if skald_proc.stdout is not None:
                skald_proc.stdout.close()


if __name__ == "__main__":
    main()
