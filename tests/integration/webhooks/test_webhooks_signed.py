"""Providers' signed deliveries need no token: each is sent exactly as its provider documents it.

Signatures are computed here from each provider's documented algorithm (and checked against the
documented test vectors where the provider publishes one), never with skald's code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import httpx
import pytest
from support.live import LiveServer

GITHUB_SECRET = "It's a Secret to Everybody"  # docs.github.com "Validating webhook deliveries"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

STRIPE_SECRET = "whsec_test_b1f1e8c0a2d54e7f9c3a"
STANDARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # standardwebhooks.com spec example


async def _configure(server: LiveServer, endpoint: str, verify: dict[str, object] | None) -> None:
    async with server.client() as admin:
        assert (await admin.put("/api/v1/db/hooks")).status_code in {200, 201}
        r = await admin.put(f"/api/v1/db/hooks/webhooks/{endpoint}/config", json={"verify": verify})
        assert r.status_code == 200, r.text


def _anonymous(server: LiveServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=30)  # no Authorization header at all


def _stripe_signature(body: bytes, stamp: int, secret: str = STRIPE_SECRET) -> str:
    # stripe.com/docs/webhooks#verify-manually: HMAC-SHA256 of "{t}.{payload}" with the endpoint secret
    v1 = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={v1},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"


def _standard_headers(msg_id: str, stamp: int, body: bytes, secret: str = STANDARD_SECRET) -> dict[str, str]:
    # Standard Webhooks spec: base64(HMAC-SHA256(base64-decoded secret, "{id}.{timestamp}.{body}"))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    sig = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": f"v1,{'A' * 43}= v1,{sig}",  # several signatures, space-delimited (key rotation)
        "content-type": "application/json",
    }


async def test_github_delivery_without_token_is_stored(server: LiveServer) -> None:
    await _configure(server, "github", {"style": "github", "secret": GITHUB_SECRET})
    headers = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-GitHub-Hook-ID": "292430182",
        "User-Agent": "GitHub-Hookshot/044aadd",
        "Content-Type": "application/json",
        "X-Hub-Signature-256": GITHUB_SIGNATURE,
    }
    async with _anonymous(server) as github:
        r = await github.post("/api/v1/db/hooks/webhooks/github", content=GITHUB_BODY, headers=headers)
        assert r.status_code == 201, r.text
        assert r.json()["delivery_id"] == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
        again = await github.post("/api/v1/db/hooks/webhooks/github", content=GITHUB_BODY, headers=headers)
        assert again.status_code == 200 and again.json()["duplicate"] is True  # GitHub's redelivery
        forged = {**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}
        bad = await github.post("/api/v1/db/hooks/webhooks/github", content=b"Hello, World?", headers=forged)
        assert bad.status_code == 401
        assert bad.headers["content-type"] == "application/problem+json"
        assert bad.json()["code"] == "webhook_signature_invalid"
    async with server.client() as admin:
        rows = (
            await admin.post(
                "/api/v1/db/hooks/query", json={"sql": "SELECT endpoint, verified, body FROM webhook_inbox ORDER BY id"}
            )
        ).json()["rows"]
    assert rows == [["github", "github", {"$base64": base64.b64encode(GITHUB_BODY).decode()}]]


async def test_stripe_delivery_without_token_with_replay_protection(server: LiveServer) -> None:
    await _configure(server, "stripe", {"style": "stripe", "secret": STRIPE_SECRET, "tolerance_seconds": 300})
    event = {"id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "object": "event", "type": "payment_intent.succeeded"}
    body = json.dumps(event).encode()
    now = int(time.time())
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    }
    async with _anonymous(server) as stripe:
        ok = await stripe.post(
            "/api/v1/db/hooks/webhooks/stripe",
            content=body,
            headers={**headers, "Stripe-Signature": _stripe_signature(body, now)},
        )
        assert ok.status_code == 201, ok.text
        assert ok.json()["delivery_id"] == "evt_1NG8Du2eZvKYlo2CUI79vXWy"
        # Stripe's retry is signed afresh (new t): the same event is a duplicate, not a second row
        retry = await stripe.post(
            "/api/v1/db/hooks/webhooks/stripe",
            content=body,
            headers={**headers, "Stripe-Signature": _stripe_signature(body, now + 1), "X-GitHub-Delivery": "fresh"},
        )
        assert retry.status_code == 200 and retry.json()["duplicate"] is True
        # a captured delivery replayed after the tolerance is refused
        old = await stripe.post(
            "/api/v1/db/hooks/webhooks/stripe",
            content=body,
            headers={**headers, "Stripe-Signature": _stripe_signature(body, now - 600)},
        )
        assert old.status_code == 401 and old.json()["code"] == "webhook_signature_invalid"
        wrong = await stripe.post(
            "/api/v1/db/hooks/webhooks/stripe",
            content=body,
            headers={**headers, "Stripe-Signature": _stripe_signature(body, now, secret="whsec_other")},
        )
        assert wrong.status_code == 401


async def test_standard_webhooks_delivery_without_token(server: LiveServer) -> None:
    await _configure(server, "svix", {"style": "standard", "secret": STANDARD_SECRET})
    body = b'{"type": "user.created", "timestamp": "2022-11-03T20:26:10.344522Z"}'
    now = int(time.time())
    headers = _standard_headers("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", now, body)
    async with _anonymous(server) as sender:
        ok = await sender.post("/api/v1/db/hooks/webhooks/svix", content=body, headers=headers)
        assert ok.status_code == 201, ok.text
        assert ok.json()["delivery_id"] == "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
        # a replay inside the tolerance, with an unsigned delivery header added, is still a duplicate
        replay = await sender.post(
            "/api/v1/db/hooks/webhooks/svix", content=body, headers={**headers, "X-GitHub-Delivery": "new-id"}
        )
        assert replay.status_code == 200 and replay.json()["duplicate"] is True
        stale = _standard_headers("msg_old", now - 3600, body)
        refused = await sender.post("/api/v1/db/hooks/webhooks/svix", content=body, headers=stale)
        assert refused.status_code == 401 and refused.json()["code"] == "webhook_signature_invalid"


async def test_standard_webhooks_documented_vector(server: LiveServer) -> None:
    """The spec's example delivery (2021 timestamp: accepted here only with a tolerance that covers it)."""
    await _configure(server, "vector", {"style": "standard", "secret": STANDARD_SECRET, "tolerance_seconds": 10**10})
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    async with _anonymous(server) as sender:
        r = await sender.post("/api/v1/db/hooks/webhooks/vector", content=b'{"test": 2432232314}', headers=headers)
    assert r.status_code == 201, r.text


