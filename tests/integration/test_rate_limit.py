"""Rate limiting: token buckets per token and per client IP, 429 problem+json with Retry-After."""

from __future__ import annotations

from pathlib import Path

import trio
from support.live import make_settings, start_live_server


async def test_burst_beyond_bucket_is_429_and_others_unaffected(
    data_dir: Path, nursery: trio.Nursery
) -> None:
    settings = make_settings(
        data_dir, rate_limit_per_second=0.01, rate_limit_burst=3, trusted_proxies="127.0.0.1"
    )
    server = await start_live_server(nursery, settings)
    greedy = await server.mint_token("*:db.admin")
    calm = await server.mint_token("*:db.admin")
    async with server.client(greedy) as a, server.client(calm) as b:
        assert [(await a.get("/api/v1/db")).status_code for _ in range(3)] == [200, 200, 200]
        refused = await a.get("/api/v1/db")
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        # another token from the same address has its own bucket
        assert (await b.get("/api/v1/db")).status_code == 200
        # admin.token holders could mint themselves new buckets: they are not limited
        async with server.client() as admin:
            assert [(await admin.get("/api/v1/db")).status_code for _ in range(8)] == [200] * 8
        # probes are exempt
        assert [(await a.get("/healthz")).status_code for _ in range(5)] == [200] * 5

    # Anonymous callers are limited per client IP; behind a trusted proxy, per forwarded address.
    async with server.client(None) as anon:
        first = {"X-Forwarded-For": "203.0.113.7"}
        statuses = [(await anon.get("/api/v1/db", headers=first)).status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        other = await anon.get("/api/v1/db", headers={"X-Forwarded-For": "198.51.100.9"})
        assert other.status_code == 401
        # guessing tokens from the exhausted address does not get around the limit
        guess = await anon.get("/api/v1/db", headers={**first, "Authorization": "Bearer skd_guess"})
        assert guess.status_code == 429
        # anonymous requests outside the API are left to the legacy namespace's own limiter
        outside = [(await anon.get("/no-such-legacy-path", headers=first)).status_code for _ in range(3)]
        assert outside == [404] * 3
        metrics = (await anon.get("/metrics")).text
    assert 'skald_rate_limited_total{scope="token"} 1.0' in metrics  # the admin was never refused
    assert 'skald_rate_limited_total{scope="ip"} 2.0' in metrics


async def test_untrusted_peer_cannot_spoof_forwarded_for(data_dir: Path, nursery: trio.Nursery) -> None:
    settings = make_settings(data_dir, rate_limit_per_second=0.01, rate_limit_burst=2)
    server = await start_live_server(nursery, settings)
    async with server.client(None) as anon:
        statuses = []
        for i in range(3):
            r = await anon.get("/api/v1/db", headers={"X-Forwarded-For": f"192.0.2.{i}"})
            statuses.append(r.status_code)
    assert statuses == [401, 401, 429]


async def test_rate_zero_turns_the_limiter_off(data_dir: Path, nursery: trio.Nursery) -> None:
    settings = make_settings(data_dir, rate_limit_per_second=0.0, rate_limit_burst=1)
    server = await start_live_server(nursery, settings)
    async with server.client() as admin:
        assert [(await admin.get("/api/v1/db")).status_code for _ in range(5)] == [200] * 5
