"""Typed shapes of what the clients return (the server's JSON, see docs/*.md of each capability)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NotRequired, TypedDict


class QueryResult(TypedDict, total=False):
    """``POST …/query`` (and each entry of a batch): rows as lists in ``columns`` order."""

    columns: list[str]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    changes: int
    last_insert_rowid: int | None
    duration_ms: float


class Published(TypedDict):
    """``POST …/messages``: ``deduplicated`` is present (true) when ``dedupe_key`` matched an earlier one."""

    id: int
    topic: str
    created_at: str
    deduplicated: NotRequired[bool]


class Message(TypedDict, total=False):
    """One message: exactly one of ``payload`` (JSON), ``payload_text``, ``payload_base64``."""

    id: int
    topic: str
    payload: Any
    payload_text: str
    payload_base64: str
    content_type: str | None
    created_at: str


class MessagesPage(TypedDict):
    """``GET …/messages``: ``reset`` is present when retention removed messages after ``since_id``."""

    messages: list[Message]
    next_since_id: int
    reset: NotRequired[dict[str, int]]


class Lease(TypedDict):
    """A lease; ``lease_token`` comes only with the acquisition (keep it to renew and release)."""

    resource: str
    owner: str
    fence: int
    ttl_seconds: float
    expires_at: str
    lease_token: NotRequired[str]
    released: NotRequired[bool]


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


# ``upload_blob(progress=)``: called with the bytes sent per chunk; ``download_blob(progress=)``:
# with the bytes received per chunk and the blob's size (None if the server did not say).
UploadProgress = Callable[[int], None]
DownloadProgress = Callable[[int, int | None], None]
