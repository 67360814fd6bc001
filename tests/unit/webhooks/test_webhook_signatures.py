from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest

from skald.errors import ValidationFailed
from skald.leases.service import LeaseClock
from skald.webhooks.service import (
    SignatureMismatch,
    VerifyConfig,
    delivery_id_from,
    parse_endpoint_config,
    redact_headers,
    verify_signature,
)

BODY = b'{"id": "evt_123", "type": "charge.succeeded"}'
NOW = 1_700_000_000


def config(**verify: object) -> VerifyConfig:
    parsed = parse_endpoint_config({"verify": verify}).verify
    assert parsed is not None
    return parsed


def test_stripe_signature() -> None:
    cfg = config(style="stripe", secret="whsec_stripe")
    sig = hmac.new(b"whsec_stripe", f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    verify_signature(cfg, {"Stripe-Signature": f"t={NOW},v1=deadbeef,v1={sig}"}, BODY, now=NOW + 10)
    with pytest.raises(SignatureMismatch):
        verify_signature(cfg, {"Stripe-Signature": f"t={NOW},v1={sig}"}, BODY + b" ", now=NOW)
    with pytest.raises(SignatureMismatch, match="timestamp"):
        verify_signature(cfg, {"Stripe-Signature": f"t={NOW},v1={sig}"}, BODY, now=NOW + 301)


def test_standard_webhooks_signature() -> None:
    key = b"0123456789abcdef0123456789abcdef"
    cfg = config(style="standard", secret="whsec_" + base64.b64encode(key).decode())
    digest = hmac.new(key, f"msg_1.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(NOW),
        "webhook-signature": "v1,AAAA v1," + base64.b64encode(digest).decode(),
    }
    verify_signature(cfg, headers, BODY, now=NOW)
    with pytest.raises(SignatureMismatch):
        verify_signature(cfg, {**headers, "webhook-id": "msg_2"}, BODY, now=NOW)
    with pytest.raises(ValidationFailed):
        parse_endpoint_config({"verify": {"style": "standard", "secret": "whsec_!!not base64"}})


def test_generic_hmac_sha1_base64_with_prefix() -> None:
    cfg = config(
        style="hmac", secret="s", header="X-Sig", algorithm="sha1", encoding="base64", prefix="sha1="
    )
    good = "sha1=" + base64.b64encode(hmac.new(b"s", BODY, "sha1").digest()).decode()
    verify_signature(cfg, {"x-sig": good}, BODY)
    with pytest.raises(SignatureMismatch):
        verify_signature(cfg, {"x-sig": good.upper()}, BODY)
    with pytest.raises(ValidationFailed):
        parse_endpoint_config({"verify": {"style": "hmac", "secret": "s"}})  # header required


def test_delivery_ids_from_providers() -> None:
    assert delivery_id_from({"X-GitHub-Delivery": "gh-1", "X-Request-Id": "r"}, b"") == "gh-1"
    assert delivery_id_from({"svix-id": "msg_9"}, b"") == "msg_9"
    assert delivery_id_from({"Stripe-Signature": "t=1,v1=ab"}, BODY) == "evt_123"
    assert delivery_id_from({"Stripe-Signature": "t=1,v1=ab"}, b"not json") == "stripe:1:ab"
    generated = delivery_id_from({}, b"")
    assert generated.startswith("gen-") and generated != delivery_id_from({}, b"")


def test_redaction_is_case_insensitive() -> None:
    out = redact_headers({"AUTHORIZATION": "Bearer x", "X-Token": "t", "X-Other": "o"}, ("x-token",))
    assert out == {"authorization": "[redacted]", "x-token": "[redacted]", "x-other": "o"}


def test_lease_clock_ignores_wall_clock_jumps(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = LeaseClock()
    before = clock.now_ms()
    monkeypatch.setattr(time, "time", lambda: 0.0)  # the wall clock jumps back to 1970
    after = clock.now_ms()
    assert before <= after < before + 86_400_000  # neither back to 1970 nor anywhere else
    clock.advance_to_at_least(before + 3_600_000)  # a lease on disk is newer than our start
    assert clock.now_ms() >= before + 3_600_000
