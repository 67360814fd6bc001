"""The start-up self-check of skald's hypercorn patches: run this before bumping hypercorn or h11.

It passes on the pinned versions; a patched attribute renamed, or a copied or wrapped method whose code
changed, makes ``skald serve`` refuse to start with one line naming the patch and the setting that turns
the patches off (and with that setting, it starts on stock hypercorn).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypercorn.trio import tcp_server

from skald.config import ConfigError, Settings
from skald.server import patches
from skald.server.runner import hypercorn_config


def test_every_patch_fits_the_installed_hypercorn_and_h11() -> None:
    patches.self_check(patches.NAMES)  # raises, naming the patch, on the first difference


def test_a_renamed_constant_is_refused_naming_the_patch_and_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(tcp_server, "MAX_RECV")  # as if hypercorn renamed it
    with pytest.raises(patches.HypercornPatchMismatch) as refused:
        patches.self_check(patches.NAMES)
    line = refused.value.detail
    assert "'large_reads'" in line and "hypercorn.trio.tcp_server.MAX_RECV" in line
    assert "SKALD_HYPERCORN_PATCHES=false" in line and "\n" not in line


def test_a_changed_method_is_told_apart_from_the_one_the_patch_was_written_for() -> None:
    async def _read_data(self: tcp_server.TCPServer) -> None:  # hypercorn's, one line different
        pass

    check = patches.same_source(tcp_server.TCPServer, "_read_data", patches.source_digest(_read_data))
    assert check() is not None  # the installed one is not this
    assert patches.same_source(type(check), "__call__", "0" * 16)() is not None  # no readable source
    assert patches.same_source(tcp_server.TCPServer, "_no_such_method", "0" * 16)() == (
        "hypercorn.trio.tcp_server.TCPServer._no_such_method is gone"
    )


def test_patches_are_all_but_the_skipped_ones_and_a_typo_is_a_config_error(tmp_path: Path) -> None:
    assert patches.enabled(True) == frozenset(patches.NAMES)
    assert patches.enabled(False, "anything") == frozenset()
    assert patches.enabled(True, " joined_chunks , large_reads") == frozenset(patches.NAMES) - {
        "joined_chunks", "large_reads"}
    with pytest.raises(ValueError, match="needs keep_alive_timer"):
        patches.enabled(True, "keep_alive_timer")
    with pytest.raises(ConfigError, match="unknown hypercorn patch held_head "):
        hypercorn_config(Settings(data_dir=tmp_path, hypercorn_patches_skip="held_head"))
    assert hypercorn_config(Settings(data_dir=tmp_path, hypercorn_patches=False)).skald_patches == frozenset()


# hypercorn 'upgraded' in a fresh process: the copied read loop's original is not what the patch copied.
_UPGRADED = textwrap.dedent("""
    import sys
    import hypercorn.trio.tcp_server as tcp_server

    async def _read_data(self):
        pass  # a newer hypercorn's read loop

    tcp_server.TCPServer._read_data = _read_data
    from skald.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _serve_upgraded(data_dir: Path, **env: str) -> subprocess.Popen[str]:
    script = data_dir.parent / "upgraded_hypercorn.py"  # a file: the self-check reads the new method's source
    script.write_text(_UPGRADED)
    return subprocess.Popen(
        [sys.executable, str(script), "serve", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PATH": "/usr/bin:/bin", "SKALD_LOG_LEVEL": "error", "SKALD_ADMIN_TOKEN": "skd_" + "t" * 40,
             "PYTHONPATH": str(Path(patches.__file__).parents[2]), **env},
    )


def test_skald_serve_refuses_to_start_on_a_changed_hypercorn_with_one_clear_line(tmp_path: Path) -> None:
    proc = _serve_upgraded(tmp_path / "data")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and out == ""
    assert err.splitlines() == [err.strip()]  # one line, no traceback
    assert err.startswith("skald: hypercorn patch 'large_reads' does not fit the installed hypercorn 0.18.0")
    assert "hypercorn.trio.tcp_server.TCPServer._read_data changed" in err
    assert "hypercorn_patches = false" in err and "SKALD_HYPERCORN_PATCHES=false" in err


def test_with_the_patches_off_skald_serve_starts_on_the_changed_hypercorn(tmp_path: Path) -> None:
    proc = _serve_upgraded(tmp_path / "data", SKALD_HYPERCORN_PATCHES="false")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until it listens, or ends
        assert "listening on http://" in line, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
