"""skald's client library: :class:`Client` (blocking) and :class:`AsyncClient` (trio or asyncio)."""

from __future__ import annotations

from skald.client.aio import AsyncClient, EventStream
from skald.client.blocking import Client
from skald.client.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    LeaseLost,
    NotFound,
    RateLimited,
    ResetRequired,
    ServerUnreachable,
    SkaldClientError,
    Unauthorized,
    is_invalid_sql,
)
from skald.client.types import (
    Change,
    ChangesPage,
    Event,
    Lease,
    Message,
    MessagesPage,
    Published,
    QueryResult,
)

__all__ = [
    "AsyncClient",
    "BadRequest",
    "Change",
    "ChangesPage",
    "Client",
    "Conflict",
    "Event",
    "EventStream",
    "Forbidden",
    "Lease",
    "LeaseLost",
    "Message",
    "MessagesPage",
    "NotFound",
    "Published",
    "QueryResult",
    "RateLimited",
    "ResetRequired",
    "ServerUnreachable",
    "SkaldClientError",
    "Unauthorized",
    "is_invalid_sql",
]
