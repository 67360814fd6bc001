from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio
from support.live import make_settings, start_live_server


def _doctor(data_dir: Path) -> tuple[int, dict[str, Any]]:  # the report as `doctor --json` prints it
    result = subprocess.run(
        [sys.executable, "-m", "skald", "doctor", "--json", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode, json.loads(result.stdout)


async def test_doctor_on_fresh_healthy_and_damaged(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    code, report = await trio.to_thread.run_sync(_doctor, data_dir)
    assert code == 0 and report["status"] == "not initialized yet"

    async with trio.open_nursery() as nursery:
        live = await start_live_server(nursery, make_settings(data_dir))
        async with live.client() as client:
            await client.put("/api/v1/db/good")
            await client.put("/api/v1/db/bad")
        await live.stop()

    code, report = await trio.to_thread.run_sync(_doctor, data_dir)
    assert code == 0, report
    assert report["status"] == "ok"
    docs = {d["db_id"]: d for d in report["documents"]}
    assert docs["good"]["quick_check"] == "ok" and docs["good"]["schema_version"] >= 1

    bad = data_dir / "documents" / "bad.sqlite3"
    raw = bytearray(bad.read_bytes())
    raw[100:4096] = b"\xff" * (4096 - 100)  # clobber the schema page
    bad.write_bytes(bytes(raw))
    code, report = await trio.to_thread.run_sync(_doctor, data_dir)
    assert code == 1
    assert report["status"] == "problems found"
    docs = {d["db_id"]: d for d in report["documents"]}
    assert docs["bad"]["ok"] is False
    assert docs["good"]["ok"] is True
