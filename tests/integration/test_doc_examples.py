"""Every curl example in README.md and docs/*.md runs against a live server, so an example that stops
working fails CI. The convention (docs/examples.md): each fenced ``sh`` block that calls ``curl`` is run,
in page order, by ``bash -e -o pipefail`` against one fresh server per page, with ``$SKALD`` (the server
URL) and ``$TOKEN`` (its admin token) set; every HTTP answer must be 2xx/3xx unless the block is marked
``<!-- example: shows an error -->`` (then 4xx is fine; a 5xx or no answer never is). A block marked
``<!-- example: not runnable: REASON -->`` is skipped and must give its reason.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path

import pytest
import trio
from support.live import ADMIN_TOKEN, LiveServer
from support.s3 import blob_server, s3_bucket

__all__ = ["blob_server", "s3_bucket"]  # fixtures: a server with object storage, as blobs.md needs

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
MARK = re.compile(r"<!--\s*example:\s*(.*?)\s*-->\s*$")
STATUS = re.compile(r"^skald-example-status (\d{3})$", re.M)
# Every curl call reports its status on stderr (curl's --write-out %{stderr}, given last so it wins over an
# example's own -w), without touching stdout, so examples that pipe or capture curl's output keep working.
# A streaming example (curl -N) runs for STREAM_SECONDS, then counts as answered if its status was 2xx.
STREAM_SECONDS = 2
BLOCK_SECONDS = 20  # a block that has not ended by then hangs (a wait nobody answers): it fails
PRELUDE = f"""
curl() {{
  local stream=0 arg rc=0
  for arg in "$@"; do case "$arg" in --no-buffer|-N|-[!-]*N*) stream=1;; esac; done
  if (( stream )); then
    command curl --max-time {STREAM_SECONDS} "$@" -w '%{{stderr}}\\nskald-example-status %{{http_code}}\\n' || rc=$?
    (( rc == 0 || rc == 28 )) || return $rc
  else
    command curl "$@" -w '%{{stderr}}\\nskald-example-status %{{http_code}}\\n'
  fi
}}
skald() {{ "$SKALD_PYTHON" -m skald "$@"; }}
"""
# The reader's own setup (`export SKALD=http://127.0.0.1:8080`, `TOKEN=skd_...`): the test provides these.
SETUP_LINE = re.compile(r"^[ \t]*(export[ \t]+)?(SKALD|SKALD_URL|SKALD_TOKEN|TOKEN)=.*$", re.M)


@dataclasses.dataclass(frozen=True)
class Example:
    page: str
    line: int
    script: str
    mark: str  # "", "shows an error" or "not runnable: ..."


def examples(page: Path) -> list[Example]:
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        if not re.search(r"(^|[\s;|&(])curl\s", match[1]):
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.search(before)
        line = text.count("\n", 0, match.start()) + 1
        found.append(Example(page.name, line, SETUP_LINE.sub("", match[1]), mark[1] if mark else ""))
    return found


def test_marks_follow_the_convention() -> None:
    for page in PAGES:
        for example in examples(page):
            where = f"{example.page}:{example.line}"
            assert example.mark in ("", "shows an error") or re.match(r"not runnable: \S", example.mark), where


@pytest.mark.parametrize("page", [p for p in PAGES if examples(p)], ids=lambda p: p.name)
async def test_curl_examples_run(page: Path, blob_server: LiveServer, tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SKALD_")},
        "SKALD": blob_server.url,
        "SKALD_URL": blob_server.url,
        "TOKEN": ADMIN_TOKEN,
        "SKALD_TOKEN": ADMIN_TOKEN,
        "SKALD_DATA_DIR": str(blob_server.settings.data_dir),
        "SKALD_PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "HOME": str(tmp_path),
    }
    failures = []
    ran = 0
    for example in examples(page):
        if example.mark.startswith("not runnable"):
            continue
        where = f"{example.page}:{example.line}"
        done = None
        with trio.move_on_after(BLOCK_SECONDS):
            done = await trio.run_process(
                ["bash", "-e", "-o", "pipefail", "-c", PRELUDE + example.script],
                cwd=tmp_path,
                env=env,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        ran += 1
        if done is None:
            failures.append(f"{where}: did not end within {BLOCK_SECONDS} s")
            continue
        err = done.stderr.decode(errors="replace")
        statuses = [int(s) for s in STATUS.findall(err)]
        allowed = range(200, 500) if example.mark == "shows an error" else range(200, 400)
        if done.returncode != 0 or not statuses or any(s not in allowed for s in statuses):
            failures.append(
                f"{where}: exit {done.returncode}, HTTP {statuses}\n"
                f"stdout: {done.stdout.decode(errors='replace')[:600]}\nstderr: {STATUS.sub('', err)[:600]}"
            )
    assert ran, f"{page.name}: every curl example is marked not runnable"
    assert not failures, "\n\n".join(failures)
