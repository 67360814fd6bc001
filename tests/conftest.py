from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from support.live import LiveServer, make_settings, start_live_server
from support.s3 import s3_endpoint

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


__all__ = ["s3_endpoint"]  # one moto S3 API for the session, shared by the blob, chaos and contract tests

# Tests log at warning level: debug lines from every actor would drown failures.
configure_logging("warning")
