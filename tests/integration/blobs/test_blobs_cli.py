"""``skald blob put`` / ``skald blob get`` as subprocesses against a live server and local S3."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import trio
from support.live import LiveServer


async def skald(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "skald", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, **(env or {})},
    )


async def test_put_then_get_round_trip(blob_server: LiveServer, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    source = tmp_path / "big.iso"
    source.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    token = await blob_server.mint_token("media:blob.upload", "media:blob.read", "media:blob.claim")

    put = await skald(
        "blob",
        "put",
        "media",
        str(source),
        "--ref",
        "iso",
        "--url",
        blob_server.url,
        "--token",
        token,
    )
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout) == {"sha256": digest, "size": len(data), "uploaded": True, "ref": "iso"}

    # Second put of the same file: the server already has it, nothing is uploaded. Env instead of flags.
    env = {"SKALD_URL": blob_server.url, "SKALD_TOKEN": token}
    again = await skald("blob", "put", "media", str(source), "--quiet", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["uploaded"] is False

    target = tmp_path / "copy.iso"
    got = await skald("blob", "get", "media", digest, "--to", str(target), env=env)
    assert got.returncode == 0, got.stderr
    assert target.read_bytes() == data
    async with blob_server.client(token) as client:
        listed = (await client.get("/api/v1/db/media/blobs")).json()["blobs"]
    assert [(b["sha256"], b["ref"]) for b in listed] == [(digest, "iso")]


async def test_cli_reports_errors(blob_server: LiveServer, tmp_path: Path) -> None:
    no_target = await skald(
        "blob",
        "get",
        "media",
        "0" * 64,
        "-o",
        str(tmp_path / "x"),
        env={"SKALD_URL": "", "SKALD_TOKEN": ""},
    )
    assert no_target.returncode != 0 and b"SKALD_URL" in no_target.stderr
    missing = await skald(
        "blob",
        "get",
        "media",
        "0" * 64,
        "-o",
        str(tmp_path / "x"),
        "--url",
        blob_server.url,
        "--token",
        "skd_test_admin_token_0123456789abcdefghijklmnop",
    )
    assert missing.returncode == 1, missing.stderr
    assert missing.stderr.startswith(b"skald: 404 blob_not_found: ") and missing.stderr.count(b"\n") == 1
    assert not (tmp_path / "x").exists()
