"""Cluster: the same wrk INSERT load over 64 documents through HAProxy to 1 node and to 2 nodes, in one run.

Prints, each from a fresh local cluster (``skald cluster up``'s code: etcd, moto S3, Litestream,
HAProxy on loopback):
(1) INSERTs/s through HAProxy with 1 node and with 2 nodes (``durability = "local"``), and the
    ratio 2 nodes / 1 node (goal on a 2-core machine: >= 1.7);
(2) the latency of one INSERT, ``local`` vs ``replicated`` (acknowledged after Litestream's
    ``sync -wait``), 2 nodes, wrk at 1 connection and at 32 (group commits share one confirmation);
(3) failover: SIGKILL of the owner of a document (``replicated``), time to the first accepted
    write through HAProxy (lease expiry + restore from S3 + serve), median of ``--failovers``.

Usage: python bench/cluster.py [--seconds 10] [--connections 32] [--failovers 3]. Needs wrk, haproxy, etcd.
"""

from __future__ import annotations

import argparse
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


def wrk(cluster: LocalCluster, script: Path, seconds: int, connections: int) -> tuple[float, float, float, int]:
    """Requests/s, p50 and p99 latency (ms), non-2xx count."""
    out = subprocess.run(
        ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         cluster.url],
        capture_output=True, text=True, check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, ms("50"), ms("99"), int(errors[1]) if errors else 0


async def load(base: Path, nodes: int, durability: str, seconds: int, connections: list[int]) -> list[tuple[int, tuple[float, float, float, int]]]:  # noqa: E501
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


async def main(seconds: int, connections: int, failovers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="skald-bench-cluster-") as tmp:
        base = Path(tmp)
        one = await load(base / "one", 1, "local", seconds, [connections])
        two = await load(base / "two", 2, "local", seconds, [1, connections])
        two_replicated = await load(base / "rep", 2, "replicated", seconds, [1, connections])
        times = [await failover(base / f"failover{n}") for n in range(failovers)]
    r1, r2 = one[0][1][0], two[1][1][0]
    print(f"INSERTs through HAProxy over {DOCS} documents, wrk {connections} connections, {seconds} s each")
    print(f"  1 node : {r1:8.0f} req/s  p50 {one[0][1][1]:6.1f} ms  p99 {one[0][1][2]:6.1f} ms  non-2xx {one[0][1][3]}")
    print(f"  2 nodes: {r2:8.0f} req/s  p50 {two[1][1][1]:6.1f} ms  p99 {two[1][1][2]:6.1f} ms  non-2xx {two[1][1][3]}")
    print(f"  2 nodes / 1 node: {r2 / r1:.2f}x (goal >= 1.7)")
    print("latency of an INSERT, 2 nodes, local vs replicated (ack after Litestream confirms S3)")
    for (c, loc), (_, rep) in zip(two, two_replicated, strict=True):
        print(
            f"  {c:2d} conn: local p50 {loc[1]:6.1f} ms p99 {loc[2]:6.1f} ms {loc[0]:7.0f} req/s | "
            f"replicated p50 {rep[1]:6.1f} ms p99 {rep[2]:6.1f} ms {rep[0]:7.0f} req/s | "
            f"cost p50 +{rep[1] - loc[1]:.1f} ms"
        )
    print(f"failover (SIGKILL of the owner -> first accepted write): median {statistics.median(times):.2f} s "
          f"of {', '.join(f'{t:.2f}' for t in times)} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--failovers", type=int, default=3)
    args = parser.parse_args()
    trio.run(main, args.seconds, args.connections, args.failovers)
