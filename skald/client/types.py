"""Typed shapes of what the clients return."""

from __future__ import annotations

import dataclasses
from typing import Any, TypedDict


class QueryResult(TypedDict, total=False):
    columns: list[str]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    changes: int
    last_insert_rowid: int | None
    duration_ms: float


class Published(TypedDict):
    id: int
    topic: str
    created_at: str


class Change(TypedDict, total=False):
    seq: int
    table: str
    op: str
    rowid: int
    new_rowid: int
    key: dict[str, Any]
    row: dict[str, Any]
    sql: str


class ChangesPage(TypedDict):
    changes: list[Change]
    last_seq: int
    reset: bool
    since: int
    has_more: bool


@dataclasses.dataclass(frozen=True)
class Event:
    """One server-sent event: ``event`` name, ``id`` (resume cursor, may be empty) and parsed ``data``."""

    event: str
    id: str
    data: Any
