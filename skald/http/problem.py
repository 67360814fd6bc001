"""One renderer for every error: RFC 9457 ``application/problem+json``.

Skald's own errors carry status and code; framework errors (unknown route,
wrong method, body too large, schema validation) are translated here; any
other exception is a bug, logged with its traceback, and answered as 500.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import structlog
from quart import Quart, Response, request
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException

from skald.errors import BY_STATUS, PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE, ShuttingDown, SkaldError
from skald.metrics import Metrics
from skald.relay.io import Send, text_response, whole_response

log = structlog.get_logger("skald.http")

def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    response = Response(
        json.dumps(body), status=int(body["status"]), content_type=PROBLEM_CONTENT_TYPE, headers=headers or {}
    )
    _count(str(body.get("code", "")))
    return response


def render_error(error: SkaldError) -> Response:
    return problem_response(error.problem(instance=request.path), error.headers)


async def send_error(send: Send, error: SkaldError, path: str, *, legacy: bool, metrics: Metrics | None = None) -> None:
    """The same rendering at the ASGI layer, for what answers ahead of Quart (the pipeline, the relay).

    ``legacy``: the short ``text/plain`` body legacy scripts grep (the error's detail), else problem+json.
    """
    headers = [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
    if metrics is not None:
        metrics.rejected.labels(error.code).inc()
    if legacy:
        await text_response(send, error.status, error.detail, headers)
    else:
        body = json.dumps(error.problem(instance=path)).encode()
        await whole_response(send, error.status, PROBLEM_CONTENT_TYPE.encode(), body, headers)


def _count(code: str) -> None:
    from skald.http.state import get_state

    with contextlib.suppress(RuntimeError, KeyError):
        get_state().metrics.rejected.labels(code).inc()


def install_error_handlers(app: Quart) -> None:
    @app.errorhandler(SkaldError)
    async def skald_error(error: SkaldError) -> Response:
        if error.status >= 500 and not isinstance(error, ShuttingDown):  # refusing while stopping is no failure
            log.error("request failed", code=error.code, detail=error.detail)
        return render_error(error)

    @app.errorhandler(RequestSchemaValidationError)
    async def schema_error(error: RequestSchemaValidationError) -> Response:
        detail = str(error.validation_error)
        errors: list[Any] = []
        validation = error.validation_error
        if hasattr(validation, "errors"):
            try:
                errors = [
                    {"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in validation.errors()
                ]
                detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors)
            except (TypeError, AttributeError):
                errors = []
        mimetype = request.mimetype
        if not (mimetype == "application/json" or mimetype.endswith("+json")):
            # The body was not read as JSON at all, so pydantic's message ("Input should be a valid
            # dictionary") says nothing useful: name the header instead.
            detail = (
                f"the body must be JSON sent with Content-Type: application/json"
                f" (this request had {('Content-Type: ' + mimetype) if mimetype else 'no Content-Type'})"
            )
        body = {
            "type": PROBLEM_TYPE_BASE + "validation_failed",
            "title": "Request failed validation",
            "status": 400,
            "detail": detail,
            "code": "validation_failed",
            "instance": request.path,
            "errors": errors,
        }
        return problem_response(body)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = BY_STATUS[status].code if status in BY_STATUS else "http_error"
        headers: dict[str, str] = {}
        valid_methods = getattr(error, "valid_methods", None)
        if status == 405 and valid_methods:
            headers["Allow"] = ", ".join(sorted(valid_methods))
        body = {
            "type": PROBLEM_TYPE_BASE + code,
            "title": error.name,
            "status": status,
            "detail": error.description or error.name,
            "code": code,
            "instance": request.path,
        }
        return problem_response(body, headers)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.exception("unhandled error", error_type=type(error).__name__)
        body = {
            "type": PROBLEM_TYPE_BASE + "internal_error",
            "title": "Internal server error",
            "status": 500,
            "detail": "an unexpected error occurred; it has been logged",
            "code": "internal_error",
            "instance": request.path,
        }
        return problem_response(body)
