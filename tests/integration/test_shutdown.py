"""SIGTERM during a write burst: every acknowledged write is on disk after restart."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import trio
from support.live import ADMIN_TOKEN, SkaldProcess


async def test_sigterm_during_write_burst_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    # A short grace: requests that raced the signal on a keep-alive connection wait for it.
    proc = SkaldProcess(data_dir, env={"SKALD_GRACE_SECONDS": "2"})
    url = await proc.start()
    acknowledged: set[str] = set()
    enough = trio.Event()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def writer(worker: int, client: httpx.AsyncClient) -> None:
        for i in range(10_000):
            db_id = f"w{worker}-{i}"
            try:
                r = await client.put(f"/api/v1/db/{db_id}")
            except httpx.HTTPError:
                return
            if r.status_code in (200, 201):
                acknowledged.add(db_id)
                if len(acknowledged) >= 100:
                    enough.set()
            elif r.status_code >= 500 and r.status_code != 503:
                raise AssertionError(f"unexpected {r.status_code}: {r.text}")

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(writer, w, client)
            await enough.wait()
            proc.signal(signal.SIGTERM)
            assert await proc.wait() == 0
    await proc.stop()
    assert len(acknowledged) >= 100

    again = SkaldProcess(data_dir)
    url = await again.start()
    try:
        async with httpx.AsyncClient(base_url=url, headers=headers) as client:
            listed = {d["db_id"] for d in (await client.get("/api/v1/db")).json()["documents"]}
    finally:
        await again.stop()
    assert acknowledged <= listed
