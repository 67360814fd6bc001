"""``skald cluster up``: starts a working cluster, prints its URL, and Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import trio
from support.live import ADMIN_TOKEN


@pytest.mark.slow
async def test_cluster_up_serves_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    env = {**os.environ, "SKALD_ADMIN_TOKEN": ADMIN_TOKEN}
    proc = subprocess.Popen(  # noqa: ASYNC220 - starts at once; reading its output is done in a thread
        [sys.executable, "-m", "skald", "cluster", "up", "--nodes", "2", "--port", "0", "--dir", str(tmp_path / "c")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        with trio.fail_after(90):
            first = await trio.to_thread.run_sync(proc.stdout.readline)
        match = re.search(rb"2 nodes behind (http://\S+)", first)
        assert match, first + proc.stderr.read() if proc.poll() is not None else first
        url = match[1].decode()
        children = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        for part in ("etcd", "moto_server", "haproxy", "litestream", "skald serve"):
            assert part in names, part
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as http:
            assert (await http.put("/api/v1/db/up")).status_code == 201
            r = await http.post("/api/v1/db/up/query", json={"sql": "SELECT 41 + 1"})
            assert r.json()["rows"] == [[42]]
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(60):
            code = await trio.to_thread.run_sync(proc.wait)
        assert code == 0
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
