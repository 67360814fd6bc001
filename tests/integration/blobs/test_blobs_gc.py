"""GC: unreferenced objects past the grace go; referenced or recent ones stay; claims racing GC win."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import httpx
from support.live import LiveServer

from skald.blobs.gc import GarbageCollector
from skald.blobs.objectstore import ObjectStore, blob_key
from skald.db.background import JobQueue, JobWorker

GRACE = 100.0


class Clock:
    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def stored_blob(live: LiveServer, client: httpx.AsyncClient, data: bytes, db: str = "media") -> str:
    h = sha(data)
    r = await client.post(f"/api/v1/db/{db}/blobs/init-upload", json={"sha256": h, "size": len(data)})
    assert r.status_code == 200
    await ObjectStore(live.settings).put_bytes(blob_key(h), data)
    assert (
        await client.post(f"/api/v1/db/{db}/blobs/complete-upload", json={"sha256": h})
    ).status_code == 200
    return h


def collector(live: LiveServer, clock: Clock) -> GarbageCollector:
    return GarbageCollector(live.state.supervisor, ObjectStore(live.settings), GRACE, clock)


async def exists(live: LiveServer, h: str) -> bool:
    return await ObjectStore(live.settings).head(blob_key(h)) is not None


async def claim(client: httpx.AsyncClient, h: str, ref: str, db: str = "media") -> httpx.Response:
    return await client.post(f"/api/v1/db/{db}/blobs/claim", json={"sha256": h, "ref": ref})


async def test_unreferenced_past_grace_removed_referenced_and_recent_kept(blob_server: LiveServer) -> None:
    async with blob_server.client() as client:
        orphan = await stored_blob(blob_server, client, b"nobody wants me")
        kept = await stored_blob(blob_server, client, b"referenced")
        released = await stored_blob(blob_server, client, b"released later")
        assert (await claim(client, kept, "a")).status_code == 200
        assert (await claim(client, released, "b")).status_code == 200
        r = await client.post("/api/v1/db/media/blobs/release", json={"sha256": released, "ref": "b"})
        assert r.json()["released"] is True

        # Within the grace period nothing goes, referenced or not.
        assert await collector(blob_server, Clock(GRACE / 2)).run() == []
        assert await exists(blob_server, orphan) and await exists(blob_server, released)

        deleted = await collector(blob_server, Clock(GRACE + 10)).run()
        assert sorted(deleted) == sorted([orphan, released])
        assert not await exists(blob_server, orphan) and not await exists(blob_server, released)
        assert await exists(blob_server, kept)
        assert (await client.get(f"/api/v1/db/media/blobs/{kept}/read-url")).status_code == 200
        r = await client.get(f"/api/v1/db/media/blobs/{orphan}/read-url")
        assert r.status_code == 404
        # A deleted object must be uploaded again before anyone can claim it.
        assert (await claim(client, orphan, "late")).status_code == 404


async def test_claim_between_mark_and_sweep_keeps_the_object(blob_server: LiveServer) -> None:
    async with blob_server.client() as client:
        raced = await stored_blob(blob_server, client, b"claimed during gc")
        control = await stored_blob(blob_server, client, b"not claimed")
        gc = collector(blob_server, Clock(GRACE + 10))
        mark = await gc.mark()
        assert set(mark.marked) == {raced, control}
        # The claim lands after the union of references was read and the marks were set.
        assert (await claim(client, raced, "posts/7")).status_code == 200
        deleted = await gc.sweep(mark)
        assert deleted == [control]
        assert await exists(blob_server, raced) and not await exists(blob_server, control)
        listed = (await client.get("/api/v1/db/media/blobs")).json()["blobs"]
        assert [b["sha256"] for b in listed] == [raced]
        # The next run still sees the fresh claim and keeps it.
        assert await collector(blob_server, Clock(GRACE + 20)).run() == []
        assert await exists(blob_server, raced)


async def test_claim_after_sweep_is_refused_not_left_dangling(blob_server: LiveServer) -> None:
    async with blob_server.client() as client:
        h = await stored_blob(blob_server, client, b"swept first")
        assert await collector(blob_server, Clock(GRACE + 10)).run() == [h]
        r = await claim(client, h, "too-late")
        assert r.status_code == 404 and r.json()["code"] == "blob_not_found"
        assert (await client.get("/api/v1/db/media/blobs")).json()["blobs"] == []


async def test_references_in_closed_documents_are_read_without_opening_them(blob_server: LiveServer) -> None:
    supervisor = blob_server.state.supervisor
    async with blob_server.client() as client:
        assert (await client.put("/api/v1/db/archive")).status_code == 201
        h = await stored_blob(blob_server, client, b"archived")
        assert (await claim(client, h, "old", db="archive")).status_code == 200
    actor = supervisor.open_actors["archive"]
    actor.stop("idle")
    await actor.stopped.wait()
    assert "archive" not in supervisor.open_actors
    assert await collector(blob_server, Clock(GRACE * 10)).run() == []
    assert await exists(blob_server, h)
    assert "archive" not in supervisor.open_actors  # GC read the file, it did not wake the document


async def test_objects_without_a_row_are_removed_after_grace(blob_server: LiveServer) -> None:
    store = ObjectStore(blob_server.settings)
    stray = sha(b"stray")
    await store.put_bytes(blob_key(stray), b"stray")
    assert await collector(blob_server, Clock(0)).run() == []
    assert await collector(blob_server, Clock(GRACE + 10)).run() == [stray]
    assert await store.head(blob_key(stray)) is None


async def test_gc_runs_as_a_job(blob_server: LiveServer) -> None:
    async with blob_server.client() as client:
        h = await stored_blob(blob_server, client, b"job collected")
    gc = collector(blob_server, Clock(GRACE + 10))
    queue = JobQueue(lambda: blob_server.state.supervisor.service)
    worker = JobWorker(queue)
    results: list[list[str]] = []

    async def handler(payload: dict[str, Any]) -> None:
        results.append(await gc.run(payload))

    worker.register("test.blob.gc", handler)
    job_id = await queue.enqueue("test.blob.gc")
    assert await worker.run_once()
    job = await queue.get(job_id)
    assert job is not None and job.status == "completed"
    assert results == [[h]] and not await exists(blob_server, h)
