"""``skald jobs …`` against a real server: enqueue, inspect, queues, search piped into bulk."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import trio
from support.live import ADMIN_TOKEN, LiveServer

from skald.cli import main


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("SKALD_PROFILE", raising=False)


async def skald(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await trio.to_thread.run_sync(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_enqueue_inspect_search_piped_into_bulk(
    server: LiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKALD_URL", server.url)
    monkeypatch.setenv("SKALD_TOKEN", ADMIN_TOKEN)
    async with server.client() as client:
        assert (await client.put("/api/v1/db/ops")).status_code == 201
    ids = []
    for n in range(4):
        code, out, err = await skald(capsys, "jobs", "enqueue", "ops", "mail", json.dumps({"n": n}),
                                     "--tag", "batch-7" if n < 3 else "other", "--output", "json")
        assert code == 0, err
        ids.append(json.loads(out)["id"])
    code, out, _ = await skald(capsys, "jobs", "inspect", "ops", str(ids[0]), "--output", "json")
    assert code == 0 and json.loads(out)["payload"] == {"n": 0} and json.loads(out)["errors"] == []
    code, out, _ = await skald(capsys, "jobs", "pause", "ops", "mail", "--output", "json")
    assert code == 0 and json.loads(out)["paused"] is True
    code, out, _ = await skald(capsys, "jobs", "queues", "ops")  # the table
    assert code == 0 and "mail" in out and "True" in out
    code, out, _ = await skald(capsys, "jobs", "search", "ops", "--tag", "batch-7", "--output", "json")
    lines = out.splitlines()
    assert code == 0 and [json.loads(line)["id"] for line in lines] == ids[:3]
    monkeypatch.setattr("sys.stdin", io.StringIO(out))
    code, out, err = await skald(capsys, "jobs", "bulk", "ops", "move", "--queue", "urgent", "--output", "json")
    assert code == 0 and json.loads(out) == {"action": "move", "affected": 3}, err
    code, out, _ = await skald(capsys, "jobs", "queues", "ops", "--output", "json")
    counts = {q["name"]: q["counts"]["queued"] for q in json.loads(out)["queues"]}
    assert counts == {"mail": 1, "urgent": 3}
    code, out, _ = await skald(capsys, "jobs", "bulk", "ops", "delete", "--filter", '{"queue": "urgent"}',
                               "--output", "json")
    assert json.loads(out)["affected"] == 3
    code, _, err = await skald(capsys, "jobs", "inspect", "ops", str(ids[0]))
    assert code == 1 and "job_not_found" in err and err.count("\n") == 1
    monkeypatch.setattr("sys.stdin", io.StringIO("not an id\n"))
    code, _, err = await skald(capsys, "jobs", "bulk", "ops", "retry")
    assert code == 1 and "stdin line 1" in err
