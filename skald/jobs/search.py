"""Job search and bulk actions: a filter object becomes one SQL ``WHERE`` clause.

Every filter is optional and they combine with AND. Bulk actions run the same
clause in one ``UPDATE``/``DELETE`` statement (plus the event rows), so "retry
everything that failed with a timeout" is one write however many jobs match.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from typing import Any

from skald.errors import ValidationFailed
from skald.jobs.model import (
    JOB_COLUMNS,
    PRIORITIES,
    STATES,
    Job,
    integer,
    obj,
    parse_time,
    priority,
    queue_name,
    required_integer,
    text,
)
from skald.jobs.ops import Tx, _forget_errors

SORTS = {
    "id": "id", "created_at": "created_at_ms", "run_at": "run_at_ms", "started_at": "coalesce(started_at_ms, -1)",
    "completed_at": "coalesce(completed_at_ms, -1)", "priority": "priority", "attempts": "attempts",
}
TIME_FILTERS = {"created": "created_at_ms", "run_at": "run_at_ms", "started": "started_at_ms",
                "completed": "completed_at_ms"}
FILTER_KEYS = frozenset({
    "queue", "state", "priority", "tags", "payload_contains", "attempts_min", "attempts_max", "unique_key",
    "worker_id", "has_errors", "error_contains", "id_prefix", "ids",
    *(f"{name}_{side}" for name in TIME_FILTERS for side in ("before", "after")),
})
MAX_PAGE = 1000
MAX_IDS = 10_000


def _names(value: Any, name: str, allowed: Any = None) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values or len(values) > 100:
        raise ValidationFailed(f"{name} must be a value or a list of 1-100 values")
    for item in values:
        if allowed is not None and (not isinstance(item, str) or item not in allowed):
            raise ValidationFailed(f"{name} must be among {', '.join(allowed)}")
        if allowed is None:
            queue_name(item, name)
    return [str(v) for v in values]


@dataclasses.dataclass(frozen=True)
class Where:
    sql: str
    params: tuple[Any, ...]


def within_queues(where: Where, prefixes: list[str] | None) -> Where:
    """``where`` narrowed to jobs whose queue starts with one of ``prefixes`` (None: unrestricted).

    How a scope limited to queue prefixes sees search and bulk: only its own queues' jobs, with
    paging intact (the narrowing is in the statement, not applied to a page afterwards).
    """
    if prefixes is None:
        return where
    if not prefixes:
        return Where("0", ())
    narrow = " OR ".join("substr(queue, 1, ?) = ?" for _ in prefixes)
    params = tuple(value for p in prefixes for value in (len(p), p))
    return Where(f"({where.sql}) AND ({narrow})", where.params + params)


def parse_filter(value: Any) -> Where:
    """Validate a filter object; the ``WHERE`` clause (without the keyword) and its parameters."""
    data = obj(value if value is not None else {}, "filter")
    unknown = set(data) - FILTER_KEYS
    if unknown:
        raise ValidationFailed(f"unknown filter fields: {', '.join(sorted(unknown))}")
    clauses: list[str] = []
    params: list[Any] = []

    def any_of(column: str, values: list[Any]) -> None:
        clauses.append(f"{column} IN ({','.join('?' * len(values))})")
        params.extend(values)

    if data.get("ids") is not None:
        raw = data["ids"]
        if not isinstance(raw, list) or len(raw) > MAX_IDS:
            raise ValidationFailed(f"ids must be a list of at most {MAX_IDS} job ids")
        ids = [required_integer(i, "ids[]", minimum=1, maximum=2**63 - 1) for i in raw]
        clauses.append("id IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(ids))
    if data.get("queue") is not None:
        any_of("queue", _names(data["queue"], "queue"))
    if data.get("state") is not None:
        any_of("state", _names(data["state"], "state", STATES))
    if data.get("priority") is not None:
        any_of("priority", [priority(p, None) for p in _names(data["priority"], "priority", PRIORITIES)])
    if data.get("tags") is not None:
        tags = data["tags"]
        if not isinstance(tags, list) or len(tags) > 32:
            raise ValidationFailed("tags must be a list of at most 32 strings (jobs with all of them)")
        for tag in tags:
            clauses.append("EXISTS (SELECT 1 FROM json_each(_skald_jobs.tags) WHERE value = ?)")
            params.append(text(tag, "tags[]", optional=False))
    if data.get("payload_contains") is not None:
        needle = data["payload_contains"]
        if isinstance(needle, dict):
            # Each top-level field must equal the given JSON value.
            for key, expected in needle.items():
                clauses.append("EXISTS (SELECT 1 FROM json_each(_skald_jobs.payload) WHERE key = ?"
                               " AND json_quote(value) = json(?))")
                params += [str(key), json.dumps(expected)]
        else:
            clauses.append("instr(payload, ?) > 0")
            params.append(text(needle, "payload_contains", optional=False, limit=4096))
    for name, column in TIME_FILTERS.items():
        for side, op in (("before", "<"), ("after", ">")):
            ms = parse_time(f"{name}_{side}", data.get(f"{name}_{side}"))
            if ms is not None:
                clauses.append(f"{column} {op} ?")
                params.append(ms)
    for key, op in (("attempts_min", ">="), ("attempts_max", "<=")):
        bound = integer(data.get(key), key, minimum=0, maximum=1_000_000)
        if bound is not None:
            clauses.append(f"attempts {op} ?")
            params.append(bound)
    for key in ("unique_key", "worker_id"):
        if data.get(key) is not None:
            clauses.append(f"{key} = ?")
            params.append(text(data[key], key, optional=False))
    if data.get("has_errors") is not None:
        if not isinstance(data["has_errors"], bool):
            raise ValidationFailed("has_errors must be true or false")
        clauses.append("error_count > 0" if data["has_errors"] else "error_count = 0")
    if data.get("error_contains") is not None:
        clauses.append("EXISTS (SELECT 1 FROM _skald_job_errors e WHERE e.job_id = _skald_jobs.id"
                       " AND instr(e.error, ?) > 0)")
        params.append(text(data["error_contains"], "error_contains", optional=False, limit=4096))
    if data.get("id_prefix") is not None:
        prefix = data["id_prefix"]
        if not isinstance(prefix, str) or not prefix.isascii() or not prefix.isdigit() or len(prefix) > 19:
            raise ValidationFailed("id_prefix must be 1-19 decimal digits")
        clauses.append("substr(CAST(id AS TEXT), 1, ?) = ?")
        params += [len(prefix), prefix]
    return Where(" AND ".join(clauses) or "1", tuple(params))


@dataclasses.dataclass(frozen=True)
class Page:
    sort: str
    descending: bool
    limit: int
    after: tuple[int, int] | None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Page:
        sort = data.get("sort", "id")
        if not isinstance(sort, str) or sort not in SORTS:
            raise ValidationFailed(f"sort must be one of {', '.join(SORTS)}")
        order = data.get("order", "asc")
        if not isinstance(order, str) or order not in ("asc", "desc"):
            raise ValidationFailed("order must be asc or desc")
        limit = integer(data.get("limit"), "limit", minimum=1, maximum=MAX_PAGE, default=100)
        assert limit is not None
        cursor = data.get("cursor")
        after = None
        if cursor is not None:
            after = _decode_cursor(cursor, sort, order)
        return cls(str(sort), order == "desc", limit, after)


def _encode_cursor(sort: str, order: str, key: tuple[int, int]) -> str:
    raw = json.dumps([sort, order, key[0], key[1]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: Any, sort: str, order: str) -> tuple[int, int]:
    try:
        if not isinstance(cursor, str) or len(cursor) > 200:
            raise ValueError
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(raw, list) or len(raw) != 4 or raw[:2] != [sort, order]:
            raise ValueError
        value, last = raw[2], raw[3]
        if not all(isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**63 for v in (value, last)):
            raise ValueError
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed("cursor is not a cursor of this search's sort and order") from None
    return int(value), int(last)


def search(tx: Tx, where: Where, page: Page) -> dict[str, Any]:
    """One page of matching jobs and the cursor of the next page (None at the end)."""
    key = SORTS[page.sort]
    direction = "DESC" if page.descending else "ASC"
    sql, params = where.sql, list(where.params)
    if page.after is not None:
        op = "<" if page.descending else ">"
        sql = f"({sql}) AND ({key} {op} ? OR ({key} = ? AND id {op} ?))"
        params += [page.after[0], page.after[0], page.after[1]]
    rows = tx.conn.execute(
        f"SELECT {JOB_COLUMNS}, {key} FROM _skald_jobs WHERE {sql} ORDER BY {key} {direction}, id {direction}"
        " LIMIT ?", (*params, page.limit + 1),
    ).fetchall()
    more = len(rows) > page.limit
    rows = rows[: page.limit]
    cursor = None
    if more:
        last = rows[-1]
        cursor = _encode_cursor(page.sort, "desc" if page.descending else "asc", (int(last[-1]), int(last[0])))
    return {"jobs": [Job.from_row(tuple(r[:-1])).to_json() for r in rows], "next_cursor": cursor}


BULK_ACTIONS = ("retry", "requeue", "delete", "cancel", "move", "priority")


def bulk(tx: Tx, action: str, where: Where, queue: str | None, new_priority: int | None) -> int:
    """Apply ``action`` to every matching job in one statement; the number of jobs it changed."""
    conn, now = tx.conn, tx.now
    sql, params = where.sql, where.params
    tx.recount = True
    if action == "delete":
        rows = conn.execute(f"DELETE FROM _skald_jobs WHERE {sql} RETURNING id, queue, attempts", params).fetchall()
        _forget_errors(tx, [r[0] for r in rows])
        events = [(r[0], r[1], "deleted", r[2]) for r in rows]
    elif action in ("retry", "requeue"):
        states = "('dead', 'cancelled', 'retrying')" if action == "retry" else (
            "('dead', 'cancelled', 'retrying', 'completed', 'queued')")
        rows = conn.execute(
            "UPDATE _skald_jobs SET state = 'queued', run_at_ms = ?, attempts = 0, completed_at_ms = NULL,"
            f" cancel_requested = 0 WHERE ({sql}) AND state IN {states} RETURNING id, queue, state, attempts",
            (now, *params),
        ).fetchall()
        events = [tuple(r) for r in rows]
    elif action == "cancel":
        rows = conn.execute(
            "UPDATE _skald_jobs SET cancel_requested = 1,"
            " completed_at_ms = CASE WHEN state = 'running' THEN completed_at_ms ELSE ? END,"
            " state = CASE WHEN state = 'running' THEN 'running' ELSE 'cancelled' END"
            f" WHERE ({sql}) AND state IN ('queued', 'retrying', 'running') RETURNING id, queue, state, attempts",
            (now, *params),
        ).fetchall()
        events = [tuple(r) for r in rows if r[2] == "cancelled"]
    elif action == "move":
        assert queue is not None
        rows = conn.execute(
            f"UPDATE _skald_jobs SET queue = ? WHERE ({sql}) AND state != 'running'"
            " RETURNING id, queue, state, attempts", (queue, *params),
        ).fetchall()
        events = [tuple(r) for r in rows]
    else:
        assert action == "priority" and new_priority is not None
        rows = conn.execute(
            f"UPDATE _skald_jobs SET priority = ? WHERE {sql} RETURNING id, queue, state, attempts",
            (new_priority, *params),
        ).fetchall()
        events = []
    conn.executemany(
        "INSERT INTO _skald_job_events (job_id, queue, state, attempt, at_ms) VALUES (?, ?, ?, ?, ?)",
        [(e[0], e[1], e[2], e[3], now) for e in events],
    )
    # A priority change needs no wake-up: a fetch only waits when no job is ready at all.
    return len(rows)
