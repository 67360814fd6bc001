"""schemathesis over every operation of /openapi.json, against a live skald with S3 (moto).

All checks, all phases (examples, coverage, fuzzing, stateful), at least
:data:`MIN_CASES` generated cases. The run fails on any server error, any
response outside the documented statuses, content types and schemas (problem
codes included: each error response pins ``code`` to the operation's list), a
schema-valid request refused or a schema-invalid one accepted. On failure the
assertion message carries schemathesis's report (with a curl command per case).

Run it alone: ``python -m pytest -q tests/contract`` (about two minutes here);
``SKALD_FUZZ_EXAMPLES=N`` changes the examples per operation.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import trio
from support.live import ADMIN_TOKEN, make_settings, start_live_server

from skald.auth.tokens import find_by_secret

HERE = Path(__file__).parent
MIN_CASES = 1000
EXAMPLES = int(os.environ.get("SKALD_FUZZ_EXAMPLES", "25"))


@pytest.mark.slow
async def test_every_operation_keeps_its_contract(
    nursery: trio.Nursery, data_dir: Path, s3_endpoint: str, tmp_path: Path
) -> None:
    settings = make_settings(
        data_dir,
        s3_endpoint_url=s3_endpoint,
        s3_bucket="skald-contract",
        s3_access_key_id="test",
        s3_secret_access_key="test",
        sse_heartbeat_seconds=0.5,  # every stream sends an event soon: the run reads one per stream
        switch_timeout_seconds=2.0,
    )
    live = await start_live_server(nursery, settings)
    async with live.client() as client:
        for db_id in ("0", "demo"):  # the fuzzer's favourite id and a readable one exist
            assert (await client.put(f"/api/v1/db/{db_id}")).status_code == 201
    record = await live.state.supervisor.service.read(lambda conn: find_by_secret(conn, ADMIN_TOKEN))
    assert record is not None
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(HERE / "schemathesis.toml"), "run",
        f"{live.url}/openapi.json",
        "--checks", "all",
        "--max-examples", str(EXAMPLES),
        "--seed", os.environ.get("SKALD_FUZZ_SEED", "20261202"),
        "--report", "json", "--report-json-path", str(report),
        "--no-color",
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "contract.schemathesis_hooks",
        "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE.parent.parent)]),
        "SKALD_FUZZ_TOKEN": ADMIN_TOKEN,
        "SKALD_FUZZ_TOKEN_ID": record.id,
    }
    result = await trio.run_process(
        command, env=env, cwd=tmp_path, capture_stdout=True, capture_stderr=True, check=False
    )
    output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    await live.stop()
    assert report.exists(), output[-20000:]
    summary = json.loads(report.read_text())
    print(  # figures for the reader (pytest -s): cases, operations, failures, time
        f"schemathesis: {summary['test_cases']['generated']} cases over {summary['operations']['tested']}"
        f" operations, {summary['test_cases']['unique_failures']} unique failures,"
        f" {summary['running_time']:.0f} s, exit {result.returncode}"
    )
    assert summary["operations"]["selected"] == summary["operations"]["total"], output[-20000:]
    assert summary["operations"]["tested"] == summary["operations"]["total"], output[-20000:]
    assert summary["test_cases"]["generated"] >= MIN_CASES, output[-20000:]
    assert result.returncode == 0, output[-20000:]
