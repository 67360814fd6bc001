"""Documents move: a data folder from before the cluster is imported, and documents go back to a rejoined node.

One 2-node cluster (``idle_timeout`` 1 s, so an idle document is handed back quickly). node1's data
folder first holds documents written by a single-node skald, and a token minted there; through
HAProxy the documents are all readable once node1 has joined, and the token works on node2 too.
Then node2 stops (node1 takes its documents), writes continue, node2 restarts on its address:
requests HAProxy hashes to it are forwarded to node1 at first, and once each document has gone
idle on node1 it is handed back to node2, with every acknowledged write.
"""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path

import httpx
import pytest
import trio
from support.cluster import NODE_ENV, accepted, client, etcd_of, owners
from support.live import ADMIN_TOKEN, SkaldProcess

from skald.cluster.local import LocalCluster, open_local_cluster
from skald.cluster.service import OWNERS

LEGACY = [f"legacy-{n}" for n in range(4)]
DOCS = [f"reb-{n}" for n in range(8)]


async def sql(http: httpx.AsyncClient, db_id: str, text: str, *args: object) -> httpx.Response:
    return await accepted(lambda: http.post(f"/api/v1/db/{db_id}/query", json={"sql": text, "args": list(args)}))


async def keys(http: httpx.AsyncClient, db_id: str) -> list[str]:
    response = await sql(http, db_id, "SELECT k FROM t ORDER BY rowid")
    assert response.status_code == 200, response.text
    return [row[0] for row in response.json()["rows"]]


async def write(
    http: httpx.AsyncClient, acked: dict[str, list[str]], round_name: str, via: dict[str, str] | None = None
) -> dict[str, str]:
    """One INSERT per document; returns which node served each (``X-Skald-Node``).

    ``via`` receives the node HAProxy sent each request to (the forwarding node, if it was forwarded).
    """
    served = {}
    for db_id in acked:
        key = f"{round_name}-{db_id}"
        response = await sql(http, db_id, "INSERT INTO t (k) VALUES (?)", key)
        assert response.status_code == 200, response.text
        acked[db_id].append(key)
        served[db_id] = response.headers["x-skald-node"]
        if via is not None:
            via[db_id] = response.headers.get("x-skald-forwarded-by", served[db_id])
    return served


async def released_by_node1(cluster: LocalCluster, ids: list[str]) -> None:
    """Return once no owner key of ``ids`` names node1 (an etcd watch on the owner keys)."""
    async with etcd_of(cluster) as etcd:
        kvs, revision = await etcd.snapshot(OWNERS)
        held = {kv.key.removeprefix(OWNERS) for kv in kvs if json.loads(kv.value)["node"] == "node1"} & set(ids)
        if not held:
            return
        # Ended by cancelling, not by leaving the loop: that closes httpx's stream readers too.
        with trio.CancelScope() as watching:
            async with contextlib.aclosing(etcd.watch(OWNERS, revision + 1)) as events:
                async for kind, kv in events:
                    if kind == "DELETE":
                        held.discard(kv.key.removeprefix(OWNERS))
                        if not held:
                            watching.cancel(reason="every document was handed back")


async def make_single_node_folder(data_dir: Path) -> str:
    """A single-node skald's folder: documents with rows, and a token minted there (returned)."""
    server = SkaldProcess(data_dir)
    await server.start()
    try:
        async with client(server.url) as http:
            minted = await http.post("/api/v1/admin/tokens", json={"scopes": ["legacy-*:query.read"]})
            assert minted.status_code == 201, minted.text
            for db_id in LEGACY:
                assert (await http.put(f"/api/v1/db/{db_id}")).status_code == 201
                await sql(http, db_id, "CREATE TABLE t (k TEXT)")
                for n in range(3):
                    await sql(http, db_id, "INSERT INTO t (k) VALUES (?)", f"old-{n}")
    finally:
        await server.stop()
    token: str = minted.json()["token"]
    return token


@pytest.mark.slow
async def test_pre_cluster_documents_and_rebalancing_after_a_rejoin(tmp_path: Path) -> None:
    base = tmp_path / "cluster"
    old_token = await make_single_node_folder(base / "node1")
    env = {**NODE_ENV, "SKALD_IDLE_TIMEOUT": "1"}
    async with open_local_cluster(base, 2, env=env, admin_token=ADMIN_TOKEN) as cluster, client(cluster.url) as http:
        # Imported at join: every document of the old folder, through HAProxy, whichever node it hashes to.
        for db_id in LEGACY:
            assert await keys(http, db_id) == ["old-0", "old-1", "old-2"], db_id
        listed = {d["db_id"] for d in (await http.get("/api/v1/db")).json()["documents"]}
        assert set(LEGACY) <= listed
        # The folder's token was shared at node1's first join: node2, which never saw it, accepts it
        # (asked for what node2 answers itself: a document request would be forwarded to its owner).
        async with client(cluster.node("node2").url) as direct:
            direct.headers["Authorization"] = f"Bearer {old_token}"
            with trio.fail_after(30):
                while (listing := await direct.get("/api/v1/db")).status_code != 200:  # the copy travels by etcd
                    assert listing.status_code == 401, listing.text

        acked: dict[str, list[str]] = {db_id: [] for db_id in DOCS}
        for db_id in DOCS:
            assert (await accepted(lambda d=db_id: http.put(f"/api/v1/db/{d}"))).status_code == 201  # type: ignore[misc]
            await sql(http, db_id, "CREATE TABLE t (k TEXT)")
        hashed = await write(http, acked, "first")
        home = [db_id for db_id, node in hashed.items() if node == "node2"]
        assert home, hashed  # 8 ids over 2 nodes: some hash to node2

        node2 = cluster.node("node2")
        node2.signal(signal.SIGTERM)
        assert await node2.wait() == 0
        assert set((await write(http, acked, "node2-down")).values()) == {"node1"}

        await cluster.restart("node2")
        # HAProxy sends node2's share back to it once its health checks pass; node1 still owns them,
        # so node2 forwards them there (the client sees no difference).
        via: dict[str, str] = {}
        rounds = 0
        with trio.fail_after(60):
            while rounds == 0 or any(via[db_id] != "node2" for db_id in home):
                served = await write(http, acked, f"rejoined-{rounds}", via)
                assert all(served[db_id] == "node1" for db_id in home), served
                rounds += 1
        with trio.fail_after(60):  # each goes idle on node1 (1 s) and is handed back, untouched meanwhile
            await released_by_node1(cluster, home)
        served = await write(http, acked, "moved-back")
        assert all(served[db_id] == "node2" for db_id in home), served
        owner_now = await owners(cluster)
        assert all(owner_now[db_id] == "node2" for db_id in home), owner_now
        for db_id in DOCS:  # no acknowledged write lost across two moves
            assert await keys(http, db_id) == acked[db_id], db_id
        status = (await http.get(f"{cluster.node('node1').url}/status")).json()["cluster"]
        assert status["documents_released"] >= len(home) and status["import_conflicts"] == []
        print(f"\n{len(LEGACY)} pre-cluster documents imported; {len(home)} documents moved back to node2")
