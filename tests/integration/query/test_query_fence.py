"""Writes through /query guarded by a lease fence: only the current fence writes."""

from __future__ import annotations

import trio
from support.live import LiveServer


async def test_stale_fence_refused_current_fence_writes(server: LiveServer) -> None:
    async with server.client() as c:
        await c.put("/api/v1/db/f")
        await c.post("/api/v1/db/f/query", json={"sql": "CREATE TABLE w (who TEXT)"})
        first = (await c.post("/api/v1/db/f/leases/acquire", json={"resource": "job", "owner": "a"})).json()
        await c.post("/api/v1/db/f/leases/release", json={"resource": "job", "lease_token": first["lease_token"]})
        second = (await c.post("/api/v1/db/f/leases/acquire", json={"resource": "job", "owner": "b"})).json()
        assert second["fence"] > first["fence"]

        results: dict[str, int] = {}

        async def write(who: str, fence: int) -> None:
            body = {"sql": "INSERT INTO w VALUES (?)", "args": [who], "fence": {"resource": "job", "token": fence}}
            r = await c.post("/api/v1/db/f/query", json=body)
            results[who] = r.status_code
            if who == "a":
                assert r.json()["code"] == "stale_fence"

        async with trio.open_nursery() as nursery:  # both in the same instant
            nursery.start_soon(write, "a", first["fence"])
            nursery.start_soon(write, "b", second["fence"])
        assert results == {"a": 409, "b": 200}

        batch = {
            "statements": [{"sql": "INSERT INTO w VALUES ('a2')"}],
            "fence": {"resource": "job", "token": first["fence"]},
        }
        r = await c.post("/api/v1/db/f/query/batch", json=batch)
        assert r.status_code == 409 and r.json()["code"] == "stale_fence"
        rows = (await c.post("/api/v1/db/f/query", json={"sql": "SELECT who FROM w"})).json()["rows"]
        assert rows == [["b"]]
