from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from support.live import LiveServer, make_settings, start_live_server

from skald.db.connection import DocConnection
from skald.leases.service import LeaseService, ManualClock, StaleFence

ACQUIRE = "/api/v1/db/locks/leases/acquire"
RENEW = "/api/v1/db/locks/leases/renew"
RELEASE = "/api/v1/db/locks/leases/release"


@pytest.fixture
def clock(server: LiveServer) -> ManualClock:
    manual = ManualClock()
    server.state.leases = LeaseService(server.state.supervisor, manual)
    return manual


async def _doc(client: httpx.AsyncClient) -> None:
    assert (await client.put("/api/v1/db/locks")).status_code == 201


async def test_acquire_renew_release_and_errors(server: LiveServer, clock: ManualClock) -> None:
    async with server.client() as client:
        await _doc(client)
        r = await client.post(ACQUIRE, json={"resource": "job/1", "owner": "w1", "ttl_seconds": 10})
        assert r.status_code == 201, r.text
        lease = r.json()
        assert lease["fence"] == 1 and lease["owner"] == "w1" and lease["lease_token"]
        held = await client.post(ACQUIRE, json={"resource": "job/1", "owner": "w2"})
        assert held.status_code == 409
        assert held.headers["content-type"] == "application/problem+json"
        assert held.json()["code"] == "lease_held"
        assert held.json()["holder"] == "w1" and held.json()["expires_at"] == lease["expires_at"]
        wrong = await client.post(RENEW, json={"resource": "job/1", "lease_token": "1.nope"})
        assert wrong.status_code == 403 and wrong.json()["code"] == "lease_token_mismatch"
        clock.advance(9)
        renewed = await client.post(RENEW, json={"resource": "job/1", "lease_token": lease["lease_token"]})
        assert renewed.status_code == 200
        assert renewed.json()["fence"] == 1 and renewed.json()["expires_at"] > lease["expires_at"]
        clock.advance(9)  # 18 s after acquiring: alive only thanks to the renewal
        assert (await client.post(ACQUIRE, json={"resource": "job/1", "owner": "w2"})).status_code == 409
        clock.advance(2)
        expired = await client.post(RENEW, json={"resource": "job/1", "lease_token": lease["lease_token"]})
        assert expired.status_code == 409 and expired.json()["code"] == "lease_expired"
        taken = (await client.post(ACQUIRE, json={"resource": "job/1", "owner": "w2"})).json()
        assert taken["fence"] == 2
        late = await client.post(RELEASE, json={"resource": "job/1", "lease_token": lease["lease_token"]})
        assert late.status_code == 409 and late.json()["code"] == "lease_expired"
        done = await client.post(RELEASE, json={"resource": "job/1", "lease_token": taken["lease_token"]})
        assert done.status_code == 200 and done.json()["released"] is True
        again = await client.post(ACQUIRE, json={"resource": "job/1", "owner": "w1"})
        assert again.json()["fence"] == 3  # the fence counter survives release
        for bad in [
            {"resource": "r", "owner": "o", "ttl_seconds": 0},
            {"resource": "r", "owner": "o", "ttl_seconds": 3601},
            {"resource": "", "owner": "o"},
            {"resource": "r"},
            {"resource": "r", "owner": "o", "ttl_seconds": "5"},
        ]:
            r = await client.post(ACQUIRE, json=bad)
            assert r.status_code == 400 and r.json()["code"] == "validation_failed", bad


async def test_scope_limits_lease_resources(server: LiveServer, clock: ManualClock) -> None:
    token = await server.mint_token("locks:lease.acquire:jobs/")
    async with server.client() as admin, server.client(token) as client:
        await _doc(admin)
        ok = await client.post(ACQUIRE, json={"resource": "jobs/a", "owner": "w"})
        assert ok.status_code == 201
        denied = await client.post(ACQUIRE, json={"resource": "other", "owner": "w"})
        assert denied.status_code == 403
        no_body = await client.post(RELEASE, content=b"")
        assert no_body.status_code == 403 and no_body.json()["code"] == "scope_denied"
        no_renew = await client.post(
            RENEW, json={"resource": "jobs/a", "lease_token": ok.json()["lease_token"]}
        )
        assert no_renew.status_code == 403 and no_renew.json()["code"] == "scope_denied"


