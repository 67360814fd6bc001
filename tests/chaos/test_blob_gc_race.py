"""Blob GC racing claims and finalizes: an object a caller was told about is never swept.

The GC's mark and sweep are driven by hand around requests held at the worst moment
(a trio event parks the request inside the service), and a storm runs claims beside
whole GC runs. Whatever the interleaving, a 200 for a claim or a complete-upload means
the object is in the store and readable afterwards.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from support.live import LiveServer

from skald.blobs.gc import GarbageCollector
from skald.blobs.objectstore import ObjectStore, blob_key
from skald.blobs.service import BlobService

GRACE = 100.0
MEDIA = "/api/v1/db/media/blobs"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _collector(live: LiveServer, ahead: float) -> GarbageCollector:
    """A GC whose clock runs ``ahead`` seconds in the future: everything older than that is past grace."""
    return GarbageCollector(
        live.state.supervisor, ObjectStore(live.settings), GRACE, lambda: time.time() + ahead
    )


async def _exists(live: LiveServer, h: str) -> bool:
    return await ObjectStore(live.settings).head(blob_key(h)) is not None


async def _uploaded(live: LiveServer, client: httpx.AsyncClient, data: bytes) -> str:
    """init-upload and PUT the bytes; not completed yet."""
    h = _sha(data)
    r = await client.post(f"{MEDIA}/init-upload", json={"sha256": h, "size": len(data)})
    assert r.status_code == 200, r.text
    await ObjectStore(live.settings).put_bytes(blob_key(h), data)
    return h


def _park(
    monkeypatch: pytest.MonkeyPatch, store: ObjectStore, name: str
) -> tuple[trio.Event, trio.Event]:
    """Make ``store.<name>`` stop after doing its work until ``release`` is set; ``parked`` says it got there."""
    original: Callable[..., Awaitable[Any]] = getattr(store, name)
    parked, release = trio.Event(), trio.Event()

    async def held(*args: Any) -> Any:
        result = await original(*args)
        parked.set()
        await release.wait()
        return result

    monkeypatch.setattr(store, name, held)
    return parked, release


async def test_complete_upload_racing_a_sweep_never_reports_a_swept_object(
    blob_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The finalize window: complete-upload has hashed the stored bytes and is about to mark the
    # row complete when a GC run (its clock past the pending row's grace) marks and sweeps it.
    service: BlobService = blob_server.state.blobs
    async with blob_server.client() as client:
        h = await _uploaded(blob_server, client, b"finalized while gc runs")
        parked, release = _park(monkeypatch, service.store, "hash_object")
        answers: list[httpx.Response] = []

        async def complete() -> None:
            answers.append(await client.post(f"{MEDIA}/complete-upload", json={"sha256": h}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(complete)
            await parked.wait()
            gc = _collector(blob_server, GRACE + 10)
            mark = await gc.mark()
            assert mark.marked == (h,)
            swept = await gc.sweep(mark)
            release.set()
        (answer,) = answers
        if answer.status_code == 200:  # then the object must still be there and readable
            assert swept == []
            assert await _exists(blob_server, h)
            assert (await client.get(f"{MEDIA}/{h}/read-url")).status_code == 200
        else:  # or the client is told to upload again, and nothing half-complete is left
            assert swept == [h]
            assert answer.status_code == 404 and answer.json()["code"] == "blob_not_found", answer.text
            assert not await _exists(blob_server, h)
            assert (await client.get(MEDIA)).json()["blobs"] == []
            # uploading again works
            again = await _uploaded(blob_server, client, b"finalized while gc runs")
            monkeypatch.undo()
            r = await client.post(f"{MEDIA}/complete-upload", json={"sha256": again})
            assert r.status_code == 200, r.text


async def test_claims_storming_gc_runs_keep_every_claimed_object(blob_server: LiveServer) -> None:
    rng = random.Random(8)
    async with blob_server.client(limits=httpx.Limits(max_connections=32)) as client:
        hashes = []
        for i in range(12):
            h = await _uploaded(blob_server, client, f"storm {i}".encode())
            r = await client.post(f"{MEDIA}/complete-upload", json={"sha256": h})
            assert r.status_code == 200, r.text
            hashes.append(h)
        claimed: dict[str, list[str]] = {}
        refused: set[str] = set()
        deleted: list[str] = []

        async def claim(h: str, ref: str) -> None:
            r = await client.post(f"{MEDIA}/claim", json={"sha256": h, "ref": ref})
            if r.status_code == 200:
                claimed.setdefault(h, []).append(ref)
            else:
                assert r.status_code == 404 and r.json()["code"] == "blob_not_found", r.text
                refused.add(h)

        async def gc_run() -> None:
            deleted.extend(await _collector(blob_server, GRACE + 10).run())

        async with trio.open_nursery() as nursery:
            for i, h in enumerate(hashes):
                for ref in range(rng.randint(0, 3)):
                    nursery.start_soon(claim, h, f"r{i}.{ref}")
                if i % 3 == 0:
                    nursery.start_soon(gc_run)
        for h in claimed:  # a claim answered 200 keeps its object, whatever ran beside it
            assert h not in deleted
            assert await _exists(blob_server, h)
            assert (await client.get(f"{MEDIA}/{h}/read-url")).status_code == 200
        for h in deleted:  # and a swept object is gone for good, refused to later claims
            assert not await _exists(blob_server, h)
            r = await client.post(f"{MEDIA}/claim", json={"sha256": h, "ref": "late"})
            assert r.status_code == 404
        # a final run (nothing racing it) takes exactly the objects nobody claimed
        rest = await _collector(blob_server, GRACE + 20).run()
        assert sorted(set(deleted) | set(rest)) == sorted(set(hashes) - set(claimed))
