"""Webhook inbox: persist first, acknowledge after commit, deduplicate provider retries.

A delivery is stored in the document's ``webhook_inbox`` table (see
``migrations/document/0003_webhooks_leases.sql``) by :func:`store_delivery`, an
actor write op. The HTTP route answers 2xx only once the op's transaction has
committed. Consumers read the inbox with ordinary queries.

Per-endpoint settings (optional HMAC verification, extra headers to redact)
live in ``_skald_webhook_endpoints`` and are read with :func:`load_endpoint_config`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import re
import sqlite3
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from skald.db.connection import DocConnection
from skald.db.supervisor import Supervisor
from skald.errors import BadRequest, DocumentNotFound, InvalidJSON, StorageError, Unauthenticated, ValidationFailed
from skald.http.json_body import decode_json_body

ENDPOINT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
REDACTED = "[redacted]"
ALWAYS_REDACTED = frozenset({"authorization", "cookie", "proxy-authorization"})
STYLES = ("github", "stripe", "standard", "hmac")
ALGORITHMS = ("sha1", "sha256", "sha512")

# Headers providers use for a stable delivery id, in order of preference.
_DELIVERY_HEADERS = (
    "x-github-delivery",
    "svix-id",
    "webhook-id",
    "x-gitlab-event-uuid",
    "x-delivery-id",
    "idempotency-key",
    "x-request-id",
)


class InvalidEndpoint(BadRequest):
    code = "invalid_endpoint"
    title = "Invalid webhook endpoint name"


class InboxSchemaError(StorageError):
    code = "webhook_inbox_schema"
    title = "The webhook_inbox table no longer accepts deliveries"


class SignatureMismatch(Unauthenticated):
    code = "webhook_signature_invalid"
    title = "Webhook signature missing or invalid"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers.pop("WWW-Authenticate", None)


def validate_endpoint(endpoint: str) -> str:
    """Return ``endpoint`` if it is 1-128 characters of ``[A-Za-z0-9._-]`` (no leading dot/dash)."""
    if not ENDPOINT_PATTERN.match(endpoint) or ".." in endpoint:
        raise InvalidEndpoint(f"{endpoint[:140]!r} is not a valid endpoint name: 1-128 of [A-Za-z0-9._-]")
    return endpoint


# ---- endpoint configuration ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VerifyConfig:
    """How deliveries to one endpoint are authenticated (see :func:`verify_signature`)."""

    style: str
    secret: str
    header: str | None = None
    algorithm: str = "sha256"
    encoding: str = "hex"  # hex | base64 (style "hmac" only)
    prefix: str = ""  # e.g. "sha256=" (style "hmac" only)
    tolerance_seconds: int = 300

    def public(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["secret"] = REDACTED
        return data


@dataclasses.dataclass(frozen=True)
class EndpointConfig:
    verify: VerifyConfig | None = None
    redact_headers: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "verify": dataclasses.asdict(self.verify) if self.verify else None,
                "redact_headers": list(self.redact_headers),
            }
        )

    def public(self) -> dict[str, Any]:
        return {
            "verify": self.verify.public() if self.verify else None,
            "redact_headers": list(self.redact_headers),
        }


def parse_endpoint_config(data: Any) -> EndpointConfig:
    """Validate a config body ``{"verify": {...} | null, "redact_headers": [...]}``; raise 400 if bad."""
    if not isinstance(data, Mapping):
        raise ValidationFailed("config must be a JSON object")
    unknown = set(data) - {"verify", "redact_headers"}
    if unknown:
        raise ValidationFailed(f"unknown config fields: {', '.join(sorted(unknown))}")
    redact = data.get("redact_headers")
    if redact is None:
        redact = []
    if not isinstance(redact, list) or not all(isinstance(h, str) and h for h in redact):
        raise ValidationFailed("redact_headers must be a list of header names")
    verify_data = data.get("verify")
    verify: VerifyConfig | None = None
    if verify_data is not None:
        if not isinstance(verify_data, Mapping):
            raise ValidationFailed("verify must be an object or null")
        allowed = {f.name for f in dataclasses.fields(VerifyConfig)}
        extra = set(verify_data) - allowed
        if extra:
            raise ValidationFailed(f"unknown verify fields: {', '.join(sorted(extra))}")
        fields = dict(verify_data)
        tolerance = fields.get("tolerance_seconds")
        if isinstance(tolerance, float) and tolerance.is_integer():  # JSON Schema's integer: 300.0 is one
            fields["tolerance_seconds"] = int(tolerance)
        try:
            verify = VerifyConfig(**fields)
        except TypeError as exc:
            raise ValidationFailed(f"verify: {exc}") from None
        if verify.style not in STYLES:
            raise ValidationFailed(f"verify.style must be one of {', '.join(STYLES)}")
        if not isinstance(verify.secret, str) or not verify.secret:
            raise ValidationFailed("verify.secret must be a non-empty string")
        if verify.algorithm not in ALGORITHMS:
            raise ValidationFailed(f"verify.algorithm must be one of {', '.join(ALGORITHMS)}")
        if verify.encoding not in ("hex", "base64"):
            raise ValidationFailed("verify.encoding must be hex or base64")
        if verify.style == "hmac" and not verify.header:
            raise ValidationFailed("verify.header is required for style hmac")
        # Checked here, or a wrong type is stored and the next delivery's verification fails on it (500).
        if verify.header is not None and (not isinstance(verify.header, str) or not verify.header):
            raise ValidationFailed("verify.header must be a header name or null")
        if not isinstance(verify.prefix, str):
            raise ValidationFailed("verify.prefix must be a string")
        tolerance = verify.tolerance_seconds
        if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 1:
            raise ValidationFailed("verify.tolerance_seconds must be a positive integer")
        if verify.style == "standard":
            _standard_key(verify.secret)  # raises on a malformed whsec_ secret
    return EndpointConfig(verify, tuple(h.lower() for h in redact))


def load_endpoint_config(conn: DocConnection, endpoint: str) -> EndpointConfig:
    """The stored config of ``endpoint`` (defaults if none)."""
    row = conn.execute(
        "SELECT config FROM _skald_webhook_endpoints WHERE endpoint = ?", (endpoint,)
    ).fetchone()
    if row is None:
        return EndpointConfig()
    return parse_endpoint_config(json.loads(row[0]))


def save_endpoint_config(conn: DocConnection, endpoint: str, config: EndpointConfig) -> None:
    conn.execute(
        "INSERT INTO _skald_webhook_endpoints (endpoint, config, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT(endpoint) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at",
        (endpoint, config.to_json(), utc_now()),
    )


def delete_endpoint_config(conn: DocConnection, endpoint: str) -> bool:
    return conn.execute("DELETE FROM _skald_webhook_endpoints WHERE endpoint = ?", (endpoint,)).rowcount > 0


# ---- deliveries -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Delivery:
    endpoint: str
    method: str
    headers: dict[str, str]  # lower-case names, already redacted
    query_string: str
    content_type: str | None
    body: bytes
    delivery_id: str
    received_at: str
    verified: str | None = None


@dataclasses.dataclass(frozen=True)
class Stored:
    id: int
    delivery_id: str
    received_at: str
    duplicate: bool


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def redact_headers(headers: Mapping[str, str], extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Lower-case header names; replace credentials and ``extra`` headers by ``[redacted]``."""
    secret = ALWAYS_REDACTED | {h.lower() for h in extra}
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        value = REDACTED if key in secret else value
        out[key] = f"{out[key]}, {value}" if key in out and value != REDACTED else value
    return out


