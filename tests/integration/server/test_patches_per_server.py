"""skald's hypercorn patches apply per server: with ``hypercorn_patches = false`` a server runs
hypercorn's own code even in a process where another server runs the patched one."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio
from support.live import make_settings, start_live_server


async def _second_connection_status(url: str) -> int:
    # Two clients: two connections (one each), against max_connections = 1.
    async with httpx.AsyncClient(base_url=url, timeout=30) as first, httpx.AsyncClient(base_url=url,
                                                                                       timeout=30) as second:
        assert (await first.get("/healthz")).status_code == 200  # kept alive: it holds the one connection
        return (await second.get("/healthz")).status_code


async def test_a_server_with_the_patches_off_runs_stock_hypercorn_beside_a_patched_one(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    patched = await start_live_server(nursery, make_settings(tmp_path / "a", hypercorn_patches=True,
                                                             hypercorn_patches_skip="", max_connections=1))
    stock = await start_live_server(nursery, make_settings(tmp_path / "b", hypercorn_patches=False,
                                                           max_connections=1))
    assert await _second_connection_status(patched.url) == 503  # too_many_connections: the patch's cap
    assert await _second_connection_status(stock.url) == 200  # hypercorn has no cap
    await patched.stop()
    await stock.stop()
