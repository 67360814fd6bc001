"""Running the real libSQL clients (tests/libsql: ``@libsql/client`` via Node, ``libsql-client`` via Python)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

LIBSQL_DIR = Path(__file__).resolve().parent.parent / "libsql"


def node() -> str:
    # Missing tools fail loudly (CI installs them): never a silent skip.
    path = shutil.which("node")
    assert path, "node is required (apt nodejs)"
    assert (LIBSQL_DIR / "node_modules" / "@libsql" / "client").exists(), "run `npm ci` in tests/libsql"
    return path


def parse_lines(output: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.decode().splitlines() if line.strip()]


async def run_node(scenario: str, url: str, token: str, *args: str) -> list[dict[str, Any]]:
    """Run one scenario of ``client.mjs`` to its end; its lines, by step."""
    result = await trio.run_process(
        [node(), str(LIBSQL_DIR / "client.mjs"), scenario, url, token, *args],
        cwd=LIBSQL_DIR, capture_stdout=True, stderr=subprocess.DEVNULL, check=False,
    )
    lines = parse_lines(result.stdout)
    assert result.returncode == 0, lines
    return lines


async def run_python_client(url: str, token: str) -> list[dict[str, Any]]:
    result = await trio.run_process(
        [sys.executable, str(LIBSQL_DIR / "py_client.py"), url, token],
        capture_stdout=True, capture_stderr=True, check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return parse_lines(result.stdout)


def by_step(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {line["step"]: line for line in lines if "step" in line}
