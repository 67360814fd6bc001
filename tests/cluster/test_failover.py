"""Failover with ``durability = "replicated"``: SIGKILL a node mid-write; no acknowledged write is lost.

Writers run INSERTs, publishes and webhook ingests over 50 documents through HAProxy, retrying
what is refused (503 with Retry-After, HAProxy's 502 for a request cut by the kill, a reset), as
a client does. A write counts as acknowledged only on its 2xx. Once every document the killed node
owned has taken a write again (on the node that restored it from S3), every acknowledged write
must be there.
"""

from __future__ import annotations

import dataclasses
import itertools
import signal
from functools import partial

import httpx
import pytest
import trio
from support.cluster import ClusterFactory, accepted, client, owners

DOCS = [f"fo-{n:02d}" for n in range(50)]
WRITERS_PER_KIND = 4
BEFORE_KILL = 150  # acknowledged writes before the kill


@dataclasses.dataclass
class Ledger:
    acked: dict[str, set[tuple[str, str]]] = dataclasses.field(default_factory=lambda: {d: set() for d in DOCS})
    count: int = 0
    killed_at: float | None = None
    affected: set[str] = dataclasses.field(default_factory=set)
    recovered: dict[str, float] = dataclasses.field(default_factory=dict)  # db_id -> first ack after the kill
    enough: trio.Event = dataclasses.field(default_factory=trio.Event)
    all_recovered: trio.Event = dataclasses.field(default_factory=trio.Event)

    def ack(self, db_id: str, kind: str, key: str, sent: float) -> None:
        self.acked[db_id].add((kind, key))
        self.count += 1
        if self.count >= BEFORE_KILL:
            self.enough.set()
        if self.killed_at is not None and db_id in self.affected and sent > self.killed_at:
            self.recovered.setdefault(db_id, trio.current_time())
            if self.recovered.keys() >= self.affected:
                self.all_recovered.set()


async def write_once(http: httpx.AsyncClient, kind: str, db_id: str, key: str) -> bool:
    try:
        if kind == "insert":
            r = await http.post(
                f"/api/v1/db/{db_id}/query", json={"sql": "INSERT OR IGNORE INTO t (k) VALUES (?)", "args": [key]}
            )
        elif kind == "publish":
            r = await http.post(
                f"/api/v1/db/{db_id}/messages", json={"topic": "w", "payload_text": key, "dedupe_key": key}
            )
        else:
            headers = {"content-type": "text/plain"}
            r = await http.post(f"/api/v1/db/{db_id}/webhooks/ingest", content=key, headers=headers)
    except httpx.TransportError:
        return False
    if r.status_code in (502, 503, 504):
        return False
    assert r.status_code < 300, (kind, db_id, r.status_code, r.text)
    return True


async def writer(http: httpx.AsyncClient, kind: str, index: int, ledger: Ledger) -> None:
    for n in itertools.count():
        db_id = DOCS[(index * 7 + n) % len(DOCS)]
        key = f"{kind}-{index}-{n}"
        while True:  # a client retrying what was refused; each attempt may have committed or not
            sent = trio.current_time()
            if await write_once(http, kind, db_id, key):
                ledger.ack(db_id, kind, key, sent)
                break
            await trio.sleep(0.05)  # client back-off between retries (not a wait for the system)


async def present(http: httpx.AsyncClient, db_id: str) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    query = f"/api/v1/db/{db_id}/query"
    rows = (await accepted(partial(http.post, query, json={"sql": "SELECT k FROM t"}))).json()["rows"]
    found |= {("insert", row[0]) for row in rows}
    inbox = await accepted(partial(http.post, query, json={"sql": "SELECT CAST(body AS TEXT) FROM webhook_inbox"}))
    found |= {("webhook", row[0]) for row in inbox.json()["rows"]}
    polled = await accepted(partial(http.get, f"/api/v1/db/{db_id}/messages", params={"limit": 1000}))
    found |= {("publish", m["payload_text"]) for m in polled.json()["messages"]}
    return found


@pytest.mark.slow
async def test_sigkill_of_an_owner_loses_no_acknowledged_write(start_cluster: ClusterFactory) -> None:
    async with start_cluster(3, durability="replicated") as cluster, client(cluster.url) as http:
        for db_id in DOCS:
            assert (await accepted(partial(http.put, f"/api/v1/db/{db_id}"))).status_code in (200, 201)
            create = {"sql": "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)"}
            r = await accepted(partial(http.post, f"/api/v1/db/{db_id}/query", json=create))
            assert r.status_code == 200, r.text
        ledger = Ledger()
        with trio.fail_after(240):
            async with trio.open_nursery() as nursery:
                for kind in ("insert", "publish", "webhook"):
                    for index in range(WRITERS_PER_KIND):
                        nursery.start_soon(writer, http, kind, index, ledger)
                await ledger.enough.wait()
                placed = await owners(cluster)
                victim = max(("node1", "node2", "node3"), key=lambda n: sum(1 for o in placed.values() if o == n))
                ledger.affected = {db_id for db_id in DOCS if placed.get(db_id) == victim}
                assert ledger.affected
                ledger.killed_at = trio.current_time()
                cluster.node(victim).signal(signal.SIGKILL)
                acked_at_kill = ledger.count
                await ledger.all_recovered.wait()
                nursery.cancel_scope.cancel(reason="every affected document took a write again")
        first = min(ledger.recovered.values()) - ledger.killed_at
        last = max(ledger.recovered.values()) - ledger.killed_at
        lost: list[tuple[str, str, str]] = []
        for db_id in DOCS:
            found = await present(http, db_id)
            lost += [(db_id, kind, key) for kind, key in ledger.acked[db_id] - found]
        print(
            f"\nSIGKILL of {victim} (owner of {len(ledger.affected)} of {len(DOCS)} documents) after {acked_at_kill} "
            f"acknowledged writes; {ledger.count} acknowledged in all; kill -> first accepted write on an affected "
            f"document {first:.2f} s, every affected document {last:.2f} s; acknowledged writes lost: {len(lost)}"
        )
        assert lost == []
