"""Durability under SIGKILL and the slow-consumer policy, against a real ``skald serve`` process."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import httpx
import psutil
import pytest
import trio
from httpx_sse import aconnect_sse
from support.live import ADMIN_TOKEN, SkaldProcess

DB = "/api/v1/db/pub"
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def _all_messages(client: httpx.AsyncClient) -> dict[int, object]:
    found: dict[int, object] = {}
    since = 0
    while True:
        page = (await client.get(f"{DB}/messages", params={"since_id": since, "limit": 1000})).json()
        for m in page["messages"]:
            found[m["id"]] = m["payload"]
        if not page["messages"]:
            return found
        since = page["next_since_id"]


async def _publish_until_killed(
    client: httpx.AsyncClient, proc: SkaldProcess, round_no: int, kill_at: int, acked: dict[int, object]
) -> None:
    """Four clients publish; the server gets SIGKILL once ``kill_at`` publishes were acknowledged."""
    killed = trio.Event()

    async def publisher(n: int) -> None:
        i = 0
        while not killed.is_set():
            payload = {"round": round_no, "client": n, "i": i}
            try:
                r = await client.post(f"{DB}/messages", json={"topic": f"d/{n}", "payload": payload})
            except httpx.TransportError:
                return
            if r.status_code == 201:
                acked[r.json()["id"]] = payload
                if len(acked) >= kill_at and not killed.is_set():
                    proc.signal(signal.SIGKILL)
                    killed.set()
            i += 1

    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(publisher, n)


@pytest.mark.slow
async def test_every_acknowledged_publish_survives_sigkill(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    acked: dict[int, object] = {}
    rng = random.Random()
    for round_no in range(5):
        proc = SkaldProcess(data_dir)
        url = await proc.start()
        try:
            async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=10) as client:
                if round_no == 0:
                    assert (await client.put(DB)).status_code == 201
                else:  # everything acknowledged before the previous kill is there
                    present = await _all_messages(client)
                    assert {i: present.get(i) for i in acked} == acked
                kill_at = len(acked) + rng.randint(10, 300)  # a random moment, in acknowledgements
                await _publish_until_killed(client, proc, round_no, kill_at, acked)
            assert await proc.wait() == -signal.SIGKILL
        finally:
            await proc.stop()
    proc = SkaldProcess(data_dir)
    url = await proc.start()
    try:
        async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=10) as client:
            present = await _all_messages(client)
        assert len(acked) >= 50
        assert {i: present.get(i) for i in acked} == acked
    finally:
        await proc.stop()


@pytest.mark.slow
async def test_slow_consumer_is_cut_off_and_memory_stays_bounded(tmp_path: Path) -> None:
    proc = SkaldProcess(tmp_path / "data")
    url = await proc.start()
    assert proc.proc is not None
    server = psutil.Process(proc.proc.pid)
    payload = "x" * (512 * 1024)
    total = 100  # 50 MiB
    try:
        async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=60) as client, \
                httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=60) as publisher:
            assert (await client.put(DB)).status_code == 201
            ids: list[int] = []
            received: list[tuple[str, str]] = []
            with trio.fail_after(120), trio.CancelScope() as stop:
                async with aconnect_sse(client, "GET", f"{DB}/events/stream", params={"topic": "big"}) as src:
                    events = src.aiter_sse()
                    first = await events.__anext__()
                    assert first.event == "heartbeat"  # live: from here on the client reads nothing
                    baseline = server.memory_info().rss
                    peak = baseline
                    for _ in range(total):
                        body = {"topic": "big", "payload_text": payload}
                        r = await publisher.post(f"{DB}/messages", json=body)
                        assert r.status_code == 201
                        ids.append(r.json()["id"])
                        peak = max(peak, server.memory_info().rss)
                    async for sse in events:  # now read: buffered messages, then the error event
                        if stop.cancel_called:
                            continue
                        received.append((sse.event, sse.data if sse.event != "message" else sse.id))
                        if sse.event == "error":
                            stop.cancel()
            assert peak - baseline < 40 * 1024 * 1024, (peak - baseline) / 1e6
            assert received[-1][0] == "error"
            error = json.loads(received[-1][1])
            assert error["code"] == "slow_consumer"
            got = [int(i) for event, i in received if event == "message"]
            assert len(got) < total  # it was cut off
            assert got == ids[: len(got)]  # what it did get is in order, without gaps
            assert error["resume_from"] == (got[-1] if got else ids[0] - 1)
            # resuming from the documented cursor yields exactly the rest
            params = {"topic": "big", "since_id": error["resume_from"], "limit": 1000}
            rest = (await publisher.get(f"{DB}/messages", params=params)).json()
            assert [m["id"] for m in rest["messages"]] == ids[len(got):]
            metrics = (await publisher.get("/metrics")).text
            assert "skald_slow_consumers_dropped_total 1.0" in metrics
    finally:
        await proc.stop()
