"""Relay throughput: skald's legacy /p/ queue vs npm piping-server, in one run, on loopback.

(1) one 1 GiB transfer, producer and consumer both `curl` (MB/s), twice: the producer uploads
    a file (`curl -T file`, sized: Content-Length) and a pipe (`... | curl -T -`, chunked encoding,
    curl's ~64 KiB chunks); each the median of three, the servers taking turns;
(2) 10,000 small (1 KiB) messages one after another through httpx (messages/s).
Prints every figure for each server and skald/piping ratios (goal: >= 1.0), and the server's CPU time per
GB and per message (steadier than wall-clock figures on a shared machine). It also runs a bare
rendezvous ASGI app on stock hypercorn (``bench/bare_rendezvous.py``, no skald code, none of
skald's hypercorn patches) through the same steps: what the server stack gives on its own.

skald runs once per variant of its hypercorn patches (``skald/server/patches.py``): ``all`` (the
default), ``none`` (``SKALD_HYPERCORN_PATCHES=false``: stock hypercorn) and ``-NAME`` (all but that one,
``SKALD_HYPERCORN_PATCHES_SKIP``), so each performance patch's gain is the ``all`` row against its row.

Usage: python bench/relay.py [--bytes N] [--messages N] [--variants all,none,-large_reads,...]
(installs piping-server into bench/ on first use)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

HERE = Path(__file__).resolve().parent
ROUNDS = 3  # big transfers per server and kind; the median is printed
SMALL_ROUNDS = 5  # turns the servers take at the small messages


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(port: int, limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


# The patches that exist for speed (the others fix behaviour: their tests are their receipt).
# keep_alive_timer goes with connection_limits, which needs it.
SPEED_VARIANTS = ("all", "none", "-large_reads", "-joined_chunks", "-joined_writes", "-keep_alive_timer")


def variant_env(variant: str) -> dict[str, str]:
    """``SKALD_*`` settings for a patch variant: ``all``, ``none`` or ``-NAME`` (all but NAME)."""
    if variant == "all":
        return {"SKALD_HYPERCORN_PATCHES": "true", "SKALD_HYPERCORN_PATCHES_SKIP": ""}
    if variant == "none":
        return {"SKALD_HYPERCORN_PATCHES": "false"}
    skip = variant.removeprefix("-")
    if skip == "keep_alive_timer":
        skip += ",connection_limits"
    return {"SKALD_HYPERCORN_PATCHES": "true", "SKALD_HYPERCORN_PATCHES_SKIP": skip}


def start_skald(data_dir: Path, variant: str = "all") -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "SKALD_LOG_LEVEL": "warning", "SKALD_PUBLIC_RATE_PER_SECOND": "1000000",
           "SKALD_PUBLIC_RATE_BURST": "1000000", "SKALD_ADMIN_TOKEN": "skd_bench_admin_token_0123456789",
           **variant_env(variant)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "skald", "serve", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )
    assert proc.stdout is not None
    match = re.search(rb"listening on (http://\S+)", proc.stdout.readline())
    if not match:
        proc.kill()
        raise RuntimeError("skald did not start")
    return proc, match[1].decode()


def start_piping() -> tuple[subprocess.Popen[bytes], str]:
    binary = HERE / "node_modules" / ".bin" / "piping-server"
    if not binary.exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE, check=True)
    port = _free_port()
    proc = subprocess.Popen([str(binary), "--host", "127.0.0.1", "--http-port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_listening(port)
    return proc, f"http://127.0.0.1:{port}"


def start_bare() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "-k", "trio", "-b", f"127.0.0.1:{port}", "bare_rendezvous:app"],
        cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    _wait_listening(port)
    return proc, f"http://127.0.0.1:{port}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its children (hypercorn runs its worker in a child)."""
    tick = os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    total = 0.0
    for each in [pid, *map(int, children)]:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def big_transfer(url: str, size: int, source: Path | None) -> float:
    """MB/s of one `size`-byte transfer through ``url``, curl on both ends.

    ``source`` is a file of ``size`` bytes to upload (sized); ``None`` pipes ``size`` zero bytes (chunked).
    """
    consumer = subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", url],
                                stdout=subprocess.PIPE)
    started = time.perf_counter()
    upload = f"curl -sS -o /dev/null -H 'Content-Type: application/octet-stream' {url}"
    command = f"{upload} -T {source}" if source else f"head -c {size} /dev/zero | {upload} -T -"
    producer = subprocess.Popen(command, shell=True)
    out, _ = consumer.communicate()
    producer.wait()
    elapsed = time.perf_counter() - started
    if int(out or 0) != size:
        raise RuntimeError(f"{url}: received {out!r} of {size} bytes")
    return size / elapsed / 1e6


