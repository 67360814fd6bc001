"""Exit codes (0 ok, 1 refused, 2 usage, 3 unreachable) of the real ``skald`` process, against a live server
and against a closed port: every client command answers with one line, none hangs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from support.live import ADMIN_TOKEN, LiveServer

from skald.cli import main

DIGEST = "0" * 64


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SKALD_")}
    return {**environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}


@pytest.fixture
def closed_url() -> Iterator[str]:
    """A port on which nothing listens (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield f"http://127.0.0.1:{port}"


async def skald(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m skald ARGS``; fails the test (instead of hanging it) if it does not end in a minute."""
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "skald", *args], capture_stdout=True, capture_stderr=True, check=False, env=env
        )
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def client_commands(tmp_path: Path) -> list[list[str]]:
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"bytes")
    return [
        ["query", "notes", "SELECT 1"],
        ["watch", "notes", "SELECT 1"],
        ["publish", "notes", "topic", "hello"],
        ["subscribe", "notes", "#"],
        ["sync", "pull", "notes", "--to", str(tmp_path / "replica.sqlite")],
        ["blob", "put", "notes", str(upload)],
        ["blob", "get", "notes", DIGEST, "--to", str(tmp_path / "out.bin")],
    ]


async def test_every_client_command_exits_3_against_a_closed_port(
    env: dict[str, str], closed_url: str, tmp_path: Path
) -> None:
    for argv in client_commands(tmp_path):
        done = await skald(env, *argv, "--url", closed_url, "--token", "skd_x")
        assert done.returncode == 3, (argv, done.stderr)
        assert done.stderr.startswith(f"skald: unreachable: cannot reach skald at {closed_url}"), (argv, done.stderr)
        assert done.stderr.count("\n") == 1, (argv, done.stderr)
        assert done.stdout == ""


async def test_sync_pull_follow_keeps_retrying_and_says_so(
    env: dict[str, str], closed_url: str, tmp_path: Path
) -> None:
    proc = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "skald",
            "sync",
            "pull",
            "notes",
            "--to",
            str(tmp_path / "r.sqlite"),
            "--follow",
            "--url",
            closed_url,
            "--max-delay",
            "0.5",
        ],
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stderr is not None
        seen = b""
        with trio.fail_after(60):
            while seen.count(b"retrying in") < 3:  # well past the 5 attempts a plain pull makes
                chunk = await proc.stderr.receive_some()
                assert chunk, seen
                seen += chunk
        assert seen.startswith(b"skald: following notes into ")
        assert b"retrying with backoff" in seen.splitlines()[0]
    finally:
        proc.terminate()
        with trio.fail_after(30):
            code = await proc.wait()
        if proc.stderr is not None:
            await proc.stderr.aclose()
    assert code == 0  # SIGTERM ends a follower cleanly


async def test_exit_codes_against_a_live_server(server: LiveServer, env: dict[str, str]) -> None:
    async with server.client() as admin:
        assert (await admin.put("/api/v1/db/notes")).status_code == 201
    live = {**env, "SKALD_URL": server.url, "SKALD_TOKEN": ADMIN_TOKEN}
    ok = await skald(live, "query", "notes", "SELECT 1 AS one", "--output", "json")
    assert ok.returncode == 0 and ok.stdout.count("\n") == 1, ok.stderr
    missing = await skald(live, "query", "nope", "SELECT 1")
    assert missing.returncode == 1
    assert missing.stderr == "skald: 404 document_not_found: document nope does not exist\n"
    reader = await server.mint_token("notes:query.read")
    denied = await skald({**live, "SKALD_TOKEN": reader}, "publish", "notes", "t", "x")
    assert denied.returncode == 1 and denied.stderr.startswith("skald: 403 scope_denied: ")
    usage = await skald(live, "query", "notes")
    assert usage.returncode == 2 and "the following arguments are required: sql" in usage.stderr
    bad_url = await skald(live, "query", "notes", "SELECT 1", "--url", "notaurl")
    assert bad_url.returncode == 2
    assert bad_url.stderr == "skald: --url 'notaurl' is not an http:// or https:// URL: did you mean http://notaurl?\n"


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """In-process (same parser and code as the process; saves a Python start per call)."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_profiles_are_validated(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SKALD_URL", "SKALD_TOKEN", "SKALD_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", env["XDG_CONFIG_HOME"])
    code, _, err = run_main(capsys, "config", "set", "url", "notaurl")
    assert code == 2 and "'notaurl' is not an http:// or https:// URL" in err
    code, _, err = run_main(capsys, "config", "set", "url", "http://127.0.0.1:99999")
    assert code == 2 and "is not a valid URL" in err
    assert run_main(capsys, "config", "set", "url", "http://127.0.0.1:8080/", "--profile", "prod")[0] == 0
    assert run_main(capsys, "config", "get", "url", "--profile", "prod")[1] == "http://127.0.0.1:8080\n"
    code, _, err = run_main(capsys, "config", "set", "token", "t", "--profile", "../evil")
    assert code == 2 and "is not a profile name" in err
    code, _, err = run_main(capsys, "config", "profiles", "use", "prdo")
    assert code == 2
    assert (
        err == "skald: no profile 'prdo' (profiles: prod); create it with `skald config set url URL --profile prdo`\n"
    )
    assert "prdo" not in run_main(capsys, "config", "profiles", "list")[1]  # the typo created nothing
    assert run_main(capsys, "config", "profiles", "use", "prod")[0] == 0
    monkeypatch.setenv("SKALD_PROFILE", "nosuch")
    code, _, err = run_main(capsys, "query", "notes", "SELECT 1")
    assert code == 2
    assert err.startswith("skald: profile 'nosuch' (from SKALD_PROFILE) does not exist (profiles: prod)")
    monkeypatch.delenv("SKALD_PROFILE")
    monkeypatch.setenv("SKALD_URL", "127.0.0.1:8080")
    code, _, err = run_main(capsys, "query", "notes", "SELECT 1")
    assert code == 2
    assert (
        err
        == "skald: SKALD_URL '127.0.0.1:8080' is not an http:// or https:// URL: did you mean http://127.0.0.1:8080?\n"
    )