def delivery_id_from(headers: Mapping[str, str], body: bytes) -> str:
    """A stable id for the delivery from provider headers, else a generated one.

    Stripe signs every retry afresh, so for a ``Stripe-Signature`` delivery the
    event id in the JSON body (``evt_...``) is used when present; otherwise the
    signature's timestamp and first ``v1`` value.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    for name in _DELIVERY_HEADERS:
        value = lower.get(name, "").strip()
        if value:
            return value[:200]
    stripe = lower.get("stripe-signature")
    if stripe:
        try:
            event = decode_json_body(body)  # the shared decoder: no RecursionError, no lone surrogate
            if isinstance(event, dict) and isinstance(event.get("id"), str) and event["id"]:
                return str(event["id"])[:200]
        except InvalidJSON:
            pass
        parts = _stripe_parts(stripe)
        return f"stripe:{parts.get('t', [''])[0]}:{parts.get('v1', [''])[0]}"[:200]
    return f"gen-{uuid.uuid4().hex}"


def delivery_id_for(verify: VerifyConfig | None, headers: Mapping[str, str], body: bytes) -> str:
    """The delivery id to deduplicate on, taken from what the endpoint's signature covers when it can.

    Replay protection: Stripe and Standard Webhooks sign a timestamp, and a delivery outside the
    tolerance is refused (:func:`verify_signature`); a replay inside it is a duplicate because its id
    comes from signed parts: the Standard Webhooks ``webhook-id`` (signed with the body), Stripe's event
    id from the signed body. An attacker who replays a captured delivery with an extra
    ``X-GitHub-Delivery`` header therefore does not get it stored twice. GitHub and plain HMAC sign only
    the body, so their delivery id is the provider's header (:func:`delivery_id_from`).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    if verify is not None and verify.style == "standard":
        msg_id = (lower.get("webhook-id") or lower.get("svix-id") or "").strip()
        if msg_id:
            return msg_id[:200]
    if verify is not None and verify.style == "stripe":
        signature = lower.get((verify.header or "stripe-signature").lower(), "")
        return delivery_id_from({"stripe-signature": signature or "-"}, body)
    return delivery_id_from(headers, body)


