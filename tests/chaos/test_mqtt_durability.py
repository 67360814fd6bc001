"""QoS 1 over MQTT with the server SIGKILLed: every PUBACKed message is there after the restart."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import httpx
import pytest
import trio
from support.live import ADMIN_TOKEN, SkaldProcess
from support.mqtt import Paho

DB = "/api/v1/db/pub"
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def _stored_payloads(client: httpx.AsyncClient) -> set[str]:
    found: set[str] = set()
    since = 0
    while True:
        page = (await client.get(f"{DB}/messages", params={"since_id": since, "limit": 1000})).json()
        found.update(m["payload_text"] for m in page["messages"])
        if not page["messages"]:
            return found
        since = page["next_since_id"]


@pytest.mark.slow
async def test_every_pubacked_message_survives_sigkill(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    acked: set[str] = set()
    rng = random.Random()
    for round_no in range(3):
        proc = SkaldProcess(data_dir, args=["--mqtt-port", "0"])
        url = await proc.start()
        assert proc.mqtt_port is not None
        try:
            async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=10) as client:
                if round_no == 0:
                    assert (await client.put(DB)).status_code == 201
                else:
                    assert acked <= await _stored_payloads(client)  # nothing acknowledged was lost
            kill_at = len(acked) + rng.randint(50, 400)
            killed = trio.Event()

            async def publisher(n: int, port: int, round_no: int = round_no, kill_at: int = kill_at,
                                killed: trio.Event = killed, proc: SkaldProcess = proc) -> None:
                client = Paho(port, ADMIN_TOKEN, protocol=5 if n % 2 else 4)
                try:
                    await client.connect()
                    i = 0
                    while True:
                        payload = f"r{round_no}-c{n}-{i}"
                        code = await client.publish(f"pub/d/{n}", payload.encode())
                        if code != 0:
                            return  # the server died before acknowledging it: not counted
                        acked.add(payload)
                        if len(acked) >= kill_at and not killed.is_set():
                            proc.signal(signal.SIGKILL)
                            killed.set()
                        i += 1
                finally:
                    await client.close()

            async with trio.open_nursery() as nursery:
                for n in range(4):
                    nursery.start_soon(publisher, n, proc.mqtt_port)
            assert await proc.wait() == -signal.SIGKILL
        finally:
            await proc.stop()
    proc = SkaldProcess(data_dir)
    url = await proc.start()
    try:
        async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=10) as client:
            assert acked <= await _stored_payloads(client)
    finally:
        await proc.stop()
