"""ID token verification with locally made keys (the e2e test repeats this against a real provider)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from skald.auth.oidc import LoginFailed, verify_id_token

ISSUER = "https://idp.example"


@pytest.fixture(scope="module")
def key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256", "use": "sig"})


def make(key: RSAKey, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER, "aud": "skald", "sub": "alice", "nonce": "n", "iat": now, "exp": now + 60, **overrides
    }
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key)


def check(token: str, key: RSAKey) -> dict[str, Any]:
    # as a provider's JWKS document arrives: a plain JSON object
    jwks: dict[str, Any] = dict(KeySet([key]).as_dict(private=False))
    return verify_id_token(token, jwks, issuer=ISSUER, client_id="skald", nonce="n")


def test_valid_token(key: RSAKey) -> None:
    assert check(make(key), key)["sub"] == "alice"
    assert check(make(key, aud=["skald", "other"], azp="skald"), key)["sub"] == "alice"


@pytest.mark.parametrize(
    "overrides",
    [
        {"aud": "other"},
        {"aud": ["other", "skald"], "azp": "other"},
        {"iss": "https://evil.example"},
        {"nonce": "m"},
        {"nonce": None},
        {"exp": int(time.time()) - 3600},
        {"exp": None},
        {"sub": None},
    ],
)
def test_refused(key: RSAKey, overrides: dict[str, Any]) -> None:
    with pytest.raises(LoginFailed):
        check(make(key, **overrides), key)


def test_other_key_or_alg_none_refused(key: RSAKey) -> None:
    stranger = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    with pytest.raises(LoginFailed):
        check(make(stranger), key)
    header, payload, _ = make(key).split(".")
    with pytest.raises(LoginFailed):
        check(f"{header}.{payload}.", key)
