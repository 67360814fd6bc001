"""State that is not a document looks the same from every node: tokens (minted, revoked) and the registry."""

from __future__ import annotations

import httpx
import pytest
import trio
from support.cluster import ClusterFactory, client


async def status_with(url: str, token: str) -> int:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        return (await http.post("/api/v1/db/shared-0/query", json={"sql": "SELECT 1"})).status_code


async def until_every_node_answers(urls: list[str], token: str, status: int) -> float:
    """Ask each node until it answers ``status``; return how long the slowest took (seconds)."""
    started = trio.current_time()
    with trio.fail_after(30):
        for url in urls:
            while await status_with(url, token) != status:  # asking again: the copy travels by etcd's watch
                pass
    return trio.current_time() - started


@pytest.mark.slow
async def test_tokens_and_the_registry_are_the_same_from_every_node(start_cluster: ClusterFactory) -> None:
    async with start_cluster(3) as cluster, client(cluster.url) as http:
        for n in range(6):
            assert (await http.put(f"/api/v1/db/shared-{n}")).status_code == 201
        urls = [node.url for node in cluster.nodes]
        async with httpx.AsyncClient(headers=http.headers) as direct:
            for url in urls:  # every node lists every document of the cluster, wherever it lives
                listed = (await direct.get(f"{url}/api/v1/db")).json()["documents"]
                assert {f"shared-{n}" for n in range(6)} <= {d["db_id"] for d in listed}
            owned = 0
            for node in cluster.nodes:  # /status: what each node owns and replicates
                block = (await direct.get(f"{node.url}/status")).json()["cluster"]
                assert block["node_id"] == node.node_id and block["lease_remaining_seconds"] > 0
                assert set(block["nodes"]) == {"node1", "node2", "node3"}
                assert set(block["replication"]) <= {f"shared-{n}" for n in range(6)}
                owned += block["documents_owned"]
                assert len(block["replication"]) == block["documents_owned"]
            assert owned == 6
            minted = await direct.post(
                f"{urls[0]}/api/v1/admin/tokens", json={"scopes": ["shared-*:query.read"], "label": "shared"}
            )
            assert minted.status_code == 201, minted.text
        token, token_id = minted.json()["token"], minted.json()["id"]
        seen = await until_every_node_answers(urls, token, 200)
        async with httpx.AsyncClient(headers=http.headers) as direct:
            assert (await direct.delete(f"{urls[2]}/api/v1/admin/tokens/{token_id}")).status_code in (200, 204)
        refused = await until_every_node_answers(urls, token, 401)
        print(f"\ntoken minted on node1 accepted by all 3 nodes after {seen:.3f} s; revocation on node3 "
              f"refused everywhere after {refused:.3f} s")
