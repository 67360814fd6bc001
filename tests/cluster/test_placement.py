"""Placement through HAProxy: each db_id keeps its node, and a node leaving moves only its share."""

from __future__ import annotations

import signal
from collections import Counter

import httpx
import trio
from support.cluster import ClusterFactory, client

IDS = [f"doc-{n:04d}" for n in range(1000)]


async def served_by(http: httpx.AsyncClient, ids: list[str]) -> dict[str, str]:
    """Which node answered a request for each id (``X-Skald-Node``); unknown documents are a 404."""
    found: dict[str, str] = {}
    limit = trio.Semaphore(32)

    async def one(db_id: str) -> None:
        async with limit:
            response = await http.get(f"/api/v1/db/{db_id}")
        assert response.status_code == 404, response.text
        found[db_id] = response.headers["x-skald-node"]

    async with trio.open_nursery() as nursery:
        for db_id in ids:
            nursery.start_soon(one, db_id)
    return found


async def test_ids_keep_their_node_and_a_leaving_node_moves_only_its_share(start_cluster: ClusterFactory) -> None:
    async with start_cluster(3) as cluster, client(cluster.url) as http:
        first = await served_by(http, IDS)
        again = await served_by(http, IDS)
        assert again == first
        spread = Counter(first.values())
        assert set(spread) == {"node1", "node2", "node3"}
        assert min(spread.values()) > 150, spread  # consistent hashing spreads 1,000 ids over all three

        leaving = cluster.node("node3")
        leaving.signal(signal.SIGTERM)
        assert await leaving.wait() == 0
        # HAProxy notices through its /readyz checks (every 500 ms, 3 failures): ask a few of node3's
        # ids until it has (a connection refused meanwhile is redispatched), then all of them again.
        probe = [db_id for db_id, node in first.items() if node == "node3"][:10]
        with trio.fail_after(60):
            while "node3" in (await served_by(http, probe)).values():
                pass
        after = await served_by(http, IDS)
        kept = [db_id for db_id, node in first.items() if node != "node3"]
        assert all(after[db_id] == first[db_id] for db_id in kept)  # only node3's share moved
        moved = Counter(after[db_id] for db_id, node in first.items() if node == "node3")
        assert sum(moved.values()) == spread["node3"] and set(moved) <= {"node1", "node2"}
        print(f"\n1,000 ids over 3 nodes: {dict(spread)}; node3 leaving moved {spread['node3']} ids: {dict(moved)}")
