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
        # guessing tokens has a per-IP budget of its own: anonymous requests do not spend it, nor it theirs
        guesses = [
            (await anon.get("/api/v1/db", headers={**first, "Authorization": f"Bearer skd_guess{i}"})).status_code
            for i in range(4)
        ]
        assert guesses == [401, 401, 401, 429]
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


async def test_anonymous_and_failed_requests_do_not_spend_an_authenticated_tokens_budget(
    data_dir: Path, nursery: trio.Nursery
) -> None:
    # Issue 15.7: anonymous callers at ~130/s from one IP made the admin at that IP get 429 half the time.
    settings = make_settings(data_dir, rate_limit_per_second=0.01, rate_limit_burst=3)
    server = await start_live_server(nursery, settings)
    user_token = await server.mint_token("*:db.admin")
    async with server.client(None) as anon, server.client() as admin, server.client(user_token) as user:
        assert (await admin.get("/api/v1/db")).status_code == 200
        assert (await user.get("/api/v1/db")).status_code == 200
        flood = [(await anon.get("/api/v1/db")).status_code for _ in range(6)]
        assert flood == [401, 401, 401, 429, 429, 429]
        # The admin and the user at the same address keep their own budgets whole.
        assert [(await admin.get("/api/v1/db")).status_code for _ in range(4)] == [200] * 4
        assert (await user.get("/api/v1/db")).status_code == 200
        guesses = [(await anon.get("/api/v1/db", headers={"Authorization": f"Bearer skd_guess{i}"})).status_code
                   for i in range(6)]
        assert guesses == [401, 401, 401, 429, 429, 429]  # guessing has a budget of its own, and it is spent
        assert [(await admin.get("/api/v1/db")).status_code for _ in range(4)] == [200] * 4
        assert [(await user.get("/api/v1/db")).status_code for _ in range(2)] == [200, 429]  # its own 3, spent
        metrics = (await anon.get("/metrics")).text
    assert 'skald_rate_limited_total{scope="token"} 1.0' in metrics
