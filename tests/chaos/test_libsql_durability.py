"""``kill -9`` while @libsql/client sends write batches over WebSocket: every acknowledged batch survives."""

from __future__ import annotations

import json
import random
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import trio
from support.libsql import LIBSQL_DIR, node
from support.live import ADMIN_TOKEN, SkaldProcess

DOC = "hranakill"
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def _batches_until_killed(url: str, proc: SkaldProcess, kill_after: int) -> set[int]:
    """Two clients send 5-row batches; the server gets SIGKILL after ``kill_after`` acknowledgements."""
    acked: set[int] = set()
    killed = trio.Event()

    async def client(offset: int) -> None:
        ws_url = url.replace("http://", "ws://") + f"/api/v1/db/{DOC}/libsql"
        child = await trio.lowlevel.open_process(
            [node(), str(LIBSQL_DIR / "client.mjs"), "batches", ws_url, ADMIN_TOKEN, str(10**6), str(offset)],
            cwd=LIBSQL_DIR, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        assert child.stdout is not None
        buffer = b""
        try:
            while chunk := await child.stdout.receive_some():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    message = json.loads(line)
                    if "acked" in message:
                        acked.add(int(message["acked"]))
                if len(acked) >= kill_after and not killed.is_set():
                    proc.signal(signal.SIGKILL)
                    killed.set()
        finally:
            with trio.CancelScope(shield=True):
                if child.returncode is None:
                    child.kill()
                await child.wait()
                await child.stdout.aclose()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for offset in (0, 1_000_000):
                nursery.start_soon(client, offset)
    assert len(acked) >= kill_after
    return acked


async def _stored(client: httpx.AsyncClient) -> dict[int, int]:
    r = await client.post(f"/api/v1/db/{DOC}/query",
                          json={"sql": "SELECT batch, count(*) FROM acked GROUP BY batch"})
    assert r.status_code == 200, r.text
    return {int(b): int(n) for b, n in r.json()["rows"]}


@pytest.mark.slow
async def test_every_acknowledged_batch_survives_sigkill(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    acked: set[int] = set()
    rng = random.Random()
    for round_no in range(2):
        proc = SkaldProcess(data_dir)
        url = await proc.start()
        try:
            async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=10) as client:
                if round_no == 0:
                    assert (await client.put(f"/api/v1/db/{DOC}")).status_code == 201
                    r = await client.post(f"/api/v1/db/{DOC}/query", json={
                        "sql": "CREATE TABLE acked (batch INTEGER, n INTEGER, PRIMARY KEY (batch, n))"})
                    assert r.status_code == 200, r.text
                else:
                    stored = await _stored(client)
                    assert acked <= set(stored), sorted(acked - set(stored))[:10]
            # each client numbers its batches from its offset, past what is stored
            acked |= await _batches_until_killed(url, proc, rng.randint(20, 120))
            assert await proc.wait() == -signal.SIGKILL
        finally:
            await proc.stop()
    proc = SkaldProcess(data_dir)
    url = await proc.start()
    try:
        async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=10) as client:
            stored = await _stored(client)
    finally:
        await proc.stop()
    assert acked <= set(stored), sorted(acked - set(stored))[:10]
    assert set(stored.values()) == {5}  # a batch is all or nothing, acknowledged or not
