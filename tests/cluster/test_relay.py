"""Relays through HAProxy: both sides of a channel meet on one node, channels spread over all nodes."""

from __future__ import annotations

import re

import httpx
import pytest
import trio
from support.cluster import ClusterFactory, client

CHANNELS = [f"chan-{n:03d}" for n in range(100)]


def pairs(metrics: str) -> float:
    match = re.search(r"^skald_stream_pairs_total (\S+)$", metrics, re.M)
    return float(match[1]) if match else 0.0


async def take(http: httpx.AsyncClient, document: str, into: list[httpx.Response]) -> None:
    into.append(await http.get(f"{document}/streams/queue/jobs/next"))


@pytest.mark.slow
async def test_a_hundred_channels_meet_across_three_nodes(start_cluster: ClusterFactory) -> None:
    async with start_cluster(3) as cluster, client(cluster.url) as http:
        received: dict[str, str] = {}
        limit = trio.Semaphore(40)  # 40 channels at a time: 80 open requests

        async def channel(name: str) -> None:
            async with limit:
                async with trio.open_nursery() as both:
                    async def consume() -> None:
                        r = await http.get(f"/p/{name}")
                        assert r.status_code == 200, r.text
                        received[name] = r.text

                    both.start_soon(consume)
                    r = await http.post(f"/p/{name}", content=f"message for {name}")
                    assert r.status_code == 200, r.text

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for name in CHANNELS:
                    nursery.start_soon(channel, name)
        assert received == {name: f"message for {name}" for name in CHANNELS}
        per_node = {}
        async with httpx.AsyncClient() as direct:
            for node in cluster.nodes:
                per_node[node.node_id] = pairs((await direct.get(f"{node.url}/metrics")).text)
        assert sum(per_node.values()) == len(CHANNELS)  # each message paired once, on one node
        assert all(count > 0 for count in per_node.values()), per_node
        print(f"\n100 relay channels through HAProxy, pairs per node: {per_node}")

        # A document's stream routes meet on its owner even when each side talks to a different node
        # (both are forwarded; the consumer's wait streams back through the forwarder).
        assert (await http.put("/api/v1/db/streams-doc")).status_code == 201
        async with httpx.AsyncClient(headers=http.headers, timeout=30) as direct:
            for consumer_node, producer_node in zip(cluster.nodes, [*cluster.nodes[1:], cluster.nodes[0]], strict=True):
                got: list[httpx.Response] = []
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(take, direct, f"{consumer_node.url}/api/v1/db/streams-doc", got)
                    sent = await direct.post(
                        f"{producer_node.url}/api/v1/db/streams-doc/streams/queue/jobs", content=b"job"
                    )
                    assert sent.status_code == 200, sent.text
                assert got[0].status_code == 200 and got[0].content == b"job", got[0].text
