"""Relay channels store nothing in SQLite, so using them creates no document."""

from __future__ import annotations

import httpx
import trio
from support.live import ADMIN_TOKEN, LiveServer

from skald.cli import main


async def _exchange(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    got: dict[str, httpx.Response] = {}

    async def produce() -> None:
        got["producer"] = await client.post(path, content=b"hello", headers=headers)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        got["consumer"] = await client.get(path, headers=headers)
    return got["producer"].status_code, got["consumer"].content


async def test_user_and_public_channels_create_no_document(server: LiveServer) -> None:
    token = await server.mint_token("alice:stream.read", "alice:stream.write")
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        assert await _exchange(client, "/u/alice/inbox", auth) == (200, b"hello")
        assert await _exchange(client, "/p/lobby", {}) == (200, b"hello")
        hook = (await client.get("/h")).json()
        assert await _exchange(client, f"/h/{hook['channel']}?secret={hook['secret']}", {}) == (200, b"hello")
    async with server.client(ADMIN_TOKEN) as admin:
        listed = (await admin.get("/api/v1/db")).json()["documents"]
        assert [d["db_id"] for d in listed] == []
        assert (await admin.get("/api/v1/db/alice")).status_code == 404
    assert not list((server.settings.data_dir / "documents").glob("*.sqlite3"))
    # and so doctor and backup see no document either
    target = server.settings.data_dir.parent / "backup"
    code = await trio.to_thread.run_sync(
        main, ["backup", "--data-dir", str(server.settings.data_dir), "--to", str(target)]
    )
    assert code == 0
    assert not list((target / "documents").iterdir())


async def test_a_user_namespace_with_a_document_still_relays(server: LiveServer) -> None:
    async with server.client(ADMIN_TOKEN) as admin:
        assert (await admin.put("/api/v1/db/bob")).status_code == 201
    token = await server.mint_token("bob:stream.read", "bob:stream.write")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        assert await _exchange(client, "/u/bob/x", {"Authorization": f"Bearer {token}"}) == (200, b"hello")
