"""Webhook routes: ``POST /api/v1/db/{db_id}/webhooks/{endpoint}`` and its per-endpoint config."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter
from quart import Response, g, jsonify, request
from quart_trio import QuartTrio

from skald.auth.guard import authenticate, authorize, requires
from skald.db.ids import validate_db_id
from skald.errors import NotFound, PayloadTooLarge, Unauthenticated
from skald.http.state import AppState, get_state
from skald.webhooks.service import (
    Arrival,
    EndpointConfig,
    WebhookInbox,
    parse_endpoint_config,
    utc_now,
    validate_endpoint,
)

_BASE = "/api/v1/db/<db_id>/webhooks/<endpoint>"


def install(app: QuartTrio, state: AppState) -> None:
    state.webhooks = WebhookInbox(state.supervisor)
    state.webhook_deliveries = Counter(
        "skald_webhook_deliveries_total",
        "Webhook deliveries acknowledged, by result (stored or duplicate)",
        ["result"],
        registry=state.metrics.registry,
    )
    app.add_url_rule(_BASE, view_func=ingest_view, methods=["POST", "PUT", "PATCH"])
    app.add_url_rule(_BASE + "/config", view_func=get_config_view, methods=["GET"])
    app.add_url_rule(_BASE + "/config", view_func=put_config_view, methods=["PUT"])
    app.add_url_rule(_BASE + "/config", view_func=delete_config_view, methods=["DELETE"])


async def _read_body(limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes without buffering it all."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"webhook body is over the {limit}-byte limit", limit=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.body:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"webhook body is over the {limit}-byte limit", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _authorize_ingest(db_id: str, endpoint: str) -> bool:
    """Authorize a delivery; True when it came with credentials, False when it must carry a signature.

    A caller with a token (or web session) needs ``webhook.ingest`` on the endpoint, as any route.
    GitHub, Stripe and other providers cannot send a bearer token: a delivery without one is accepted
    only by an endpoint configured with signature verification, and only with a valid signature
    (checked in the ingest op). Without a token, a missing document and an endpoint without verification
    answer the same 401, so an anonymous caller learns nothing about which documents exist.
    """
    principal = await authenticate(required=False)
    if principal is not None:
        await authorize(principal, db_id, "webhook.ingest", endpoint)
        g.principal = principal
        return True
    if await get_state().webhooks.verifies_signatures(db_id, endpoint):
        return False
    raise Unauthenticated(
        "send Authorization: Bearer <token>, or configure signature verification for this endpoint"
        " (PUT .../config) so a provider's signed deliveries need no token"
    )


async def ingest_view(db_id: str, endpoint: str) -> tuple[Response, int]:
    """Store the delivery; answer 201 (or 200 for a duplicate delivery id) only after commit."""
    validate_endpoint(endpoint)
    validate_db_id(db_id)
    with_token = await _authorize_ingest(db_id, endpoint)
    state = get_state()
    body = await _read_body(state.settings.webhook_max_bytes)
    raw_headers = [(name, value) for name, value in request.headers.items()]
    header_map: dict[str, str] = {}
    for name, value in raw_headers:
        key = name.lower()
        header_map[key] = f"{header_map[key]}, {value}" if key in header_map else value
    arrival = Arrival(
        endpoint=endpoint,
        method=request.method,
        headers=header_map,
        query_string=request.query_string.decode("utf-8", "replace"),
        content_type=request.headers.get("Content-Type"),
        body=body,
        received_at=utc_now(),
    )
    stored = await state.webhooks.ingest(db_id, arrival, signed_only=not with_token)
    state.webhook_deliveries.labels("duplicate" if stored.duplicate else "stored").inc()
    payload = {
        "id": stored.id,
        "endpoint": endpoint,
        "delivery_id": stored.delivery_id,
        "received_at": stored.received_at,
        "duplicate": stored.duplicate,
    }
    return jsonify(payload), (200 if stored.duplicate else 201)


# The authorization matrix reads the action from the view: a token still needs webhook.ingest here.
ingest_view.skald_action = "webhook.ingest"  # type: ignore[attr-defined]


@requires("db.admin")
async def get_config_view(db_id: str, endpoint: str) -> dict[str, Any]:
    validate_endpoint(endpoint)
    config = await get_state().webhooks.config(db_id, endpoint)
    return {"endpoint": endpoint, **config.public()}


@requires("db.admin")
async def put_config_view(db_id: str, endpoint: str) -> dict[str, Any]:
    """Replace the endpoint's settings: ``{"verify": {...} | null, "redact_headers": [...]}``."""
    validate_endpoint(endpoint)
    config: EndpointConfig = parse_endpoint_config(await request.get_json(force=True))
    await get_state().webhooks.set_config(db_id, endpoint, config)
    return {"endpoint": endpoint, **config.public()}


@requires("db.admin")
async def delete_config_view(db_id: str, endpoint: str) -> tuple[str, int]:
    validate_endpoint(endpoint)
    deleted = await get_state().webhooks.delete_config(db_id, endpoint)
    if not deleted:
        raise NotFound(f"endpoint {endpoint} has no settings")
    return "", 204
