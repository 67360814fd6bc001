"""Request validation and answer shapes for the job queue.

Everything a client sends is checked here before it reaches an op, so ops only
see well-formed values; every refusal is a 400 ``validation_failed``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime
from typing import Any

from skald.errors import PayloadTooLarge, ValidationFailed

PRIORITIES: dict[str, int] = {"critical": 0, "high": 1, "normal": 2}
PRIORITY_NAMES: dict[int, str] = {v: k for k, v in PRIORITIES.items()}
STATES = ("queued", "retrying", "running", "completed", "dead", "cancelled")
READY_STATES = ("queued", "retrying")
STRATEGIES = ("none", "fixed", "linear", "exponential")
QUEUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_QUEUE = re.compile(QUEUE_PATTERN)
MAX_TEXT = 256
MAX_TAGS = 32
MAX_ATTEMPTS = 1000
MAX_SECONDS = 366 * 86400.0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BACKOFF = {"strategy": "exponential", "base_seconds": 1.0, "max_seconds": 3600.0}
DEFAULT_LEASE_SECONDS = 30.0
MAX_LEASE_SECONDS = 3600.0
MAX_WAIT_SECONDS = 60.0
MAX_BATCH = 1000
MAX_FETCH = 100
MAX_ERROR_BYTES = 64 * 1024


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm): any year 0-9999."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_time(name: str, value: Any) -> int | None:
    """An RFC 3339 date-time (``2026-12-24T18:00:00Z``, an offset, optional fraction) as Unix milliseconds.

    Exactly RFC 3339 (what OpenAPI's ``date-time`` means), parsed by hand so every year 0000-9999
    and a leap second (``:60``, read as ``:59.999``) work; None stays None; anything else is a 400.
    """
    if value is None:
        return None
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValidationFailed(f"{name} must be an RFC 3339 date-time like 2026-01-01T00:00:00Z")
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    leap = month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days_in_month = 29 if leap else _DAYS_IN_MONTH[month - 1] if 1 <= month <= 12 else 0
    offset_hours, offset_minutes = (int(match[10]), int(match[11])) if match[9] else (0, 0)
    if not (1 <= day <= days_in_month and hour <= 23 and minute <= 59 and second <= 60
            and offset_hours <= 23 and offset_minutes <= 59):
        raise ValidationFailed(f"{name} is not a valid date-time")
    fraction_ms = int((match[7] or ".0")[1:4].ljust(3, "0"))
    if second == 60:
        second, fraction_ms = 59, 999
    offset = (offset_hours * 60 + offset_minutes) * (-1 if match[9] == "-" else 1)
    minutes = (_days_from_civil(year, month, day) * 24 + hour) * 60 + minute - offset
    return (minutes * 60 + second) * 1000 + fraction_ms


LATEST_MS = 253402300799999  # 9999-12-31T23:59:59.999Z


def _clamp_run_at(ms: int | None) -> int | None:
    """A run_at before 1970 is due at once like any past time; one after 9999 is stored as 9999-12-31."""
    return None if ms is None else min(max(ms, 0), LATEST_MS)


def queue_name(value: Any, name: str = "queue") -> str:
    if not isinstance(value, str) or not _QUEUE.match(value):
        raise ValidationFailed(f"{name} must match {QUEUE_PATTERN}")
    return value


def text(value: Any, name: str, *, optional: bool = True, limit: int = MAX_TEXT) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ValidationFailed(f"{name} must be a string of 1-{limit} characters")
    return value


def number(value: Any, name: str, *, minimum: float, maximum: float, default: float | None = None) -> float | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not minimum <= value <= maximum:
        raise ValidationFailed(f"{name} must be a number from {minimum:g} to {maximum:g}")
    return float(value)


def integer(value: Any, name: str, *, minimum: int, maximum: int, default: int | None = None) -> int | None:
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 28.0 is the integer 28 (as JSON Schema says)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ValidationFailed(f"{name} must be an integer from {minimum} to {maximum}")
    return value


def required_integer(value: Any, name: str, *, minimum: int, maximum: int) -> int:
    checked = integer(value, name, minimum=minimum, maximum=maximum)
    if checked is None:
        raise ValidationFailed(f"{name} is required")
    return checked


def priority(value: Any, default: int | None = PRIORITIES["normal"]) -> int:
    if value is None and default is not None:
        return default
    if not isinstance(value, str) or value not in PRIORITIES:
        raise ValidationFailed(f"priority must be one of {', '.join(PRIORITIES)}")
    return PRIORITIES[value]


def to_json_text(value: Any, name: str, max_bytes: int) -> str:
    encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if len(encoded.encode("utf-8", "surrogatepass")) > max_bytes:
        raise PayloadTooLarge(f"{name} is over {max_bytes} bytes", limit=max_bytes)
    return encoded


def obj(body: Any, name: str = "body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationFailed(f"{name} must be a JSON object")
    return body


@dataclasses.dataclass(frozen=True)
class Backoff:
    strategy: str
    base_seconds: float
    max_seconds: float

    @classmethod
    def parse(cls, value: Any) -> Backoff:
        given = {k: v for k, v in obj(value if value is not None else {}, "backoff").items() if v is not None}
        data = {**DEFAULT_BACKOFF, **given}
        if data["strategy"] not in STRATEGIES:
            raise ValidationFailed(f"backoff.strategy must be one of {', '.join(STRATEGIES)}")
        base = number(data["base_seconds"], "backoff.base_seconds", minimum=0, maximum=MAX_SECONDS)
        top = number(data["max_seconds"], "backoff.max_seconds", minimum=0, maximum=MAX_SECONDS)
        assert base is not None and top is not None
        return cls(str(data["strategy"]), base, top)

    def delay_seconds(self, attempt: int) -> float:
        """How long after failed attempt number ``attempt`` (1-based) the next one may start."""
        if self.strategy == "none":
            return 0.0
        if self.strategy == "fixed":
            delay = self.base_seconds
        elif self.strategy == "linear":
            delay = self.base_seconds * attempt
        else:
            delay = self.base_seconds * 2.0 ** min(attempt - 1, 64)
        return min(delay, self.max_seconds)

    def to_json(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "base_seconds": self.base_seconds, "max_seconds": self.max_seconds}


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """One validated enqueue request."""

    queue: str
    payload: str  # JSON text
    priority: int
    run_at_ms: int | None
    max_attempts: int
    backoff: Backoff
    unique_key: str | None
    unique_for_seconds: float | None
    tags: tuple[str, ...]
    timeout_seconds: float | None

    @classmethod
    def parse(cls, body: Any, max_payload_bytes: int) -> JobSpec:
        data = obj(body, "job")
        tags = data.get("tags")
        tags = [] if tags is None else tags
        if not isinstance(tags, list) or len(tags) > MAX_TAGS:
            raise ValidationFailed(f"tags must be a list of at most {MAX_TAGS} strings")
        checked = tuple(text(tag, "tags[]", optional=False) or "" for tag in tags)
        max_attempts = integer(data.get("max_attempts"), "max_attempts", minimum=1, maximum=MAX_ATTEMPTS,
                               default=DEFAULT_MAX_ATTEMPTS)
        assert max_attempts is not None
        return cls(
            queue=queue_name(data.get("queue")),
            payload=to_json_text(data.get("payload"), "payload", max_payload_bytes),
            priority=priority(data.get("priority")),
            run_at_ms=_clamp_run_at(parse_time("run_at", data.get("run_at"))),
            max_attempts=max_attempts,
            backoff=Backoff.parse(data.get("backoff")),
            unique_key=text(data.get("unique_key"), "unique_key"),
            unique_for_seconds=number(data.get("unique_for_seconds"), "unique_for_seconds", minimum=0,
                                      maximum=MAX_SECONDS),
            tags=tuple(dict.fromkeys(checked)),
            timeout_seconds=number(data.get("timeout_seconds"), "timeout_seconds", minimum=1, maximum=MAX_SECONDS),
        )


JOB_COLUMNS = (
    "id, queue, payload, priority, state, run_at_ms, created_at_ms, started_at_ms, completed_at_ms, attempts,"
    " max_attempts, backoff, unique_key, unique_until_ms, tags, timeout_seconds, fence, lease_expires_ms,"
    " worker_id, progress, checkpoint, result, cancel_requested, error_count, last_error"
)


@dataclasses.dataclass(frozen=True)
class Job:
    id: int
    queue: str
    payload: str
    priority: int
    state: str
    run_at_ms: int
    created_at_ms: int
    started_at_ms: int | None
    completed_at_ms: int | None
    attempts: int
    max_attempts: int
    backoff: str
    unique_key: str | None
    unique_until_ms: int | None
    tags: str
    timeout_seconds: float | None
    fence: int
    lease_expires_ms: int | None
    worker_id: str | None
    progress: str | None
    checkpoint: str | None
    result: str | None
    cancel_requested: int
    error_count: int
    last_error: str | None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Job:
        return cls(*row)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "queue": self.queue,
            "state": self.state,
            "priority": PRIORITY_NAMES.get(self.priority, "normal"),
            "payload": json.loads(self.payload),
            "run_at": iso(self.run_at_ms),
            "created_at": iso(self.created_at_ms),
            "started_at": iso(self.started_at_ms),
            "completed_at": iso(self.completed_at_ms),
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "backoff": json.loads(self.backoff),
            "unique_key": self.unique_key,
            "tags": json.loads(self.tags),
            "timeout_seconds": self.timeout_seconds,
            "worker_id": self.worker_id,
            "lease_expires_at": iso(self.lease_expires_ms) if self.state == "running" else None,
            "progress": _loads(self.progress),
            "checkpoint": _loads(self.checkpoint),
            "result": _loads(self.result),
            "cancel_requested": bool(self.cancel_requested),
            "error_count": self.error_count,
            "last_error": self.last_error,
        }


def _loads(value: str | None) -> Any:
    return None if value is None else json.loads(value)
