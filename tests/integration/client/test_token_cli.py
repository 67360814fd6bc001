"""``skald token create|list|revoke`` on the data folder, then the server honours the result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio
from support.live import make_settings, start_live_server


async def skald(*args: str) -> str:
    result = await trio.run_process([sys.executable, "-m", "skald", *args], capture_stdout=True)
    return result.stdout.decode()


async def test_cli_tokens_work_against_the_server(data_dir: Path, nursery: trio.Nursery) -> None:
    folder = ["--data-dir", str(data_dir)]
    made = json.loads(await skald(
        "token", "create", *folder, "--scope", "notes:db.admin", "--expires", "1d", "--label", "cli",
        "--output", "json",
    ))
    gone = json.loads(
        await skald("token", "create", *folder, "--scope", "notes:db.admin", "--output", "json")
    )
    assert made["token"].startswith("skd_") and made["expires_at"]
    listed = json.loads(await skald("token", "list", *folder, "--output", "json"))
    assert {t["id"] for t in listed} == {made["id"], gone["id"]}
    assert made["token"] not in json.dumps(listed)
    assert "revoked" in await skald("token", "revoke", *folder, gone["id"])

    server = await start_live_server(nursery, make_settings(data_dir))
    async with server.client(made["token"]) as ok, server.client(gone["token"]) as revoked:
        assert (await ok.put("/api/v1/db/notes")).status_code == 201
        assert (await revoked.get("/api/v1/db/notes")).status_code == 401
    async with server.client() as admin:
        events = (await admin.get("/api/v1/admin/audit", params={"limit": 500})).json()["events"]
    assert ("token.revoked", gone["id"], "cli") in {(e["event"], e["subject"], e["actor"]) for e in events}
