"""Blobs through the client library (async under trio and asyncio, and the blocking client)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from support.live import LiveServer

from skald.blobs.objectstore import ObjectStore, blob_key
from skald.client import AsyncClient, Client, NotFound, SkaldClientError

SCOPES = ("media:blob.upload", "media:blob.read", "media:blob.claim", "media:blob.release")


async def blob_flow(client: AsyncClient) -> dict[str, Any]:
    data = os.urandom(100_000)
    out: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest()}
    out["first"] = await client.upload_blob("media", data, "image/png", ref="avatar")
    out["second"] = await client.upload_blob("media", data)  # already stored: nothing uploaded
    out["same_bytes"] = await client.read_blob("media", out["sha256"]) == data
    info = await client.blob_info("media", out["sha256"])
    out["info"] = (info["size"], info["content_type"], info["url"].startswith("http"))
    out["listed"] = [(b["sha256"], b["ref"]) for b in await client.list_blobs("media")]
    await client.claim_blob("media", out["sha256"], "backup")
    await client.release_blob("media", out["sha256"], "avatar")
    out["after_release"] = [b["ref"] for b in await client.list_blobs("media", sha256=out["sha256"])]
    try:
        await client.blob_info("media", "0" * 64)
    except NotFound as exc:
        out["missing"] = exc.code
    return out


def check_blob_flow(out: dict[str, Any]) -> None:
    digest = out["sha256"]
    assert out["first"] == {"sha256": digest, "size": 100_000, "uploaded": True, "ref": "avatar"}
    assert out["second"] == {"sha256": digest, "size": 100_000, "uploaded": False}
    assert out["same_bytes"] is True
    assert out["info"] == (100_000, "image/png", True)
    assert out["listed"] == [(digest, "avatar")]
    assert out["after_release"] == ["backup"]
    assert out["missing"] == "blob_not_found"


async def test_blobs_under_trio(blob_server: LiveServer) -> None:
    token = await blob_server.mint_token(*SCOPES)
    async with AsyncClient(blob_server.url, token) as client:
        check_blob_flow(await blob_flow(client))


async def test_blobs_under_asyncio(blob_server: LiveServer) -> None:
    token = await blob_server.mint_token(*SCOPES)

    async def main() -> dict[str, Any]:
        async with AsyncClient(blob_server.url, token) as client:
            return await blob_flow(client)

    check_blob_flow(await trio.to_thread.run_sync(asyncio.run, main()))


async def test_blocking_client_streams_files(blob_server: LiveServer, tmp_path: Path) -> None:
    token = await blob_server.mint_token(*SCOPES)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(2 * 1024 * 1024 + 5))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()

    def run() -> tuple[dict[str, Any], dict[str, Any], int, int]:
        sent: list[int] = []
        received: list[int] = []
        with Client(blob_server.url, token) as client:
            up = client.upload_blob("media", source, ref="iso", progress=sent.append)
            down = client.download_blob(
                "media", digest, tmp_path / "copy.bin", progress=lambda n, total: received.append(n)
            )
            with pytest.raises(NotFound):
                client.download_blob("media", "1" * 64, tmp_path / "none.bin")
        return up, down, sum(sent), sum(received)

    up, down, sent, received = await trio.to_thread.run_sync(run)
    size = source.stat().st_size
    assert up == {"sha256": digest, "size": size, "uploaded": True, "ref": "iso"}
    assert down == {"sha256": digest, "size": size, "path": str(tmp_path / "copy.bin")}
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    assert sent == received == size
    assert not (tmp_path / "none.bin").exists()


async def file_flow(client: AsyncClient, source: Path, digest: str, dest_dir: Path) -> dict[str, Any]:
    """What the blocking client does with files, through the async client."""
    sent: list[int] = []
    received: list[tuple[int, int | None]] = []
    out: dict[str, Any] = {"sha256": digest}
    out["up"] = await client.upload_blob("media", source, ref="iso", progress=sent.append)
    out["again"] = await client.upload_blob("media", str(source), progress=sent.append)  # stored: no PUT
    out["down"] = await client.download_blob(
        "media", digest, dest_dir / "copy.bin", progress=lambda n, total: received.append((n, total))
    )
    try:
        await client.download_blob("media", "1" * 64, dest_dir / "none.bin")
    except NotFound as exc:
        out["missing"] = exc.code
    out["sent"], out["received"] = sent, received
    out["bytes_progress"] = []
    await client.upload_blob("media", b"small", progress=out["bytes_progress"].append)
    return out


def check_file_flow(out: dict[str, Any], source: Path, dest_dir: Path) -> None:
    size, digest = source.stat().st_size, out["sha256"]
    assert out["up"] == {"sha256": digest, "size": size, "uploaded": True, "ref": "iso"}
    assert out["again"] == {"sha256": digest, "size": size, "uploaded": False}
    assert out["down"] == {"sha256": digest, "size": size, "path": str(dest_dir / "copy.bin")}
    assert (dest_dir / "copy.bin").read_bytes() == source.read_bytes()
    assert not (dest_dir / "copy.bin.part").exists()
    assert out["missing"] == "blob_not_found" and not (dest_dir / "none.bin").exists()
    # progress: every byte reported once, in more than one chunk (the file is over 2 MiB)
    assert sum(out["sent"]) == size and len(out["sent"]) > 1
    assert sum(n for n, _ in out["received"]) == size and len(out["received"]) > 1
    assert {total for _, total in out["received"]} == {size}
    assert out["bytes_progress"] == [5]


@pytest.mark.parametrize("runner", ["trio", "asyncio"])
async def test_async_client_streams_files(blob_server: LiveServer, tmp_path: Path, runner: str) -> None:
    token = await blob_server.mint_token(*SCOPES)
    source = tmp_path / "big.bin"
    data = os.urandom(2 * 1024 * 1024 + 5)
    source.write_bytes(data)

    async def main() -> dict[str, Any]:
        async with AsyncClient(blob_server.url, token) as client:
            return await file_flow(client, source, hashlib.sha256(data).hexdigest(), tmp_path)

    out = await main() if runner == "trio" else await trio.to_thread.run_sync(asyncio.run, main())
    check_file_flow(out, source, tmp_path)


async def test_async_download_keeps_dest_when_the_bytes_are_wrong(blob_server: LiveServer, tmp_path: Path) -> None:
    """The object changed behind skald's back: both clients fail and ``dest`` keeps its old bytes."""
    token = await blob_server.mint_token(*SCOPES)
    data = os.urandom(50_000)
    dest = tmp_path / "kept.bin"
    dest.write_bytes(b"previous copy")
    async with AsyncClient(blob_server.url, token) as client:
        up = await client.upload_blob("media", data)
        await ObjectStore(blob_server.settings).put_bytes(blob_key(up["sha256"]), b"tampered")
        with pytest.raises(SkaldClientError) as info:
            await client.download_blob("media", up["sha256"], dest)

    def blocking() -> str:
        with Client(blob_server.url, token) as client, pytest.raises(SkaldClientError) as info:
            client.download_blob("media", up["sha256"], dest)
        return info.value.code

    assert info.value.code == await trio.to_thread.run_sync(blocking) == "hash_mismatch"
    assert dest.read_bytes() == b"previous copy"
    assert not (tmp_path / "kept.bin.part").exists()
