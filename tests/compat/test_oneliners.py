"""Legacy patchwork one-liners (``tests/compat/oneliners/*.sh``) run unchanged with curl against skald.

The ``client_*`` scripts replay the curl commands the legacy shell client
(``assets/patchwork.sh``: send, send --get, receive, receive -T, share,
download, ``-n u -t``, ``-n h -s``) issues, so its users keep working.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import trio
from support.live import make_settings, start_live_server

ONELINERS = Path(__file__).parent / "oneliners"
EXPECTED = {
    "queue.sh": "hi",
    "pubsub.sh": "extraextra",
    "reqres.sh": "answer 201",
    "clutch.sh": "re: ping 202",
    "client_send_receive.sh": "hello from send",
    "client_send_get.sh": "hello via get",
    "client_share_download.sh": "same\n",
    "client_user_token.sh": "deploy completed",
    "client_hook_secret.sh": "notification",
    "client_receive_timeout.sh": "timed out\nafter the timeout",
}


@pytest.mark.parametrize("script", sorted(EXPECTED))
async def test_legacy_oneliner_runs_unchanged(
    script: str, nursery: trio.Nursery, data_dir: Path, tmp_path: Path
) -> None:
    # The pubsub script retries a broadcast until both consumers wait: lift the public rate limit.
    settings = make_settings(data_dir, public_rate_per_second=10_000.0, public_rate_burst=100_000)
    server = await start_live_server(nursery, settings)
    token = await server.mint_token("alice:stream.read", "alice:stream.write")
    env = {**os.environ, "PATCHWORK_SERVER": server.url, "OUT": str(tmp_path), "TOKEN": token}
    with trio.fail_after(60):
        result = await trio.run_process(
            ["sh", str(ONELINERS / script)], env=env, capture_stdout=True, stderr=subprocess.STDOUT
        )
    assert result.stdout.decode() == EXPECTED[script]
    await server.stop()
