"""Helpers for tests/cluster: a real cluster per test (etcd, moto S3, N nodes with Litestream, HAProxy).

Started by :func:`skald.cluster.local.open_local_cluster`, the code behind ``skald cluster up``. The
nodes are subprocesses so tests can SIGKILL and SIGSTOP them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx

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
