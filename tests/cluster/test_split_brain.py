"""Split brain: an owner frozen (SIGSTOP) past its lease, then resumed, acknowledges nothing.

While it is frozen another node takes the document (restoring it from S3) and accepts writes. A
write that reached the frozen node's socket meanwhile is answered once it resumes: it must be
refused (``503 not_owner``), never applied to its stale copy and acknowledged.
"""

from __future__ import annotations

import os
import signal

import httpx
import pytest
import trio
from support.cluster import ClusterFactory, accepted, client, owners

from skald.cluster.forward import FORWARDED_BY

DB = "split"


async def insert(
    http: httpx.AsyncClient, key: str, patience: float = 30, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await http.post(
        f"/api/v1/db/{DB}/query",
        json={"sql": "INSERT INTO t (k) VALUES (?)", "args": [key]},
        headers=headers or {},
        timeout=patience,
    )


@pytest.mark.slow
async def test_a_resumed_stale_owner_cannot_acknowledge_a_write(start_cluster: ClusterFactory) -> None:
    async with start_cluster(2, durability="replicated") as cluster, client(cluster.url) as http:
        assert (await accepted(lambda: http.put(f"/api/v1/db/{DB}"))).status_code in (200, 201)
        create = {"sql": "CREATE TABLE IF NOT EXISTS t (k TEXT)"}
        assert (await accepted(lambda: http.post(f"/api/v1/db/{DB}/query", json=create))).status_code == 200
        assert (await accepted(lambda: insert(http, "before"))).status_code == 200
        stale = cluster.node((await owners(cluster))[DB])
        os.kill(stale.pid, signal.SIGSTOP)
        try:
            async with client(stale.url) as direct, trio.open_nursery() as nursery:
                answer: list[httpx.Response] = []
                answered = trio.Event()

                async def write_to_the_frozen_node() -> None:
                    # Waits in the frozen node's socket; the header forbids it to forward: serve or refuse.
                    answer.append(await insert(direct, "stale", headers={FORWARDED_BY: "test"}))
                    answered.set()

                nursery.start_soon(write_to_the_frozen_node)
                with trio.fail_after(60):
                    while True:  # a client retrying until another node has taken the document
                        try:
                            # HAProxy may pick the frozen node until its health checks fail: time out, retry.
                            r = await insert(http, "after", patience=3)
                        except httpx.TimeoutException:
                            continue
                        if r.status_code == 200:
                            break
                        assert r.status_code in (502, 503), r.text
                        await trio.sleep(0.05)  # client back-off between retries
                new_owner = r.headers["x-skald-node"]
                assert new_owner != stale.node_id
                os.kill(stale.pid, signal.SIGCONT)
                with trio.fail_after(30):
                    await answered.wait()
                assert answer[0].status_code == 503, answer[0].text
                assert answer[0].json()["code"] == "not_owner"
                # Without the header the resumed node forwards to the owner (or refuses): never its stale copy.
                later = await insert(direct, "via-stale-node")
                assert later.status_code in (200, 503), later.text
                if later.status_code == 200:
                    assert later.headers["x-skald-node"] == new_owner
        finally:
            os.kill(stale.pid, signal.SIGCONT)
        rows = (await http.post(f"/api/v1/db/{DB}/query", json={"sql": "SELECT k FROM t ORDER BY rowid"})).json()
        keys = [row[0] for row in rows["rows"]]
        assert "stale" not in keys
        assert keys[:2] == ["before", "after"]
