from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from support.live import LiveServer, make_settings, start_live_server


@pytest.fixture
async def mqtt_server(nursery: trio.Nursery, data_dir: Path) -> AsyncIterator[LiveServer]:
    """A real skald with its MQTT listener on a free port (``live.state.mqtt.port``) and document ``notes``."""
    live = await start_live_server(nursery, make_settings(data_dir, mqtt_port=0))
    async with live.client() as client:
        assert (await client.put("/api/v1/db/notes")).status_code == 201
    yield live
    await live.stop()

