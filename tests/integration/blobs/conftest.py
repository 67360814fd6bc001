"""A live skald wired to the local S3 API (``s3_endpoint``, tests/conftest.py) for blob tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from support.live import LiveServer, make_settings, start_live_server


@pytest.fixture
def s3_bucket() -> str:
    return f"skald-test-{uuid.uuid4().hex[:12]}"  # a fresh bucket per test keeps tests independent


@pytest.fixture
async def blob_server(
    nursery: trio.Nursery, data_dir: Path, s3_endpoint: str, s3_bucket: str
) -> AsyncIterator[LiveServer]:
    settings = make_settings(
        data_dir,
        s3_endpoint_url=s3_endpoint,
        s3_bucket=s3_bucket,
        s3_access_key_id="test",
        s3_secret_access_key="test",
    )
    live = await start_live_server(nursery, settings)
    async with live.client() as client:
        assert (await client.put("/api/v1/db/media")).status_code == 201
    yield live
    await live.stop()
