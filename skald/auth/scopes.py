"""Scopes and the one authorization decision.

A scope is ``{db, action, resource_prefix?}``: ``db`` is a document id or a
glob pattern (``*``, ``team-*``), ``action`` one of :data:`ACTIONS` or ``*``,
and ``resource_prefix`` optionally narrows it to resources (topics, stream
paths, webhook endpoints, lease resources, job queues) starting with that prefix.

:func:`decide` is the single place that says allow or deny.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

ACTIONS: tuple[str, ...] = (
    "query.read",
    "query.write",
    "query.admin",
    "pub.publish",
    "pub.subscribe",
    "stream.read",
    "stream.write",
    "webhook.ingest",
    "lease.acquire",
    "lease.renew",
    "lease.release",
    "blob.upload",
    "blob.read",
    "blob.claim",
    "blob.release",
    "sync.read",
    "jobs.enqueue",
    "jobs.work",
    "jobs.admin",
    "db.admin",
    "admin.token",
)

# A stronger query class includes the weaker ones: a token that may write may also read.
IMPLIED: dict[str, frozenset[str]] = {
    "query.write": frozenset({"query.read"}),
    "query.admin": frozenset({"query.read", "query.write"}),
    # Whoever runs the queues may also enqueue and work them.
    "jobs.admin": frozenset({"jobs.enqueue", "jobs.work"}),
}

GLOBAL = "*"
"""The db value used for actions that are not about one document (``admin.token``)."""


class ScopeError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Scope:
    db: str
    action: str
    resource_prefix: str | None = None

    def __post_init__(self) -> None:
        if self.action != "*" and self.action not in ACTIONS:
            raise ScopeError(f"unknown action {self.action!r}; known: {', '.join(ACTIONS)}")
        if not self.db:
            raise ScopeError("scope needs a document id or pattern")

    @classmethod
    def parse(cls, text: str) -> Scope:
        """Parse ``DB:ACTION[:PREFIX]`` (the CLI form)."""
        parts = text.split(":", 2)
        if len(parts) < 2:
            raise ScopeError(f"scope {text!r} is not DB:ACTION[:PREFIX]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 and parts[2] else None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scope:
        try:
            return cls(str(data["db"]), str(data["action"]), data.get("resource_prefix") or None)
        except KeyError as exc:
            raise ScopeError(f"scope is missing {exc.args[0]!r}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"db": self.db, "action": self.action, "resource_prefix": self.resource_prefix}

    def __str__(self) -> str:
        return f"{self.db}:{self.action}" + (f":{self.resource_prefix}" if self.resource_prefix else "")

    def grants(self, db_id: str, action: str) -> bool:
        """True if this scope covers ``action`` on ``db_id`` (ignoring the resource)."""
        if not fnmatchcase(db_id, self.db):
            return False
        if self.action == "*":
            return True
        return self.action == action or action in IMPLIED.get(self.action, frozenset())


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who is calling: a machine token or a signed-in person."""

    kind: str  # "token" | "user"
    id: str
    owner: str
    scopes: tuple[Scope, ...]
    label: str = ""
    is_admin: bool = False


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


def decide(principal: Principal, db_id: str, action: str, resource: str | None = None) -> Decision:
    """The one authorization decision: may ``principal`` do ``action`` on ``db_id``/``resource``?

    ``resource=None`` means the route does not name a resource; scopes with a
    ``resource_prefix`` then still grant the action, and the route must narrow
    what it returns with :func:`allowed_prefixes` (pub/sub filters do this).
    """
    if principal.is_admin:
        return Decision(True)
    matching = [s for s in principal.scopes if s.grants(db_id, action)]
    if not matching:
        return Decision(False, f"no scope grants {action} on {db_id}")
    if resource is None:
        return Decision(True)
    for scope in matching:
        if scope.resource_prefix is None or resource.startswith(scope.resource_prefix):
            return Decision(True)
    prefixes = ", ".join(sorted({s.resource_prefix or "" for s in matching}))
    return Decision(False, f"{action} on {db_id} is limited to resources under {prefixes}")


def allowed_prefixes(principal: Principal, db_id: str, action: str) -> list[str] | None:
    """Resource prefixes ``principal`` is limited to for ``action`` (None = unrestricted)."""
    if principal.is_admin:
        return None
    prefixes: list[str] = []
    for scope in principal.scopes:
        if scope.grants(db_id, action):
            if scope.resource_prefix is None:
                return None
            prefixes.append(scope.resource_prefix)
    return prefixes


def scopes_from_json(items: Iterable[dict[str, Any]]) -> tuple[Scope, ...]:
    return tuple(Scope.from_dict(item) for item in items)