async def small_messages(base: str, count: int, turn: int = 0) -> float:
    """Messages per second, 1 KiB each, sent one after another (each with its own consumer)."""
    payload = b"m" * 1024
    async with httpx.AsyncClient(timeout=30) as producer, httpx.AsyncClient(timeout=30) as consumer:
        started = time.perf_counter()
        for i in range(count):
            url = f"{base}/p/bench-small-{turn}-{i}"
            async with trio.open_nursery() as nursery:
                got: list[bytes] = []

                async def consume(url: str = url, got: list[bytes] = got) -> None:
                    got.append((await consumer.get(url)).content)

                nursery.start_soon(consume)
                r = await producer.post(url, content=payload)
                if r.status_code != 200:
                    raise RuntimeError(f"{url}: producer got {r.status_code}")
            if got != [payload]:
                raise RuntimeError(f"{url}: consumer got {len(got[0]) if got else 0} bytes")
        return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bytes", type=int, default=1024**3)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--variants", default=",".join(SPEED_VARIANTS),
                        help="skald patch variants, comma-separated: all, none, -NAME (default: %(default)s)")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "all" not in variants:
        variants.insert(0, "all")
    if shutil.which("curl") is None:
        raise SystemExit("bench/relay.py needs curl")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "upload.bin"
        with source.open("wb") as f:
            f.truncate(args.bytes)  # sparse: reading it costs curl next to nothing
        with source.open("rb") as f:  # ... once it is in the page cache, for every server alike
            while f.read(1 << 23):
                pass
        skalds = []
        for n, variant in enumerate(variants):
            proc, url = start_skald(Path(tmp) / f"data{n}", variant)
            skalds.append((variant if variant != "all" else "skald", url, proc))
        piping, piping_base = start_piping()
        bare, bare_base = start_bare()
        try:
            servers = (*skalds, ("piping", piping_base, piping), ("bare", bare_base, bare))
            # Big transfers: the median of ROUNDS, the servers taking turns within each round, so that
            # neither the page cache (filled before the first round) nor a noisy moment favours one.
            sized: dict[str, list[float]] = {name: [] for name, _, _ in servers}
            chunked: dict[str, list[float]] = {name: [] for name, _, _ in servers}
            big_cpu = dict.fromkeys(sized, 0.0)
            for turn in range(ROUNDS):
                # Each round starts with another server too: in one run the first in every round (skald)
                # was 0.57x piping-server sized while its CPU per GB matched the next row's, which was 1.02x.
                shift = turn % len(servers)
                for name, base, proc in (*servers[shift:], *servers[:shift]):
                    before = cpu_seconds(proc.pid)
                    sized[name].append(big_transfer(f"{base}/p/big-{name}", args.bytes, source))
                    chunked[name].append(big_transfer(f"{base}/p/big-{name}", args.bytes, None))
                    big_cpu[name] += cpu_seconds(proc.pid) - before
            # Small messages in SMALL_ROUNDS turns as well: a slow minute on a shared machine lands on
            # every server alike, not on whichever ran then.
            small_time = dict.fromkeys(sized, 0.0)
            small_cpu = dict.fromkeys(sized, 0.0)
            per_round = max(1, args.messages // SMALL_ROUNDS)
            for turn in range(SMALL_ROUNDS):
                # Each turn starts with another server: the first of a turn ran measurably slower.
                shift = turn % len(servers)
                for name, base, proc in (*servers[shift:], *servers[:shift]):
                    before = cpu_seconds(proc.pid)
                    small_time[name] += per_round / trio.run(small_messages, base, per_round, turn)
                    small_cpu[name] += cpu_seconds(proc.pid) - before
            sent = per_round * SMALL_ROUNDS
            results = {}
            cpu = {}
            for name, _, _ in servers:
                rate = sent / small_time[name]
                results[name] = (statistics.median(sized[name]), statistics.median(chunked[name]), rate)
                cpu[name] = (big_cpu[name] / (2 * ROUNDS * args.bytes / 1e9), small_cpu[name] / sent * 1e3)
        finally:
            for _, _, proc in servers:
                proc.terminate()
                proc.wait()
    print(f"relay: {args.bytes / 1e9:.2f} GB transfers (curl both ends, median of {ROUNDS}) and {args.messages} x 1 KiB"
          " messages")
    print(f"{'server':>18} {'MB/s sized':>12} {'MB/s chunked':>14} {'msgs/s':>10} {'CPU s/GB':>10}"
          f" {'CPU ms/msg':>11}")
    for name, (sized_rate, chunked_rate, rate) in results.items():
        per_gb, per_msg = cpu[name]
        print(f"{name:>18} {sized_rate:>12.1f} {chunked_rate:>14.1f} {rate:>10.1f} {per_gb:>10.2f} {per_msg:>11.2f}")
    print("skald = all patches; none = SKALD_HYPERCORN_PATCHES=false; -NAME = all but NAME")
    for name, _, _ in skalds[1:]:
        gain = [a / b for a, b in zip(results["skald"], results[name], strict=True)]
        cpu_gain = [b / a for a, b in zip(cpu["skald"], cpu[name], strict=True)]
        print(f"skald/{name}: sized {gain[0]:.2f}x, chunked {gain[1]:.2f}x, small messages {gain[2]:.2f}x;"
              f" CPU per GB {cpu_gain[0]:.2f}x, per message {cpu_gain[1]:.2f}x less (> 1: the patches help)")
    ratios = [s / p for s, p in zip(results["skald"], results["piping"], strict=True)]
    print(f"skald/piping: sized {ratios[0]:.2f}x, chunked {ratios[1]:.2f}x, small messages {ratios[2]:.2f}x"
          " (goal >= 1.0)")
    vs_bare = [s / b for s, b in zip(results["skald"], results["bare"], strict=True)]
    print(f"skald/bare: sized {vs_bare[0]:.2f}x, chunked {vs_bare[1]:.2f}x, small messages {vs_bare[2]:.2f}x"
          " (bare: a rendezvous app on stock hypercorn, no skald code)")


if __name__ == "__main__":
    main()