def store_delivery(conn: DocConnection, delivery: Delivery) -> Stored:
    """Actor write op: insert ``delivery`` once per (endpoint, delivery_id).

    Returns the stored row's id; ``duplicate=True`` (and the original id and
    time) when that delivery id was already stored for the endpoint.
    Columns are named, so operator-added columns (with defaults) do not break it.
    """
    try:
        return _insert_delivery(conn, delivery)
    except sqlite3.IntegrityError as exc:
        # An operator-added column without a default, or a CHECK/trigger of theirs, refuses the row.
        raise InboxSchemaError(f"webhook_inbox refused the delivery: {exc}") from None
    except sqlite3.OperationalError as exc:
        raise InboxSchemaError(f"webhook_inbox is not usable: {exc}") from None


def _insert_delivery(conn: DocConnection, delivery: Delivery) -> Stored:
    row = conn.execute(
        "INSERT INTO webhook_inbox (endpoint, delivery_id, method, headers, query_string, content_type, body,"
        " received_at, verified) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (endpoint, delivery_id) DO NOTHING RETURNING id",
        (
            delivery.endpoint,
            delivery.delivery_id,
            delivery.method,
            json.dumps(delivery.headers),
            delivery.query_string,
            delivery.content_type,
            delivery.body,
            delivery.received_at,
            delivery.verified,
        ),
    ).fetchone()
    if row is not None:
        return Stored(int(row[0]), delivery.delivery_id, delivery.received_at, False)
    found = conn.execute(
        "SELECT id, received_at FROM webhook_inbox WHERE endpoint = ? AND delivery_id = ?",
        (delivery.endpoint, delivery.delivery_id),
    ).fetchone()
    if found is None:  # pragma: no cover - the conflict row vanished inside our own transaction
        raise sqlite3.IntegrityError("duplicate delivery not found")
    return Stored(int(found[0]), delivery.delivery_id, str(found[1]), True)


# ---- signatures -----------------------------------------------------------------------------------


