"""The document stream API (``/api/v1/db/{db}/streams/…``) and the ``/u/`` relay pass the same rate limit
and denial audit as every other authenticated route (issue 15.7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from support.live import LiveServer, make_settings, start_live_server

from skald.auth.tokens import find_by_secret, revoke_token

STREAM = "/api/v1/db/{db}/streams/queue/jobs/next"


async def _limited_server(data_dir: Path, nursery: trio.Nursery) -> LiveServer:
    return await start_live_server(nursery, make_settings(data_dir, rate_limit_per_second=0.01, rate_limit_burst=3))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_an_ip_throttled_elsewhere_cannot_keep_guessing_tokens_on_the_stream_api(
    data_dir: Path, nursery: trio.Nursery
) -> None:
    server = await _limited_server(data_dir, nursery)
    async with server.client(None) as anon:
        guesses = [(await anon.get("/api/v1/db", headers=_bearer(f"skd_guess{i}"))).status_code for i in range(3)]
        assert guesses == [401, 401, 401]
        there = await anon.get(STREAM.format(db="s"), headers=_bearer("skd_guess_stream"))
        assert there.status_code == 429
        assert there.headers["content-type"] == "application/problem+json"
        assert there.json()["code"] == "rate_limited"
        assert int(there.headers["retry-after"]) >= 1
        # the relay takes a bare "Authorization: <token>" too: that is a guess all the same
        bare = await anon.get("/u/alice/x", headers={"Authorization": "not-a-prefixed-token"})
        assert bare.status_code == 429 and bare.headers["content-type"].startswith("text/plain")
        assert bare.text.startswith("too many requests") and int(bare.headers["retry-after"]) >= 1


async def test_guesses_on_the_stream_api_spend_the_ips_budget(data_dir: Path, nursery: trio.Nursery) -> None:
    server = await _limited_server(data_dir, nursery)
    async with server.client(None) as anon:
        guesses = [(await anon.get(STREAM.format(db="s"), headers=_bearer(f"skd_g{i}"))).status_code
                   for i in range(3)]
        assert guesses == [401, 401, 401]
        assert (await anon.get("/api/v1/db", headers=_bearer("skd_next_guess"))).status_code == 429
        # and on the /u/ relay routes too
        assert (await anon.get("/u/alice/x", headers=_bearer("skd_relay_guess"))).status_code == 429


async def test_a_tokens_stream_requests_spend_its_bucket(data_dir: Path, nursery: trio.Nursery) -> None:
    server = await _limited_server(data_dir, nursery)
    token = await server.mint_token("*:stream.read")
    async with server.client(token) as client:
        # a document that does not exist answers at once, after the token was checked and charged
        statuses = [(await client.get(STREAM.format(db="missing"))).status_code for _ in range(4)]
    assert statuses == [404, 404, 404, 429]


async def _denials(server: LiveServer) -> list[dict[str, Any]]:
    async with server.client() as admin:
        r = await admin.get("/api/v1/admin/audit", params={"event": "access.denied", "limit": 100})
        assert r.status_code == 200
        events: list[dict[str, Any]] = r.json()["events"]
        return events


async def _token_id(server: LiveServer, secret: str) -> str:
    record = await server.state.supervisor.service.read(lambda conn: find_by_secret(conn, secret))
    assert record is not None
    return record.id


async def test_stream_api_denials_are_audited(server: LiveServer) -> None:
    wrong_db = await server.mint_token("other:stream.read")
    revoked = await server.mint_token("s:stream.read")
    revoked_id, wrong_db_id = await _token_id(server, revoked), await _token_id(server, wrong_db)
    await server.state.supervisor.service.write(lambda conn: revoke_token(conn, revoked_id))
    async with server.client() as admin:
        assert (await admin.put("/api/v1/db/s")).status_code in (200, 201)
    async with server.client(wrong_db) as stranger, server.client(revoked) as gone:
        r = await stranger.get(STREAM.format(db="s"))
        assert r.status_code == 403 and r.json()["code"] == "scope_denied"
        r = await gone.get(STREAM.format(db="s"))
        assert r.status_code == 401
        r = await stranger.get("/u/s/x")  # the legacy user namespace checks the same scopes
        assert r.status_code == 403
    denials = await _denials(server)
    seen = sorted((event["subject"], event["detail"]["path"]) for event in denials)
    assert seen == sorted([(wrong_db_id, STREAM.format(db="s")), (revoked_id, STREAM.format(db="s")),
                           (wrong_db_id, "/u/s/x")])
    assert all(event["ip"] == "127.0.0.1" for event in denials)
