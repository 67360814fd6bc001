"""The relay reads a token from the same places, in the same order, as the JSON API and the rate limiter."""

from __future__ import annotations

import httpx
import pytest
from support.live import LiveServer

from skald.auth.guard import secret_from

# (Authorization header, whether ?token= carries the reader's token); "{t}" stands for the token
CASES = [
    ("Basic Zm9vOmJhcg==", True),  # a proxy's own credentials must not hide the ?token=
    ("Bearer {t}", False),
    ("token {t}", False),
    ("{t}", False),  # a bare skald token as the whole header (legacy clients)
    ("Bearer", True),  # a scheme without a token
    ("Bearer nope", True),  # the header wins: a wrong header token is refused, not passed over
    ("", True),
    ("", False),
]


@pytest.mark.parametrize(("header", "in_query"), CASES)
async def test_relay_authenticates_exactly_what_the_shared_parser_reads(
    server: LiveServer, header: str, in_query: bool
) -> None:
    await server.state.supervisor.create_document("alice")
    reader = await server.mint_token("alice:stream.read:/inbox")
    authorization = header.replace("{t}", reader)
    query = f"?token={reader}" if in_query else ""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        # /other is outside the token's prefix: 403 once the token is read, 401 when none is
        r = await client.get(f"/u/alice/other{query}", headers={"authorization": authorization} if header else {})
    read = secret_from(authorization, reader if in_query else None, allow_query_token=True)
    assert r.status_code == (403 if read == reader else 401)
    assert r.headers["content-type"].startswith("text/plain")
