"""A webhook body cut mid-upload stores nothing; the next complete delivery is stored once."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trio
import trio.testing
from support.live import ADMIN_TOKEN, LiveServer, make_settings, start_live_server

BODY = b'{"event": "push", "pad": "' + b"x" * 200_000 + b'"}'


def _inbox(path: Path) -> list[bytes]:
    conn = sqlite3.connect(path)
    try:
        return [bytes(body) for (body,) in conn.execute("SELECT body FROM webhook_inbox ORDER BY id")]
    finally:
        conn.close()


def _head(url: str, framing: str) -> bytes:
    host = urlsplit(url).netloc
    return (
        f"POST /api/v1/db/hooks/webhooks/github HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n"
        f"X-GitHub-Delivery: cut-1\r\n{framing}\r\n"
    ).encode()


async def _send_then_hang_up(url: str, data: bytes) -> None:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream:
        await stream.send_all(data)
    # leaving the block closes the socket: the body never completes


@pytest.mark.parametrize("sent", [0, 1, len(BODY) // 2, len(BODY) - 1])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_body_cut_mid_upload_stores_nothing(
    nursery: trio.Nursery, data_dir: Path, framing: str, sent: int
) -> None:
    live: LiveServer = await start_live_server(nursery, make_settings(data_dir))
    try:
        async with live.client() as client:
            assert (await client.put("/api/v1/db/hooks")).status_code == 201
            if framing == "content-length":
                request = _head(live.url, f"Content-Length: {len(BODY)}\r\n") + BODY[:sent]
            else:  # one whole chunk announced, part of it sent, never the final 0-chunk
                request = _head(live.url, "Transfer-Encoding: chunked\r\n") + f"{len(BODY):x}\r\n".encode()
                request += BODY[:sent]
            await _send_then_hang_up(live.url, request)
            await trio.testing.wait_all_tasks_blocked()
            assert _inbox(live.settings.document_path("hooks")) == []
            # the same delivery, complete this time, is stored (not taken for a duplicate)
            r = await client.post(
                "/api/v1/db/hooks/webhooks/github",
                content=BODY,
                headers={"Content-Type": "application/json", "X-GitHub-Delivery": "cut-1"},
            )
            assert r.status_code == 201, r.text
    finally:
        await live.stop()
    # after a full stop nothing is pending that could still write the cut body
    assert _inbox(data_dir / "documents" / "hooks.sqlite3") == [BODY]
