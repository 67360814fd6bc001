"""What the request pipeline knows of the request being answered, for whoever answers it.

:class:`skald.http.pipeline.RequestPipeline` puts a :class:`RequestInfo` into each HTTP request's ASGI scope;
the route that answers names itself in it (:func:`name_route`), and everyone reads the client's IP from it
(:func:`request_ip`), so it is worked out once, by one rule (:func:`skald.http.client_ip.client_ip`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
from quart import request

from skald.http.client_ip import client_ip

SCOPE_KEY = "skald.request"
UNMATCHED = "unmatched"


@dataclasses.dataclass
class RequestInfo:
    """One request as the pipeline sees it; the route that answers fills in ``route`` and ``db_id``."""

    request_id: str
    started: float
    ip: str
    route: str = UNMATCHED
    db_id: str | None = None
    status: int | None = None


def request_info(scope: Mapping[str, Any]) -> RequestInfo | None:
    info: RequestInfo | None = scope.get(SCOPE_KEY)
    return info


def name_route(scope: MutableMapping[str, Any], route: str, db_id: str | None = None) -> None:
    """Record which route answers this request (its template) and the document it is about."""
    info = request_info(scope)
    if info is not None:
        info.route = route
        info.db_id = db_id
    if db_id is not None:
        structlog.contextvars.bind_contextvars(db_id=db_id)


def request_ip() -> str:
    """The client IP of the current Quart request, trusted-proxy aware."""
    info = request_info(request.scope)
    if info is not None:
        return info.ip
    from skald.http.state import get_state  # a request that did not pass the pipeline (e.g. a test context)

    headers = request.headers
    return client_ip(request.remote_addr, headers.get("X-Forwarded-For"), headers.get("X-Real-IP"),
                     get_state().settings.trusted_proxies)
