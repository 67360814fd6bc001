"""Helpers for tests/cluster: a real cluster per test (etcd, moto S3, N nodes with Litestream, HAProxy).

Started by :func:`skald.cluster.local.open_local_cluster`, the code behind ``skald cluster up``. The
nodes are subprocesses so tests can SIGKILL and SIGSTOP them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import trio

from skald.cluster.etcd import EtcdClient
from skald.cluster.local import LocalCluster, open_local_cluster
from support.live import ADMIN_TOKEN

# Tests fire bursts from one address: the limiter stays on, far above them.
NODE_ENV = {
    "SKALD_RATE_LIMIT_PER_SECOND": "100000",
    "SKALD_RATE_LIMIT_BURST": "1000000",
    "SKALD_PUBLIC_RATE_PER_SECOND": "100000",
    "SKALD_PUBLIC_RATE_BURST": "1000000",
}

ClusterFactory = Callable[..., AbstractAsyncContextManager[LocalCluster]]


def cluster_factory(tmp_path: Path) -> ClusterFactory:
    def start(nodes: int = 3, durability: str = "local") -> AbstractAsyncContextManager[LocalCluster]:
        return open_local_cluster(
            tmp_path / "cluster", nodes, durability=durability, env=NODE_ENV, admin_token=ADMIN_TOKEN
        )

    return start


def client(url: str, **kwargs: object) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    return httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30, limits=limits, **kwargs  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def etcd_of(cluster: LocalCluster) -> AsyncIterator[EtcdClient]:
    etcd = EtcdClient([cluster.etcd_url])
    try:
        yield etcd
    finally:
        await etcd.aclose()


async def owners(cluster: LocalCluster) -> dict[str, str]:
    """db_id -> node id, as etcd has it now."""
    import json

    async with etcd_of(cluster) as etcd:
        return {
            kv.key.removeprefix("/skald/owners/"): json.loads(kv.value)["node"]
            for kv in await etcd.get_prefix("/skald/owners/")
        }


async def accepted(send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """``send()`` again while the cluster answers 502/503 (with Retry-After), as a client does.

    On a starved machine a node can miss its lease deadline and refuse for a moment (it self-fences
    rather than risk two owners); that is a retry for the client, not a failure of the test's setup.
    """
    with trio.fail_after(60):
        while True:
            response = await send()
            if response.status_code not in (502, 503):
                return response
            await trio.sleep(0.05)  # client back-off between retries
