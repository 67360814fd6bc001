from __future__ import annotations

from pathlib import Path

import pytest

from skald.config import ConfigError, load_settings


def test_layers_defaults_file_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "skald.toml"
    cfg.write_text('idle_timeout = 5\n[server]\nport = 9000\nhost = "0.0.0.0"\n[log]\nlevel = "debug"\n')
    assert load_settings(env={}).port == 8080
    s = load_settings(cfg, env={})
    assert (s.port, s.host, s.log_level) == (9000, "0.0.0.0", "debug")
    s = load_settings(cfg, env={"SKALD_PORT": "9100", "SKALD_DATA_DIR": "/tmp/x"})
    assert s.port == 9100 and s.data_dir == Path("/tmp/x")
    s = load_settings(cfg, env={"SKALD_PORT": "9100"}, overrides={"port": 9200, "host": None})
    assert s.port == 9200 and s.host == "0.0.0.0"


def test_config_file_from_env_and_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "skald.toml"
    cfg.write_text("mailbox_size = 7\n")
    assert load_settings(env={"SKALD_CONFIG": str(cfg)}).mailbox_size == 7
    cfg.write_text("no_such_setting = 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings(cfg, env={})
    with pytest.raises(ConfigError):
        load_settings(env={"SKALD_PORT": "eighty"})
    with pytest.raises(ConfigError):
        load_settings(env={"SKALD_LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError, match="fanout_interval_seconds"):
        load_settings(env={"SKALD_FANOUT_INTERVAL_SECONDS": "-0.1"})
    assert load_settings(env={"SKALD_FANOUT_INTERVAL_SECONDS": "0"}).fanout_interval_seconds == 0
    assert load_settings(env={"SKALD_COOKIE_SECURE": "false"}).cookie_secure is False