def verify_signature(
    config: VerifyConfig, headers: Mapping[str, str], body: bytes, *, now: float | None = None
) -> None:
    """Raise :class:`SignatureMismatch` (401) unless ``body`` carries a valid signature.

    Styles: ``github`` (``X-Hub-Signature-256: sha256=<hex>``), ``stripe``
    (``Stripe-Signature: t=<ts>,v1=<hex>`` over ``"<ts>.<body>"``), ``standard``
    (Standard Webhooks / Svix: ``webhook-id``, ``webhook-timestamp``,
    ``webhook-signature: v1,<base64>`` over ``"<id>.<ts>.<body>"``, secret
    ``whsec_<base64>``) and ``hmac`` (any header, algorithm, hex/base64, prefix).
    Timestamps older or newer than ``tolerance_seconds`` are refused.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    now = time.time() if now is None else now
    secret = config.secret.encode()
    if config.style == "github":
        got = lower.get((config.header or "x-hub-signature-256").lower(), "")
        want = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not got or not hmac.compare_digest(got.strip(), want):
            raise SignatureMismatch("X-Hub-Signature-256 does not match the body")
    elif config.style == "stripe":
        parts = _stripe_parts(lower.get((config.header or "stripe-signature").lower(), ""))
        stamp = parts.get("t", [""])[0]
        _check_timestamp(stamp, now, config.tolerance_seconds)
        want = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not any(hmac.compare_digest(sig, want) for sig in parts.get("v1", [])):
            raise SignatureMismatch("Stripe-Signature does not match the body")
    elif config.style == "standard":
        msg_id = lower.get("webhook-id") or lower.get("svix-id") or ""
        stamp = lower.get("webhook-timestamp") or lower.get("svix-timestamp") or ""
        sigs = lower.get("webhook-signature") or lower.get("svix-signature") or ""
        _check_timestamp(stamp, now, config.tolerance_seconds)
        digest = hmac.new(_standard_key(config.secret), f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256)
        want = base64.b64encode(digest.digest()).decode()
        found = [s.partition(",")[2] for s in sigs.split() if s.startswith("v1,")]
        if not msg_id or not any(hmac.compare_digest(sig, want) for sig in found):
            raise SignatureMismatch("webhook-signature does not match the body")
    else:
        assert config.header is not None
        got = lower.get(config.header.lower(), "").strip()
        mac = hmac.new(secret, body, config.algorithm).digest()
        encoded = mac.hex() if config.encoding == "hex" else base64.b64encode(mac).decode()
        if not got or not hmac.compare_digest(got, config.prefix + encoded):
            raise SignatureMismatch(f"{config.header} does not match the body")


def _stripe_parts(header: str) -> dict[str, list[str]]:
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key and value:
            parts.setdefault(key, []).append(value)
    return parts


def _check_timestamp(stamp: str, now: float, tolerance: int) -> None:
    try:
        sent = int(stamp)
    except ValueError:
        raise SignatureMismatch("signature timestamp missing or not an integer") from None
    if abs(now - sent) > tolerance:
        raise SignatureMismatch(f"signature timestamp is more than {tolerance} s away from the server's time")


def _standard_key(secret: str) -> bytes:
    raw = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        raise ValidationFailed("a Standard Webhooks secret is whsec_ followed by base64") from None


@dataclasses.dataclass(frozen=True)
class Arrival:
    """A delivery as it reached the route, before the endpoint's config (verification, redaction) applies."""

    endpoint: str
    method: str
    headers: dict[str, str]  # lower-case names, repeated headers joined with ", "
    query_string: str
    content_type: str | None
    body: bytes
    received_at: str


class WebhookInbox:
    """The webhook inbox of every document (``state.webhooks``): it opens the document for each call."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    async def ingest(self, db_id: str, arrival: Arrival, *, signed_only: bool = False) -> Stored:
        """Verify and store ``arrival``; returns after COMMIT (a duplicate delivery id returns the original).

        ``signed_only``: the delivery came without a token, so only an endpoint with signature
        verification may accept it (:class:`Unauthenticated` otherwise, also when verification was
        removed since the caller checked :meth:`verifies_signatures`).
        """

        def ingest(conn: DocConnection) -> Stored:
            # Config, verification and insert in one op: a mismatch raises and nothing is stored.
            config = load_endpoint_config(conn, arrival.endpoint)
            if config.verify is not None:
                verify_signature(config.verify, arrival.headers, arrival.body)
            elif signed_only:
                raise Unauthenticated("send Authorization: Bearer <token>")
            delivery_id = delivery_id_for(config.verify, arrival.headers, arrival.body)
            delivery = Delivery(
                endpoint=arrival.endpoint,
                method=arrival.method,
                headers=redact_headers(arrival.headers, config.redact_headers),
                query_string=arrival.query_string,
                content_type=arrival.content_type,
                body=arrival.body,
                delivery_id=delivery_id,
                received_at=arrival.received_at,
                verified=config.verify.style if config.verify else None,
            )
            return store_delivery(conn, delivery)

        async with self.supervisor.open_document(db_id) as actor:
            return await actor.write(ingest)

    async def verifies_signatures(self, db_id: str, endpoint: str) -> bool:
        """True if ``endpoint`` of ``db_id`` has signature verification configured; False for a missing
        document too (never created: an anonymous delivery must not create documents)."""
        if not self.supervisor.exists(db_id):
            return False
        try:
            config = await self.config(db_id, endpoint)
        except DocumentNotFound:  # deleted since the check
            return False
        return config.verify is not None

    async def config(self, db_id: str, endpoint: str) -> EndpointConfig:
        async with self.supervisor.open_document(db_id) as actor:
            return await actor.read(lambda conn: load_endpoint_config(conn, endpoint))

    async def set_config(self, db_id: str, endpoint: str, config: EndpointConfig) -> None:
        async with self.supervisor.open_document(db_id) as actor:
            await actor.write(lambda conn: save_endpoint_config(conn, endpoint, config))

    async def delete_config(self, db_id: str, endpoint: str) -> bool:
        """Remove the endpoint's settings; False if it had none."""
        async with self.supervisor.open_document(db_id) as actor:
            return await actor.write(lambda conn: delete_endpoint_config(conn, endpoint))
