"""ops/skald.toml must load, and must document every setting (so it cannot rot)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest

from skald.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "ops" / "skald.toml"
UNIT = ROOT / "ops" / "systemd" / "skald.service"
_SECTION = re.compile(r"^\[([a-z0-9_]+)\]\s*$")
_ASSIGN = re.compile(r"^(#\s*)?([a-z0-9_]+)\s*=")


def _documented_settings(text: str) -> tuple[set[str], str]:
    """Return every setting named in the file (set or commented out) and the text with those uncommented."""
    names: set[str] = set()
    section = ""
    lines = []
    for line in text.splitlines():
        if match := _SECTION.match(line):
            section = match[1]
        elif match := _ASSIGN.match(line):
            key = match[2]
            names.add(key if section in {"", "server"} else f"{section}_{key}")
            line = line[len(match[1] or "") :]
        lines.append(line)
    return names, "\n".join(lines) + "\n"


def test_example_config_loads() -> None:
    settings = load_settings(EXAMPLE, env={})
    assert settings.data_dir == Path("/var/lib/skald")
    assert settings.log_level == "info"
    assert settings.rate_limit_burst == 100
    assert settings.s3_bucket == "skald"


def test_example_config_documents_every_setting() -> None:
    names, _ = _documented_settings(EXAMPLE.read_text())
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert fields - names == set(), "settings missing from ops/skald.toml"
    assert names - fields == set(), "ops/skald.toml names settings that do not exist"


def test_commented_examples_are_valid_too(tmp_path: Path) -> None:
    _, uncommented = _documented_settings(EXAMPLE.read_text())
    path = tmp_path / "all.toml"
    path.write_text(uncommented)
    settings = load_settings(path, env={})
    assert settings.oidc_issuer == "https://login.example.com/"
    assert settings.s3_endpoint_url == "http://127.0.0.1:9000"


def test_example_defaults_match_code() -> None:
    """Values in the example are the defaults, except the few an operator must choose."""
    settings = load_settings(EXAMPLE, env={})
    chosen = {"data_dir", "log_format"}
    for field in dataclasses.fields(Settings):
        if field.name not in chosen:
            assert getattr(settings, field.name) == field.default, field.name


def test_typo_in_config_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text(EXAMPLE.read_text().replace("[query]\n", "[query]\ntimout_ms = 1\n"))
    with pytest.raises(ConfigError):
        load_settings(path, env={})


def test_unit_stop_timeout_covers_grace() -> None:
    text = UNIT.read_text()
    stop = re.search(r"^TimeoutStopSec=(\d+)s$", text, re.M)
    assert stop is not None
    assert int(stop[1]) > Settings.grace_seconds
    for line in ("ProtectSystem=strict", "ReadWritePaths=/var/lib/skald", "NoNewPrivileges=yes",
                 "PrivateTmp=yes", "Restart=on-failure", "KillSignal=SIGTERM", "User=skald"):
        assert line in text.splitlines(), line


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # Point ExecStart at an executable that exists here; everything else is verified as shipped.
    unit = tmp_path / "skald.service"
    unit.write_text(UNIT.read_text().replace("/opt/skald/.venv/bin/skald", "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_unit_exposure_is_low(tmp_path: Path) -> None:
    """`systemd-analyze security` rates the unit's exposure at most 2.0 of 10 ("OK")."""
    unit = tmp_path / "skald.service"
    unit.write_text(UNIT.read_text().replace("/opt/skald/.venv/bin/skald", "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "Overall exposure level for skald.service" in result.stdout
