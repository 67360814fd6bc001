"""Lease renewal racing acquisitions at the moment of expiry: never two holders.

A manual lease clock stands a few milliseconds before, at, or after the holder's expiry;
at that instant the holder renews and writes under its fence while contenders acquire and
write under theirs, all concurrently (so their ops share group commits), and stale holders
from earlier rounds keep trying. The outcome is decided by the clock alone and checked
exactly; the table every fenced write lands in must show one holder at a time.
"""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest
import trio
from support.live import LiveServer

from skald.leases.service import LeaseService, ManualClock

DB = "/api/v1/db/locks"
RESOURCE = "leader"
TTL = 2.0


@pytest.fixture
def clock(server: LiveServer) -> ManualClock:
    manual = ManualClock()
    server.state.leases = LeaseService(server.state.supervisor, manual)
    return manual


async def _fenced_write(client: httpx.AsyncClient, owner: str, fence: int) -> httpx.Response:
    body = {
        "sql": "INSERT INTO work (owner, fence) VALUES (?, ?)",
        "args": [owner, fence],
        "fence": {"resource": RESOURCE, "token": fence},
    }
    return await client.post(f"{DB}/query", json=body)


async def _race(
    c: httpx.AsyncClient,
    round_no: int,
    holder: dict[str, Any],
    stale: list[dict[str, Any]],
    accepted: list[tuple[str, int]],
) -> tuple[httpx.Response, list[dict[str, Any]], list[httpx.Response]]:
    """One instant: the holder renews, twelve contenders acquire, stale holders retry; all write."""
    renewals: list[httpx.Response] = []
    wins: list[dict[str, Any]] = []
    refused: list[httpx.Response] = []

    async def write(owner: str, fence: int) -> None:
        r = await _fenced_write(c, owner, fence)
        if r.status_code == 200:
            accepted.append((owner, fence))
        else:
            assert r.status_code == 409 and r.json()["code"] == "stale_fence", r.text

    async def renew() -> None:
        body = {"resource": RESOURCE, "lease_token": holder["lease_token"], "ttl_seconds": TTL}
        renewals.append(await c.post(f"{DB}/leases/renew", json=body))
        await write(holder["owner"], holder["fence"])

    async def contend(i: int) -> None:
        owner = f"r{round_no}c{i}"
        r = await c.post(f"{DB}/leases/acquire", json={"resource": RESOURCE, "owner": owner, "ttl_seconds": TTL})
        if r.status_code == 201:
            wins.append(r.json())
            await write(owner, r.json()["fence"])
        else:
            assert r.status_code == 409 and r.json()["code"] == "lease_held", r.text
            refused.append(r)

    async def old_holder(lease: dict[str, Any]) -> None:
        r = await c.post(f"{DB}/leases/renew", json={"resource": RESOURCE, "lease_token": lease["lease_token"]})
        assert r.status_code == 409 and r.json()["code"] == "lease_expired", r.text
        await write(lease["owner"], lease["fence"])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(renew)
        for i in range(12):
            nursery.start_soon(contend, i)
        for lease in stale:
            nursery.start_soon(old_holder, lease)
    (renewal,) = renewals
    return renewal, wins, refused


async def test_renewal_at_expiry_under_contention_never_two_holders(
    server: LiveServer, clock: ManualClock
) -> None:
    rng = random.Random(15)
    async with server.client(limits=httpx.Limits(max_connections=64)) as c:
        assert (await c.put(DB)).status_code == 201
        r = await c.post(f"{DB}/query", json={"sql": "CREATE TABLE work (owner TEXT, fence INTEGER)"})
        assert r.status_code == 200, r.text
        first = await c.post(f"{DB}/leases/acquire", json={"resource": RESOURCE, "owner": "w0", "ttl_seconds": TTL})
        assert first.status_code == 201
        holder: dict[str, Any] = {**first.json(), "expires_ms": clock.ms + int(TTL * 1000)}
        stale: list[dict[str, Any]] = []
        accepted: list[tuple[str, int]] = []  # fenced writes answered 200, in no particular order
        for round_no in range(1, 25):
            offset = rng.choice([-2, -1, 0, 0, 1, 2])  # ms from the holder's expiry
            clock.ms = holder["expires_ms"] + offset
            renewal, wins, refused = await _race(c, round_no, holder, stale[-3:], accepted)
            if offset < 0:  # still held: the renewal wins, every contender is refused
                assert renewal.status_code == 200, renewal.text
                assert wins == [] and len(refused) == 12
                assert renewal.json()["fence"] == holder["fence"]
                holder["expires_ms"] = clock.ms + int(TTL * 1000)
            else:  # expired at or before this instant: exactly one contender takes over
                assert renewal.status_code == 409 and renewal.json()["code"] == "lease_expired"
                assert len(wins) == 1 and len(refused) == 11
                assert wins[0]["fence"] == holder["fence"] + 1
                assert all(r.json()["holder"] == wins[0]["owner"] for r in refused)
                stale.append(holder)
                holder = {**wins[0], "expires_ms": clock.ms + int(TTL * 1000)}
        assert len(stale) >= 5  # the schedule did hand the lease over, many times
        rows = (await c.post(f"{DB}/query", json={"sql": "SELECT owner, fence FROM work ORDER BY rowid"})).json()
    written = [(owner, fence) for owner, fence in rows["rows"]]
    assert sorted(written) == sorted(accepted)  # every accepted fenced write is there, nothing else
    fences = [fence for _, fence in written]
    assert fences == sorted(fences)  # never a write under an older fence after a newer one
    owners_by_fence: dict[int, set[str]] = {}
    for owner, fence in written:
        owners_by_fence.setdefault(fence, set()).add(owner)
    assert all(len(owners) == 1 for owners in owners_by_fence.values())  # one holder per fence
