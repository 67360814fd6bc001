"""skald's client library: :class:`Client` (blocking) and :class:`AsyncClient` (trio or asyncio)."""

from __future__ import annotations

from skald.client.aio import AsyncClient, ResetRequired
from skald.client.blocking import Client
from skald.client.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    ServerUnreachable,
    SkaldClientError,
    Unauthorized,
)
from skald.client.types import Change, ChangesPage, Event, Published, QueryResult

__all__ = [
    "AsyncClient",
    "BadRequest",
    "Change",
    "ChangesPage",
    "Client",
    "Conflict",
    "Event",
    "Forbidden",
    "NotFound",
    "Published",
    "QueryResult",
    "RateLimited",
    "ResetRequired",
    "ServerUnreachable",
    "SkaldClientError",
    "Unauthorized",
]
