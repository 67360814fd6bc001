from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from support.live import LiveServer, make_settings, patches_in_use, start_live_server
from support.s3 import s3_endpoint

from skald.logs import configure_logging
from skald.server.patches import NAMES


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``SKALD_HYPERCORN_PATCHES=false`` (CI's second run of tests/compat) skald serves on stock
    hypercorn: a test of what only a patch gives is skipped, naming the patch (docs/hypercorn.md says
    what each one's absence costs). ``SKALD_HYPERCORN_PATCHES_SKIP`` leaves out single patches alike."""
    in_use = patches_in_use()
    for item in items:
        for marker in item.iter_markers("hypercorn_patch"):
            name = marker.args[0]
            if name not in NAMES:  # a typo would skip the test in every run
                raise pytest.UsageError(f"{item.nodeid}: no hypercorn patch {name!r} (known: {', '.join(NAMES)})")
            if name not in in_use:
                item.add_marker(pytest.mark.skip(
                    reason=f"needs skald's hypercorn patch {name!r}, which this run leaves out"))


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