async def test_fifty_concurrent_acquirers_one_winner_per_window(
    server: LiveServer, clock: ManualClock
) -> None:
    async with server.client() as client:
        await _doc(client)
        fences: list[int] = []
        for _window in range(3):
            results: list[httpx.Response] = []

            async def contend(i: int, results: list[httpx.Response] = results) -> None:
                results.append(
                    await client.post(
                        ACQUIRE, json={"resource": "leader", "owner": f"w{i}", "ttl_seconds": 5}
                    )
                )

            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(contend, i)
            winners = [r for r in results if r.status_code == 201]
            assert len(winners) == 1
            assert sorted({r.status_code for r in results}) == [201, 409]
            holder = winners[0].json()["owner"]
            assert all(r.json()["holder"] == holder for r in results if r.status_code == 409)
            fences.append(winners[0].json()["fence"])
            clock.advance(5)  # the window closes: the lease expires exactly now
        assert fences == [1, 2, 3]


async def test_fences_strictly_increase_over_200_expiring_acquisitions(
    server: LiveServer, clock: ManualClock
) -> None:
    async with server.client() as client:
        await _doc(client)
        fences = []
        for i in range(200):
            r = await client.post(
                ACQUIRE, json={"resource": "cron", "owner": f"w{i % 7}", "ttl_seconds": 1 + i % 5}
            )
            assert r.status_code == 201, r.text
            fences.append(r.json()["fence"])
            clock.advance(i % 5)  # still held: a competitor is refused
            assert (await client.post(ACQUIRE, json={"resource": "cron", "owner": "x"})).status_code == 409
            clock.advance(1)
        assert fences == list(range(1, 201))


async def test_fence_survives_restart(nursery: trio.Nursery, data_dir: Path) -> None:
    live = await start_live_server(nursery, make_settings(data_dir))
    async with live.client() as client:
        await _doc(client)
        first = (await client.post(ACQUIRE, json={"resource": "r", "owner": "a", "ttl_seconds": 1})).json()
        await client.post(RELEASE, json={"resource": "r", "lease_token": first["lease_token"]})
    await live.stop()
    live = await start_live_server(nursery, make_settings(data_dir))
    try:
        async with live.client() as client:
            second = await client.post(ACQUIRE, json={"resource": "r", "owner": "b", "ttl_seconds": 1})
            assert second.status_code == 201
            assert second.json()["fence"] == first["fence"] + 1
            stale = await client.post(RENEW, json={"resource": "r", "lease_token": first["lease_token"]})
            assert stale.status_code == 409 and stale.json()["code"] == "lease_expired"
    finally:
        await live.stop()


async def test_unexpired_lease_holds_document_open(server: LiveServer, clock: ManualClock) -> None:
    async with server.client() as client:
        await _doc(client)
        await client.post(ACQUIRE, json={"resource": "r", "owner": "a", "ttl_seconds": 3600})
    actor = server.state.supervisor.open_actors["locks"]
    assert actor.keep_alive_deadline >= trio.current_time() + 3500
    assert actor.idle_for(trio.current_time() + 3500) == 0.0


async def test_stale_fence_write_refused_while_current_fence_write_succeeds(
    server: LiveServer, clock: ManualClock
) -> None:
    service: LeaseService = server.state.leases
    async with server.client() as client:
        await _doc(client)
        old = (await client.post(ACQUIRE, json={"resource": "acct", "owner": "a", "ttl_seconds": 5})).json()
        clock.advance(5)  # a's lease expires (a paused, say) and b takes over
        new = (await client.post(ACQUIRE, json={"resource": "acct", "owner": "b", "ttl_seconds": 5})).json()
    assert new["fence"] == old["fence"] + 1
    async with server.state.supervisor.open_document("locks") as actor:
        await actor.write(lambda conn: conn.execute("CREATE TABLE ledger (writer TEXT)"))
        outcomes: dict[str, Any] = {}

        def guarded(writer: str, fence: int) -> Callable[[DocConnection], None]:
            def op(conn: DocConnection) -> None:
                service.check_fence(conn, "acct", fence)
                conn.execute("INSERT INTO ledger (writer) VALUES (?)", (writer,))

            return op

        async def write(writer: str, fence: int) -> None:
            try:
                await actor.write(guarded(writer, fence))
                outcomes[writer] = "ok"
            except StaleFence as exc:
                outcomes[writer] = exc

        commits_before = actor.commits
        async with trio.open_nursery() as nursery:  # both queued before the writer runs: one group commit
            nursery.start_soon(write, "a", old["fence"])
            nursery.start_soon(write, "b", new["fence"])
        rows = await actor.read(lambda conn: conn.execute("SELECT writer FROM ledger").fetchall())
        assert actor.commits == commits_before + 1
        assert outcomes["b"] == "ok"
        assert isinstance(outcomes["a"], StaleFence)
        assert outcomes["a"].status == 409 and outcomes["a"].code == "stale_fence"
        assert outcomes["a"].extra["current_fence"] == new["fence"]
        assert rows == [("b",)]
        clock.advance(5)  # once b's lease expires, even its fence no longer writes
        with pytest.raises(StaleFence):
            await actor.write(guarded("b", new["fence"]))
