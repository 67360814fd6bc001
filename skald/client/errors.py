"""Typed exceptions for skald's problem+json errors, raised by both clients."""

from __future__ import annotations

from typing import Any

import httpx


class SkaldClientError(Exception):
    """An error reported by the server (``status``, stable ``code``) or on the way to it (status 0)."""

    def __init__(self, status: int, code: str, detail: str, problem: dict[str, Any] | None = None) -> None:
        super().__init__(f"{detail} ({code})" if code else detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.problem = problem or {}


class ServerUnreachable(SkaldClientError):
    """No HTTP answer at all: connection refused, DNS, timeout."""


class BadRequest(SkaldClientError):
    """400: validation failed, invalid SQL (``code`` says which)."""


class Unauthorized(SkaldClientError):
    """401: missing, unknown, expired or revoked token."""


class Forbidden(SkaldClientError):
    """403: the token lacks the scope."""


class NotFound(SkaldClientError):
    """404: unknown document, topic, lease, blob."""


class Conflict(SkaldClientError):
    """409: e.g. a lease held by someone else or a stale fence."""


class RateLimited(SkaldClientError):
    """429: ``retry_after`` seconds to wait."""

    @property
    def retry_after(self) -> float:
        return float(self.problem.get("retry_after", 1))


class ResetRequired(SkaldClientError):
    """The change feed no longer holds the requested sequence: take a new snapshot."""


class LeaseLost(SkaldClientError):
    """A :meth:`lease` block's lease could not be renewed (expired, or taken over): stop acting on it."""


SQL_ERROR_CODES = frozenset({"sql_error", "multiple_statements", "empty_statement"})


def is_invalid_sql(exc: SkaldClientError) -> bool:
    """True for the codes the query API uses for SQL that SQLite cannot run as given."""
    return exc.status == 400 and exc.code in SQL_ERROR_CODES


_BY_STATUS: dict[int, type[SkaldClientError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    429: RateLimited,
}


def error_from_response(response: httpx.Response, body: bytes | None = None) -> SkaldClientError:
    """Build the typed error for a non-2xx ``response`` (its body must have been read, or pass ``body``)."""
    import json

    raw = body if body is not None else response.content
    problem: dict[str, Any] = {}
    try:
        parsed = json.loads(raw)
        if isinstance(parsed, dict):
            problem = parsed
    except ValueError:
        pass
    code = str(problem.get("code") or f"http_{response.status_code}")
    detail = str(
        problem.get("detail")
        or problem.get("title")
        or raw[:200].decode(errors="replace")
        or response.reason_phrase
    )
    cls = _BY_STATUS.get(response.status_code, SkaldClientError)
    return cls(response.status_code, code, detail, problem)


def unreachable(base_url: str, exc: Exception) -> ServerUnreachable:
    return ServerUnreachable(0, "unreachable", f"cannot reach skald at {base_url}: {exc.__class__.__name__}")
