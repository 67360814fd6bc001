from __future__ import annotations

import pytest

from skald.config import ConfigError, load_settings


def test_mqtt_is_off_unless_a_port_is_set() -> None:
    assert load_settings(env={}).mqtt_port is None
    assert load_settings(env={"SKALD_MQTT_PORT": "1883"}).mqtt_port == 1883
    assert load_settings(env={"SKALD_MQTT_PORT": "0"}).mqtt_port == 0  # a free port, reported at start
    assert load_settings(env={"SKALD_MQTT_PORT": ""}).mqtt_port is None
    assert load_settings(env={}, overrides={"mqtt_port": 1884}).mqtt_port == 1884


@pytest.mark.parametrize("env", [{"SKALD_MQTT_PORT": "x"}, {"SKALD_MQTT_PORT": "70000"},
                                 {"SKALD_MQTT_MAX_INFLIGHT": "0"}, {"SKALD_MQTT_SESSION_EXPIRY_SECONDS": "-1"}])
def test_bad_mqtt_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_settings(env=env)
