"""Cluster: the same wrk INSERT load over 64 documents through HAProxy to 1 node and to 2 nodes, in one run.

Prints, each from a fresh local cluster (``skald cluster up``'s code: etcd, moto S3, Litestream,
HAProxy on loopback):
(1) INSERTs/s through HAProxy with 1 node and with 2 nodes (``durability = "local"``), and the
    ratio 2 nodes / 1 node (goal on a 2-core machine: >= 1.7);
(2) the latency of one INSERT, ``local`` vs ``replicated`` (acknowledged after Litestream's
    ``sync -wait``), 2 nodes, wrk at 1 connection and at 32 (group commits share one confirmation);
(3) failover: SIGKILL of the owner of a document (``replicated``), time to the first accepted
    write through HAProxy (lease expiry + restore from S3 + serve), median of ``--failovers``.

The 1-node and 2-node clusters run side by side and take the wrk load in alternating turns
(``--turns``), so a change in the machine's load hits both alike; the ratio is of the summed
requests. Beside each figure: the load average, and where the CPU went during the turns (CPU
seconds per 1,000 INSERTs of the nodes, their Litestream, HAProxy, etcd, the S3 API and wrk
itself, from /proc and wait4), and how many requests the nodes forwarded (0 when HAProxy's
hash already sends each request to its owner).

Usage: python bench/cluster.py [--seconds 5] [--turns 3] [--connections 32] [--failovers 3].
Needs wrk, haproxy, etcd.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skald.cluster.local import LocalCluster, open_local_cluster

DOCS = 64
ENV = {"SKALD_RATE_LIMIT_PER_SECOND": "0", "SKALD_LOG_LEVEL": "error"}

LUA = """
counter = 0
request = function()
  counter = counter + 1
  local path = string.format("/api/v1/db/bench-%02d/query", counter % 64)
  return wrk.format("POST", path, {["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer TOKEN"}, '{"sql": "INSERT INTO t (v) VALUES (?)", "args": ["x"]}')
end
"""


async def prepare(cluster: LocalCluster) -> None:
    headers = {"Authorization": f"Bearer {cluster.admin_token}"}
    async with httpx.AsyncClient(base_url=cluster.url, headers=headers, timeout=60) as http:
        for n in range(DOCS):
            assert (await http.put(f"/api/v1/db/bench-{n:02d}")).status_code == 201
            r = await http.post(f"/api/v1/db/bench-{n:02d}/query", json={"sql": "CREATE TABLE t (v TEXT)"})
            assert r.status_code == 200, r.text
        for n in range(DOCS):  # warm: every document open on its owner
            await http.post(f"/api/v1/db/bench-{n:02d}/query", json={"sql": "SELECT 1"})


TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a live process has used."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def processes_of(cluster: LocalCluster) -> dict[int, str]:
    """pid -> role for every process of the cluster (found by its folder in the command line)."""
    nodes = {node.pid: node.node_id for node in cluster.nodes}
    s3_port = cluster.s3_url.rsplit(":", 1)[1]
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")  # it ends with a NUL
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        line = b" ".join(argv).decode(errors="replace")
        pid = int(entry.name)
        if pid in nodes:
            found[pid] = "nodes"
        elif ppid in nodes and "litestream" in line:
            found[pid] = "litestream"
        elif str(cluster.base_dir) in line and "haproxy" in line:
            found[pid] = "haproxy"
        elif str(cluster.base_dir) in line and "etcd" in line:
            found[pid] = "etcd"
        elif "moto_server" in line and s3_port in argv[-1].decode(errors="replace"):
            found[pid] = "s3"
    return found


def cpu_by_role(pids: dict[int, str]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for pid, role in pids.items():
        totals[role] = totals.get(role, 0.0) + cpu_of(pid)
    return totals


def wrk(cluster: LocalCluster, script: Path, seconds: int, connections: int) -> tuple[float, float, float, int, float]:
    """Requests/s, p50 and p99 latency (ms), non-2xx count, wrk's own CPU seconds."""
    process = subprocess.Popen(
        ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         cluster.url],
        stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, out
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, ms("50"), ms("99"), int(errors[1]) if errors else 0, usage.ru_utime + usage.ru_stime


async def forwarded(cluster: LocalCluster) -> int:
    """Requests the nodes forwarded to another node (skald_cluster_forwarded_requests_total)."""
    total = 0
    async with httpx.AsyncClient(timeout=10) as http:
        for node in cluster.nodes:
            text = (await http.get(f"{node.url}/metrics")).text
            total += sum(int(float(m)) for m in re.findall(r'^skald_cluster_forwarded_requests_total\{[^}]*\} (\S+)',
                                                            text, re.M))
    return total


class Side:
    """One cluster taking turns: summed requests, seconds and CPU per role."""

    def __init__(self, name: str, cluster: LocalCluster, script: Path) -> None:
        self.name, self.cluster, self.script = name, cluster, script
        self.requests = 0.0
        self.seconds = 0.0
        self.cpu: dict[str, float] = {}
        self.p50: list[float] = []
        self.errors = 0
        self.forwarded = 0
        self.pids = processes_of(cluster)

    async def turn(self, seconds: int, connections: int) -> None:
        before = cpu_by_role(self.pids)
        rate, p50, _p99, errors, wrk_cpu = await trio.to_thread.run_sync(wrk, self.cluster, self.script, seconds,
                                                                         connections)
        after = cpu_by_role(self.pids)
        for role, used in after.items():
            self.cpu[role] = self.cpu.get(role, 0.0) + used - before.get(role, 0.0)
        self.cpu["wrk"] = self.cpu.get("wrk", 0.0) + wrk_cpu
        self.requests += rate * seconds
        self.seconds += seconds
        self.p50.append(p50)
        self.errors += errors

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def cpu_line(self) -> str:
        per = {role: used / self.requests * 1000 for role, used in sorted(self.cpu.items())}
        busy = sum(self.cpu.values()) / self.seconds
        return ("CPU s per 1,000 INSERTs: " + ", ".join(f"{r} {v:.2f}" for r, v in per.items())
                + f"; all of them busy {busy:.2f} cores of {os.cpu_count()}")


async def load(base: Path, nodes: int, durability: str, seconds: int, connections: list[int]) -> list[tuple[int, tuple[float, float, float, int, float]]]:  # noqa: E501
    async with open_local_cluster(base, nodes, durability=durability, env=ENV) as cluster:
        await prepare(cluster)
        script = base / "insert.lua"
        script.write_text(LUA.replace("TOKEN", cluster.admin_token))
        return [(c, await trio.to_thread.run_sync(wrk, cluster, script, seconds, c)) for c in connections]


async def failover(base: Path) -> float:
    async with open_local_cluster(base, 2, durability="replicated", env=ENV) as cluster:
        headers = {"Authorization": f"Bearer {cluster.admin_token}"}
        async with httpx.AsyncClient(base_url=cluster.url, headers=headers, timeout=3) as http:
            assert (await http.put("/api/v1/db/victim")).status_code == 201
            await http.post("/api/v1/db/victim/query", json={"sql": "CREATE TABLE t (v TEXT)"})
            r = await http.post("/api/v1/db/victim/query", json={"sql": "INSERT INTO t VALUES ('a')"})
            owner = cluster.node(r.headers["x-skald-node"])
            owner.signal(signal.SIGKILL)
            killed = trio.current_time()
            while True:
                try:
                    r = await http.post("/api/v1/db/victim/query", json={"sql": "INSERT INTO t VALUES ('b')"})
                    if r.status_code == 200:
                        return trio.current_time() - killed
                except httpx.TransportError:
                    pass
                await trio.sleep(0.02)


async def compare(base: Path, seconds: int, turns: int, connections: int) -> tuple[Side, Side, list[float]]:
    """1 node and 2 nodes side by side, wrk in alternating turns."""
    loads = []
    async with (
        open_local_cluster(base / "one", 1, durability="local", env=ENV) as one,
        open_local_cluster(base / "two", 2, durability="local", env=ENV) as two,
    ):
        sides = []
        for name, cluster in (("1 node", one), ("2 nodes", two)):
            await prepare(cluster)
            script = cluster.base_dir / "insert.lua"
            script.write_text(LUA.replace("TOKEN", cluster.admin_token))
            sides.append(Side(name, cluster, script))
        for _ in range(turns):
            for side in sides:
                loads.append(os.getloadavg()[0])
                await side.turn(seconds, connections)
        for side in sides:
            side.forwarded = await forwarded(side.cluster)
        return sides[0], sides[1], loads


async def main(seconds: int, turns: int, connections: int, failovers: int) -> None:
    print(f"load average at start: {os.getloadavg()} on {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="skald-bench-cluster-") as tmp:
        base = Path(tmp)
        one, two, loads = await compare(base, seconds, turns, connections)
        local = await load(base / "loc", 2, "local", seconds, [1])
        two_replicated = await load(base / "rep", 2, "replicated", seconds, [1, connections])
        times = [await failover(base / f"failover{n}") for n in range(failovers)]
    print(f"INSERTs through HAProxy over {DOCS} documents, wrk {connections} connections, "
          f"{turns} alternating turns of {seconds} s; load average during the turns "
          f"{min(loads):.1f}-{max(loads):.1f}")
    for side in (one, two):
        print(f"  {side.name:7s}: {side.rate:8.0f} req/s  p50 {statistics.median(side.p50):6.1f} ms  "
              f"non-2xx {side.errors}  forwarded {side.forwarded}")
        print(f"           {side.cpu_line()}")
    print(f"  2 nodes / 1 node: {two.rate / one.rate:.2f}x (goal >= 1.7)")
    print(f"latency of an INSERT, 2 nodes, local vs replicated (ack after Litestream confirms S3); "
          f"load average {os.getloadavg()[0]:.1f}")
    loc = local[0][1]
    rep1, repn = two_replicated[0][1], two_replicated[1][1]
    print(f"   1 conn: local p50 {loc[1]:6.1f} ms p99 {loc[2]:6.1f} ms | replicated p50 {rep1[1]:6.1f} ms "
          f"p99 {rep1[2]:6.1f} ms | cost p50 +{rep1[1] - loc[1]:.1f} ms")
    print(f"  {connections:2d} conn: local {two.rate:7.0f} req/s p50 {statistics.median(two.p50):6.1f} ms | "
          f"replicated {repn[0]:7.0f} req/s p50 {repn[1]:6.1f} ms p99 {repn[2]:6.1f} ms")
    print(f"failover (SIGKILL of the owner -> first accepted write): median {statistics.median(times):.2f} s "
          f"of {', '.join(f'{t:.2f}' for t in times)} s; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--failovers", type=int, default=3)
    args = parser.parse_args()
    trio.run(main, args.seconds, args.turns, args.connections, args.failovers)
