from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from support.live import LiveServer, make_settings, start_live_server

from skald.blobs.objectstore import ObjectStore, blob_key

B = "/api/v1/db/media/blobs"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def upload(
    client: httpx.AsyncClient, data: bytes, content_type: str = "application/octet-stream"
) -> dict[str, Any]:
    r = await client.post(
        f"{B}/init-upload", json={"sha256": sha(data), "size": len(data), "content_type": content_type}
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_full_flow_init_put_complete_read(blob_server: LiveServer) -> None:
    data = b"hello blob " * 1000
    async with blob_server.client() as client:
        init = await upload(client, data, "text/plain")
        assert init["exists"] is False
        spec = init["upload"]
        assert spec["method"] == "PUT" and spec["headers"] == {"Content-Type": "text/plain"}
        assert spec["expires_in"] > 0 and spec["expires_at"]
        async with httpx.AsyncClient() as raw:
            put = await raw.put(spec["url"], content=data, headers=spec["headers"])
            assert put.status_code == 200, put.text
        done = await client.post(f"{B}/complete-upload", json={"sha256": sha(data)})
        assert done.status_code == 200, done.text
        assert done.json() == {
            "sha256": sha(data),
            "size": len(data),
            "content_type": "text/plain",
            "state": "complete",
        }
        read = await client.get(f"{B}/{sha(data)}/read-url")
        assert read.status_code == 200, read.text
        async with httpx.AsyncClient() as raw:
            got = await raw.get(read.json()["url"])
        assert got.status_code == 200 and got.content == data
        # A second upload of the same content short-circuits.
        again = await upload(client, data)
        assert again == {"sha256": sha(data), "size": len(data), "exists": True}


async def test_hash_mismatch_is_rejected_and_object_removed(blob_server: LiveServer) -> None:
    declared = b"the real content"
    async with blob_server.client() as client:
        init = await upload(client, declared)
        async with httpx.AsyncClient() as raw:
            put = await raw.put(
                init["upload"]["url"], content=b"something else!!", headers=init["upload"]["headers"]
            )
            assert put.status_code == 200
        r = await client.post(f"{B}/complete-upload", json={"sha256": sha(declared)})
        assert r.status_code == 409
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "blob_hash_mismatch"
        assert r.json()["actual_sha256"] == sha(b"something else!!")
        store = ObjectStore(blob_server.settings)
        assert await store.head(blob_key(sha(declared))) is None
        # Nothing is readable, and completing again says nothing was uploaded... after a new init.
        assert (await client.get(f"{B}/{sha(declared)}/read-url")).json()["code"] == "blob_not_found"
        assert (await client.post(f"{B}/complete-upload", json={"sha256": sha(declared)})).status_code == 404
        await upload(client, declared)
        r = await client.post(f"{B}/complete-upload", json={"sha256": sha(declared)})
        assert r.status_code == 409 and r.json()["code"] == "blob_not_uploaded"


async def test_size_mismatch_is_rejected(blob_server: LiveServer) -> None:
    data = b"abc"
    async with blob_server.client() as client:
        r = await client.post(f"{B}/init-upload", json={"sha256": sha(data), "size": 4})
        async with httpx.AsyncClient() as raw:
            await raw.put(r.json()["upload"]["url"], content=data, headers=r.json()["upload"]["headers"])
        r = await client.post(f"{B}/complete-upload", json={"sha256": sha(data)})
        assert (
            r.status_code == 409 and r.json()["code"] == "blob_hash_mismatch" and r.json()["actual_size"] == 3
        )


async def test_claim_release_list_and_read_access(blob_server: LiveServer) -> None:
    data = b"shared bytes"
    h = sha(data)
    async with blob_server.client() as admin:
        assert (await admin.put("/api/v1/db/other")).status_code == 201
        init = await upload(admin, data)
        async with httpx.AsyncClient() as raw:
            await raw.put(init["upload"]["url"], content=data, headers=init["upload"]["headers"])
        assert (await admin.post(f"{B}/complete-upload", json={"sha256": h})).status_code == 200
    reader = await blob_server.mint_token("other:blob.read", "other:blob.claim", "other:blob.release")
    async with blob_server.client(reader) as client:
        # "other" neither uploaded nor claimed it: knowing the hash is not enough to read.
        r = await client.get(f"/api/v1/db/other/blobs/{h}/read-url")
        assert r.status_code == 404 and r.json()["code"] == "blob_not_found"
        r = await client.post("/api/v1/db/other/blobs/claim", json={"sha256": h, "ref": "posts/1"})
        assert r.status_code == 200 and r.json() == {"sha256": h, "ref": "posts/1", "claimed": True}
        assert (await client.get(f"/api/v1/db/other/blobs/{h}/read-url")).status_code == 200
        listed = (await client.get("/api/v1/db/other/blobs")).json()["blobs"]
        assert [(b["sha256"], b["ref"], b["size"]) for b in listed] == [(h, "posts/1", len(data))]
        # Scopes are per document and per action.
        assert (await client.get(f"{B}")).status_code == 403
        assert (
            await client.post("/api/v1/db/other/blobs/init-upload", json={"sha256": h, "size": 1})
        ).status_code == 403
        r = await client.post("/api/v1/db/other/blobs/release", json={"sha256": h, "ref": "posts/1"})
        assert r.json()["released"] is True
        assert (await client.get("/api/v1/db/other/blobs")).json()["blobs"] == []
        r = await client.post("/api/v1/db/other/blobs/claim", json={"sha256": "0" * 64, "ref": "x"})
        assert r.status_code == 404 and r.json()["code"] == "blob_not_found"


async def test_validation_errors(blob_server: LiveServer) -> None:
    async with blob_server.client() as client:
        for body in ({"sha256": "xyz", "size": 1}, {"sha256": "a" * 64, "size": -1}, {"sha256": "a" * 64}):
            r = await client.post(f"{B}/init-upload", json=body)
            assert r.status_code == 400 and r.json()["code"] == "validation_failed"
        r = await client.post(f"{B}/init-upload", json={"sha256": "a" * 64, "size": 5 * 1024**3 + 1})
        assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
        r = await client.post(f"{B}/claim", json={"sha256": "a" * 64, "ref": ""})
        assert r.status_code == 400
        assert (await client.get("/api/v1/db/nope/blobs")).json()["code"] == "document_not_found"


async def test_unconfigured_storage_answers_503(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    live = await start_live_server(nursery, make_settings(tmp_path / "data"))
    async with live.client() as client:
        assert (await client.put("/api/v1/db/media")).status_code == 201
        r = await client.post(f"{B}/init-upload", json={"sha256": "a" * 64, "size": 1})
        assert r.status_code == 503 and r.json()["code"] == "object_storage_unconfigured"
        assert r.headers["content-type"] == "application/problem+json"
        assert (await client.get("/healthz")).status_code == 200
    await live.stop()
