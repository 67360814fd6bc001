"""``skald serve`` on a busy or bad port: one line, exit 2, and nothing started (no admin token minted)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _serve(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SKALD_")}
    return subprocess.run(
        [sys.executable, "-m", "skald", "serve", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, **(env or {})},
    )


def test_busy_port_is_one_line_exit_2_and_mints_no_token(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve(tmp_path / "data", "--host", "127.0.0.1", "--port", str(port))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"skald: cannot listen on 127.0.0.1:{port}: address already in use"
        " (is another server running there? choose another --port)\n"
    )
    assert "skd_" not in done.stderr
    assert not (tmp_path / "data").exists()  # nothing started: no service database, no admin token


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "99999"], {}, "argument --port: 99999 is not a port (0-65535)"),
        (["--port", "http"], {}, "argument --port: 'http' is not a port number"),
        (
            [],
            {"SKALD_PORT": "99999", "SKALD_HOST": "127.0.0.1"},
            "cannot listen on 127.0.0.1:99999: port must be 0-65535",
        ),
    ],
)
def test_bad_port_is_a_usage_error(tmp_path: Path, args: list[str], env: dict[str, str], message: str) -> None:
    done = _serve(tmp_path / "data", *args, env=env)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()


def test_busy_mqtt_port_is_one_line_exit_2_and_mints_no_token(tmp_path: Path) -> None:
    """The MQTT listener's port gets the same treatment as the HTTP one: bound before anything starts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve(tmp_path / "data", "--host", "127.0.0.1", "--port", "0", "--mqtt-port", str(port))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"skald: cannot listen for MQTT on 127.0.0.1:{port}: address already in use"
        " (is another broker running there? choose another --mqtt-port)\n"
    )
    assert not (tmp_path / "data").exists()  # nothing started: no service database, no admin token


def test_mqtt_port_taken_by_the_http_port_is_refused(tmp_path: Path) -> None:
    """``--port N --mqtt-port N``: the second bind fails like any busy port, and the first is let go."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = _serve(tmp_path / "data", "--host", "127.0.0.1", "--port", str(port), "--mqtt-port", str(port))
    assert done.returncode == 2
    assert done.stderr.startswith(f"skald: cannot listen for MQTT on 127.0.0.1:{port}: address already in use")
    assert not (tmp_path / "data").exists()
