"""Lease routes: ``POST /api/v1/db/{db_id}/leases/{acquire,renew,release}``.

The resource is in the JSON body, so each view authorizes itself with that
resource (``lease.acquire`` / ``lease.renew`` / ``lease.release``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from skald.auth.guard import authenticate, authorize
from skald.errors import ValidationFailed
from skald.http.state import AppState, get_state
from skald.leases.service import LeaseService, validate_request, validate_ttl

_BASE = "/api/v1/db/<db_id>/leases"


def install(app: QuartTrio, state: AppState) -> None:
    state.lease_operations = Counter(
        "skald_lease_operations_total",
        "Successful lease operations, by operation (acquire, renew, release)",
        ["operation"],
        registry=state.metrics.registry,
    )
    app.add_url_rule(_BASE + "/acquire", view_func=acquire_view, methods=["POST"])
    app.add_url_rule(_BASE + "/renew", view_func=renew_view, methods=["POST"])
    app.add_url_rule(_BASE + "/release", view_func=release_view, methods=["POST"])


def _marks(action: str) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    def mark(view: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        view.skald_action = action  # type: ignore[attr-defined]
        return view

    return mark


async def _body(db_id: str, action: str) -> dict[str, Any]:
    """Authenticate, parse the JSON object body and authorize ``action`` on its resource."""
    principal = await authenticate()
    assert principal is not None
    # First the action on the document (so a caller without any lease scope gets 403 whatever the
    # body), then the action on the body's resource (scopes may be limited to resource prefixes).
    await authorize(principal, db_id, action)
    data = await request.get_json(force=True)
    if not isinstance(data, dict):
        raise ValidationFailed("body must be a JSON object")
    resource = data.get("resource")
    if not isinstance(resource, str) or not resource:
        raise ValidationFailed("resource is required")
    await authorize(principal, db_id, action, resource)
    return data


def _token(data: dict[str, Any]) -> str:
    token = data.get("lease_token")
    if not isinstance(token, str) or not token:
        raise ValidationFailed("lease_token is required")
    return token


@_marks("lease.acquire")
async def acquire_view(db_id: str) -> tuple[Response, int]:
    """``{"resource", "owner", "ttl_seconds"?}`` -> the lease with its fence and (once) its token."""
    data = await _body(db_id, "lease.acquire")
    resource, owner, ttl = validate_request(data.get("resource"), data.get("owner"), data.get("ttl_seconds"))
    state = get_state()
    service: LeaseService = state.leases
    lease = await service.acquire(db_id, resource, owner, ttl)
    state.lease_operations.labels("acquire").inc()
    return jsonify(lease.to_json()), 201


@_marks("lease.renew")
async def renew_view(db_id: str) -> dict[str, Any]:
    """``{"resource", "lease_token", "ttl_seconds"?}`` -> the lease with its new expiry (same fence)."""
    data = await _body(db_id, "lease.renew")
    token = _token(data)
    ttl = None if data.get("ttl_seconds") is None else validate_ttl(data["ttl_seconds"])
    state = get_state()
    service: LeaseService = state.leases
    lease = await service.renew(db_id, data["resource"], token, ttl)
    state.lease_operations.labels("renew").inc()
    return lease.to_json()


@_marks("lease.release")
async def release_view(db_id: str) -> dict[str, Any]:
    """``{"resource", "lease_token"}`` -> the released lease; the next acquisition gets a higher fence."""
    data = await _body(db_id, "lease.release")
    token = _token(data)
    state = get_state()
    service: LeaseService = state.leases
    lease = await service.release(db_id, data["resource"], token)
    state.lease_operations.labels("release").inc()
    return {**lease.to_json(), "released": True}
