"""One exception hierarchy for skald, rendered as RFC 9457 problem+json.

Every error a client can see is a :class:`SkaldError` subclass carrying its
HTTP status and a stable ``code``. Routes raise them; one handler in
:mod:`skald.http.problem` renders them. Anything else that escapes a route is a
bug and becomes a logged 500.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://skald.dev/problems/"


class SkaldError(Exception):
    """Base of every error skald reports to a client."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal server error"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra
        self.headers: dict[str, str] = {}

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance is not None:
            body["instance"] = instance
        body.update(self.extra)
        return body


# ---- 400 ---------------------------------------------------------------------------------------


class BadRequest(SkaldError):
    status = 400
    code = "bad_request"
    title = "Bad request"


class InvalidJSON(BadRequest):
    code = "invalid_json"
    title = "Request body is not valid JSON"


class ValidationFailed(BadRequest):
    code = "validation_failed"
    title = "Request failed validation"


class InvalidDocumentId(BadRequest):
    code = "invalid_db_id"
    title = "Invalid document id"


# ---- 401 / 403 -----------------------------------------------------------------------------------


class Unauthenticated(SkaldError):
    status = 401
    code = "unauthenticated"
    title = "Authentication required"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers["WWW-Authenticate"] = 'Bearer realm="skald"'


class TokenInvalid(Unauthenticated):
    code = "token_invalid"
    title = "Token is unknown, expired or revoked"


class Forbidden(SkaldError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class ScopeDenied(Forbidden):
    code = "scope_denied"
    title = "Token lacks the scope for this action"


# ---- 404 / 405 / 409 -----------------------------------------------------------------------------


class NotFound(SkaldError):
    status = 404
    code = "not_found"
    title = "Not found"


class DocumentNotFound(NotFound):
    code = "document_not_found"
    title = "Document not found"


class MethodNotAllowed(SkaldError):
    status = 405
    code = "method_not_allowed"
    title = "Method not allowed"


class Conflict(SkaldError):
    status = 409
    code = "conflict"
    title = "Conflict"


class DocumentExists(Conflict):
    code = "document_exists"
    title = "Document already exists"


class TransactionRolledBack(Conflict):
    """The write ended its whole transaction (``INSERT OR ROLLBACK``, a trigger's
    ``RAISE(ROLLBACK, ...)``, or SQLite's own rollback on a full disk or I/O error).

    Only this write failed: the other writes that shared its group commit were run
    again in a fresh transaction and committed without it.
    """

    code = "transaction_rolled_back"
    title = "The write rolled back its transaction"


# ---- 413 / 415 / 429 -----------------------------------------------------------------------------


class PayloadTooLarge(SkaldError):
    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class UnsupportedMediaType(SkaldError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class RateLimited(SkaldError):
    status = 429
    code = "rate_limited"
    title = "Too many requests"

    def __init__(self, retry_after: float, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail, retry_after=max(1, int(retry_after + 0.999)), **extra)
        self.headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))


# ---- 5xx -----------------------------------------------------------------------------------------


class ServiceUnavailable(SkaldError):
    status = 503
    code = "service_unavailable"
    title = "Service unavailable"

    def __init__(self, detail: str | None = None, retry_after: int = 1, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers["Retry-After"] = str(retry_after)


class MailboxFull(ServiceUnavailable):
    code = "mailbox_full"
    title = "Document is overloaded; retry shortly"


class DocumentUnavailable(ServiceUnavailable):
    code = "document_unavailable"
    title = "Document is closing or unavailable"


class ShuttingDown(ServiceUnavailable):
    code = "shutting_down"
    title = "Server is shutting down"


class StorageError(SkaldError):
    status = 500
    code = "storage_error"
    title = "Storage error"


class MigrationError(SkaldError):
    status = 500
    code = "migration_error"
    title = "Schema migration failed"


class LengthRequired(SkaldError):
    status = 411
    code = "length_required"
    title = "Length required"


class RequestTimeout(SkaldError):
    status = 408
    code = "request_timeout"
    title = "Request timeout"


BY_STATUS: dict[int, type[SkaldError]] = {
    cls.status: cls
    for cls in (BadRequest, Unauthenticated, Forbidden, NotFound, MethodNotAllowed, RequestTimeout, Conflict,
                LengthRequired, PayloadTooLarge, UnsupportedMediaType, ServiceUnavailable)
}
"""The one code table: the error class an HTTP status stands for where a framework names only the status."""
