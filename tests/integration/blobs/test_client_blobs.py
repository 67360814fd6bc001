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

from skald.client import AsyncClient, Client, NotFound

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