async def test_generic_hmac_without_token(server: LiveServer) -> None:
    secret = "shopify-shared-secret"
    await _configure(
        server, "shop", {"style": "hmac", "secret": secret, "header": "X-Shopify-Hmac-Sha256", "encoding": "base64"}
    )
    body = b'{"id": 820982911946154508}'
    sig = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    async with _anonymous(server) as shop:
        r = await shop.post(
            "/api/v1/db/hooks/webhooks/shop",
            content=body,
            headers={
                "X-Shopify-Hmac-Sha256": sig,
                "X-Shopify-Webhook-Id": "b54557e4",
                "Content-Type": "application/json",
            },
        )
        assert r.status_code == 201, r.text
        bad = await shop.post("/api/v1/db/hooks/webhooks/shop", content=body, headers={"X-Shopify-Hmac-Sha256": "x"})
        assert bad.status_code == 401


@pytest.mark.parametrize("document_exists", [True, False])
async def test_without_verification_a_token_is_still_needed(server: LiveServer, document_exists: bool) -> None:
    if document_exists:
        await _configure(server, "plain", None)
    async with _anonymous(server) as anyone:
        r = await anyone.post(
            "/api/v1/db/hooks/webhooks/plain", content=GITHUB_BODY, headers={"X-Hub-Signature-256": GITHUB_SIGNATURE}
        )
    # the same answer whether or not the document exists: nothing learnt without a token
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["code"] == "unauthenticated"
    ingest = await server.mint_token("hooks:webhook.ingest:plain")
    if document_exists:
        async with server.client(ingest) as client:
            assert (await client.post("/api/v1/db/hooks/webhooks/plain", content=b"x")).status_code == 201
    reader = await server.mint_token("hooks:query.read")
    async with server.client(reader) as client:  # a token without webhook.ingest: 403 even when signed
        await _configure(server, "github", {"style": "github", "secret": GITHUB_SECRET})
        r = await client.post(
            "/api/v1/db/hooks/webhooks/github", content=GITHUB_BODY, headers={"X-Hub-Signature-256": GITHUB_SIGNATURE}
        )
        assert r.status_code == 403


async def test_an_anonymous_delivery_creates_no_document(server: LiveServer) -> None:
    async with _anonymous(server) as anyone:
        r = await anyone.post(
            "/api/v1/db/nothere/webhooks/github", content=GITHUB_BODY, headers={"X-Hub-Signature-256": GITHUB_SIGNATURE}
        )
    assert r.status_code == 401
    assert not server.state.supervisor.exists("nothere")
