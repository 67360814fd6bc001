from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from moto.server import ThreadedMotoServer
from support.live import LiveServer, make_settings, start_live_server

from skald.logs import configure_logging


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def server(nursery: trio.Nursery, data_dir: Path) -> AsyncIterator[LiveServer]:
    """A real skald on 127.0.0.1:0 with admin token ``support.live.ADMIN_TOKEN``."""
    live = await start_live_server(nursery, make_settings(data_dir))
    yield live
    await live.stop()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """``moto`` serving the S3 API on 127.0.0.1 (it does not check presigned signatures or expiry)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


# Tests log at warning level: debug lines from every actor would drown failures.
configure_logging("warning")
