"""OpenID Connect relying party: discovery, authorization code + PKCE, ID token verification.

The provider is found by discovery from ``settings.oidc_issuer``. HTTP goes
through authlib's :class:`AsyncOAuth2Client` (httpx, which runs under trio);
ID tokens are verified with joserfc: signature against the provider's JWKS,
then ``iss``, ``aud``, ``exp`` and ``nonce``. Nothing here is hand-rolled JOSE.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import httpx
from authlib.common.errors import AuthlibBaseError
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from skald.config import Settings
from skald.errors import NotFound, SkaldError

with warnings.catch_warnings():
    # authlib.deprecate installs an "always" filter when imported: import it first so ours wins.
    import authlib.deprecate  # noqa: F401

    # authlib 1.9 announces its httpx integration moves to httpx2; the API we use is unchanged.
    warnings.simplefilter("ignore", DeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client

REQUESTED_SCOPE = "openid email profile"
ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]
HTTP_TIMEOUT = 10.0


class OidcNotConfigured(NotFound):
    code = "oidc_not_configured"
    title = "OIDC login is not configured on this server"


class LoginFailed(SkaldError):
    status = 400
    code = "login_failed"
    title = "Login failed"


class ProviderUnavailable(SkaldError):
    status = 502
    code = "oidc_provider_unavailable"
    title = "The identity provider could not be reached"


@dataclasses.dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    # RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0); None when not advertised.
    end_session_endpoint: str | None = None


@dataclasses.dataclass(frozen=True)
class Identity:
    owner: str
    subject: str
    name: str
    is_admin: bool
    claims: dict[str, Any]


def configured(settings: Settings) -> bool:
    return bool(settings.oidc_issuer and settings.oidc_client_id)


async def _get_json(url: str) -> dict[str, Any]:
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            response = await client.get(url)
            response.raise_for_status()
            body: dict[str, Any] = response.json()
            return body
    except (httpx.HTTPError, ValueError) as exc:
        raise ProviderUnavailable(f"{url}: {exc}") from None


class OidcClient:
    """One relying party for the current settings; metadata is discovered once and kept."""

    def __init__(self, settings: Settings) -> None:
        if not configured(settings):
            raise OidcNotConfigured("set SKALD_OIDC_ISSUER and SKALD_OIDC_CLIENT_ID to enable login")
        self.settings = settings
        self.issuer = str(settings.oidc_issuer).rstrip("/")
        self.client_id = str(settings.oidc_client_id)
        self._metadata: ProviderMetadata | None = None

    async def metadata(self) -> ProviderMetadata:
        if self._metadata is None:
            doc = await _get_json(self.issuer + "/.well-known/openid-configuration")
            try:
                self._metadata = ProviderMetadata(
                    issuer=doc["issuer"],
                    authorization_endpoint=doc["authorization_endpoint"],
                    token_endpoint=doc["token_endpoint"],
                    jwks_uri=doc["jwks_uri"],
                    userinfo_endpoint=doc.get("userinfo_endpoint"),
                    end_session_endpoint=doc.get("end_session_endpoint"),
                )
            except KeyError as exc:
                raise ProviderUnavailable(f"discovery document lacks {exc.args[0]}") from None
        return self._metadata

    def _client(self, redirect_uri: str) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.client_id,
            client_secret=self.settings.oidc_client_secret,
            scope=REQUESTED_SCOPE,
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            timeout=HTTP_TIMEOUT,
        )

    async def authorization_url(
        self, redirect_uri: str, *, state: str, nonce: str, code_verifier: str
    ) -> str:
        meta = await self.metadata()
        async with self._client(redirect_uri) as client:
            url, _ = client.create_authorization_url(
                meta.authorization_endpoint, state=state, nonce=nonce, code_verifier=code_verifier
            )
        return str(url)

    async def complete(self, redirect_uri: str, *, code: str, code_verifier: str, nonce: str) -> Identity:
        """Exchange ``code`` (with the PKCE verifier), verify the ID token, map claims to an identity."""
        meta = await self.metadata()
        async with self._client(redirect_uri) as client:
            try:
                token = await client.fetch_token(
                    meta.token_endpoint, code=code, code_verifier=code_verifier,
                    grant_type="authorization_code",
                )
            except httpx.HTTPError as exc:
                raise ProviderUnavailable(f"token endpoint: {exc}") from None
            except AuthlibBaseError as exc:  # the provider refused (invalid_grant for a used code, ...)
                raise LoginFailed(f"the provider refused the code: {exc}") from None
            id_token = token.get("id_token")
            if not id_token:
                raise LoginFailed("the provider returned no ID token")
            jwks = await _get_json(meta.jwks_uri)
            claims = verify_id_token(
                id_token, jwks, issuer=meta.issuer, client_id=self.client_id, nonce=nonce
            )
            owner_claim = self.settings.oidc_owner_claim
            if owner_claim not in claims and meta.userinfo_endpoint:
                response = await client.get(meta.userinfo_endpoint)
                if response.status_code == 200:
                    info = response.json()
                    if info.get("sub") == claims.get("sub"):
                        claims = {**info, **claims}
        owner = claims.get(owner_claim)
        if not isinstance(owner, str) or not owner:
            raise LoginFailed(f"the ID token has no {owner_claim!r} claim to name the owner")
        return Identity(
            owner=owner,
            subject=str(claims["sub"]),
            name=str(claims.get("name") or owner),
            is_admin=_truthy(claims.get(self.settings.oidc_admin_claim)),
            claims=claims,
        )


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in {"1", "true", "yes"}
    return bool(value)


def verify_id_token(
    id_token: str, jwks: dict[str, Any], *, issuer: str, client_id: str, nonce: str, leeway: int = 30
) -> dict[str, Any]:
    """Verify signature (JWKS), ``iss``, ``aud``, ``exp`` and ``nonce``; return the claims.

    Raises :class:`LoginFailed` with the reason for any mismatch.
    """
    try:
        keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        token = jwt.decode(id_token, keys, algorithms=ID_TOKEN_ALGORITHMS)
        registry = jwt.JWTClaimsRegistry(
            leeway=leeway,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": client_id},
            exp={"essential": True},
            sub={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        registry.validate(token.claims)
    except (JoseError, ValueError) as exc:
        raise LoginFailed(f"ID token rejected: {exc}") from None
    claims = dict(token.claims)
    audience = claims.get("aud")
    if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != client_id:
        raise LoginFailed("ID token rejected: azp does not name this client")
    return claims
