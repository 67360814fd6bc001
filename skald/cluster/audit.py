"""The cluster's audit log: one owned document ``_audit`` that collects every node's audit lines.

Every node keeps appending its audit events to its own service DB, exactly as on one node: an
event is never lost or delayed because another node or etcd is away. The node that owns the
document ``_audit`` (a name no client can use: ids start with a letter or digit) collects them:
about twice a second it asks each node for the events after the last one it holds from that node
(``GET /api/v1/admin/audit?node=local&after_id=N``; its own straight from its service DB) and
appends them, each once (``UNIQUE (node, node_event_id)``). ``_audit`` is owned, fenced and
replicated by Litestream like any document, so when its owner dies another node restores it and
carries on from the marks it holds. Reading the audit log through any node reads ``_audit`` at its
owner, so every node shows the same log with the same ids.
"""

from __future__ import annotations

import contextlib
import functools
import json
from typing import TYPE_CHECKING, Any

import httpx
import structlog
import trio

from skald.auth.token_admin import read_after, read_audit
from skald.db.actor import DocumentActor
from skald.db.connection import DocConnection
from skald.errors import DocumentUnavailable, SkaldError

if TYPE_CHECKING:
    from skald.cluster.service import Cluster

log = structlog.get_logger("skald.cluster.audit")

AUDIT_DB = "_audit"
INTERVAL = 0.5  # seconds between two collections: how far the cluster's log trails each node's
BATCH = 500
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS audit_log ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, event TEXT NOT NULL,"
    " actor TEXT NOT NULL DEFAULT '', subject TEXT NOT NULL DEFAULT '', detail_json TEXT NOT NULL DEFAULT '{}',"
    " ip TEXT NOT NULL DEFAULT '', node TEXT NOT NULL, node_event_id INTEGER NOT NULL,"
    " UNIQUE (node, node_event_id))"
)


def _schema(conn: DocConnection) -> None:
    conn.execute(_SCHEMA)


def _marks(conn: DocConnection) -> dict[str, int]:
    return {str(node): int(last) for node, last in conn.execute(
        "SELECT node, max(node_event_id) FROM audit_log GROUP BY node")}


def _append(conn: DocConnection, node: str, events: list[dict[str, Any]]) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO audit_log (at, event, actor, subject, detail_json, ip, node, node_event_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(e["at"], e["event"], e.get("actor") or "", e.get("subject") or "", json.dumps(e.get("detail", {})),
          e.get("ip") or "", node, e["id"]) for e in events],
    )


def _page(conn: DocConnection, before_id: int | None, limit: int, event: str | None) -> list[dict[str, Any]]:
    events = read_audit(conn, before_id=before_id, limit=limit, event=event)
    if events:
        nodes = dict(conn.execute(
            f"SELECT id, node FROM audit_log WHERE id IN ({', '.join('?' * len(events))})",
            [e["id"] for e in events],
        ).fetchall())
        for e in events:
            e["node"] = nodes.get(e["id"])
    return events


class AuditCollector:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.client = httpx.AsyncClient(timeout=5)
        self.collected = trio.Event()  # set after each collection
        self._ready: DocumentActor | None = None  # the actor of _audit whose schema is in place

    async def aclose(self) -> None:
        await self.client.aclose()

    def _headers(self) -> dict[str, str]:
        from skald.cluster.forward import FORWARDED_BY

        return {"Authorization": f"Bearer {self.cluster.settings.admin_token}", FORWARDED_BY: self.cluster.node_id}

    async def serve(self) -> None:
        """Every node runs this; only the owner of ``_audit`` collects (whoever takes it first)."""
        if not self.cluster.settings.admin_token:
            log.warning("no admin_token: the cluster's audit log is not collected (each node keeps its own)")
            return
        while True:
            await trio.sleep(INTERVAL)
            with contextlib.suppress(SkaldError):  # etcd or the owner away: the next round tries again
                if await self.owner() is None:
                    await self.collect()

    async def owner(self, *, take: bool = True) -> str | None:
        """``None`` when this node owns ``_audit`` (taking it if nobody does), else the owner's URL."""
        owner = await self.cluster.place(AUDIT_DB, creating=True, take=take)
        if owner is None and AUDIT_DB not in self.cluster.documents:
            await self.cluster.registered(AUDIT_DB)  # its registry key: a later owner restores it
        return owner

    async def _prepared(self, actor: DocumentActor) -> None:
        if self._ready is not actor:  # once per actor, not a write per collection
            await actor.write(_schema)
            self._ready = actor

    async def collect(self) -> None:
        supervisor = self.cluster.supervisor
        async with supervisor.open_internal(AUDIT_DB) as actor:
            await self._prepared(actor)
            marks = await actor.read(_marks)
            for node, url in sorted(self.cluster.nodes.items()):
                after = marks.get(node, 0)
                while True:
                    if node == self.cluster.node_id:
                        mine = functools.partial(read_after, after_id=after, limit=BATCH)
                        events = await supervisor.service.read(mine)
                    else:
                        events = await self._ask(url, after)
                    if events:
                        await actor.write(functools.partial(_append, node=node, events=events))
                        after = events[-1]["id"]
                    if len(events) < BATCH:
                        break
        self.collected.set()
        self.collected = trio.Event()

    async def _ask(self, url: str, after: int) -> list[dict[str, Any]]:
        try:
            response = await self.client.get(
                f"{url}/api/v1/admin/audit", params={"node": "local", "after_id": after, "limit": BATCH},
                headers=self._headers(),
            )
        except httpx.HTTPError as exc:
            log.info("audit collection skipped a node", url=url, error=str(exc))
            return []
        if response.status_code != 200:
            log.warning("audit collection refused", url=url, status=response.status_code)
            return []
        events: list[dict[str, Any]] = response.json()["events"]
        return events

    async def page(self, *, before_id: int | None, limit: int, event: str | None, forwarded: bool) -> dict[str, Any]:
        """A page of the cluster's log, read at the owner of ``_audit`` (asked over HTTP if elsewhere)."""
        owner = await self.owner(take=not forwarded)
        if owner is None:
            async with self.cluster.supervisor.open_internal(AUDIT_DB) as actor:
                await self._prepared(actor)
                events = await actor.read(functools.partial(_page, before_id=before_id, limit=limit, event=event))
            return {"events": events, "next_before_id": events[-1]["id"] if len(events) == limit else None}
        if forwarded:
            from skald.cluster.service import NotOwner

            raise NotOwner("the audit log moved while this request was forwarded; retry", retry_after=1)
        params: dict[str, str | int] = {"limit": limit}
        if before_id is not None:
            params["before_id"] = before_id
        if event:
            params["event"] = event
        try:
            response = await self.client.get(f"{owner}/api/v1/admin/audit", params=params, headers=self._headers())
        except httpx.HTTPError as exc:
            from skald.cluster.service import OwnerUnavailable

            raise OwnerUnavailable(f"the node holding the audit log ({owner}) cannot be reached; retry",
                                   retry_after=1) from exc
        if response.status_code != 200:
            raise DocumentUnavailable(f"the node holding the audit log answered {response.status_code}; retry",
                                      retry_after=1)
        page: dict[str, Any] = response.json()
        return page
