"""Client profiles: server URL and token per named profile, in the platform config folder.

File: ``<user config dir>/skald/config.json`` (``$XDG_CONFIG_HOME/skald`` on
Linux, via ``platformdirs``), shape ``{"current": NAME, "profiles": {NAME:
{"url": ..., "token": ...}}}``. ``SKALD_PROFILE`` picks the profile;
``SKALD_URL`` and ``SKALD_TOKEN`` override its values.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import platformdirs

KEYS = ("url", "token")


class NoProfile(Exception):
    """No server URL configured (neither profile nor ``SKALD_URL``)."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    profile: str
    url: str
    token: str | None


def config_path() -> Path:
    return Path(platformdirs.user_config_dir("skald")) / "config.json"


def load() -> dict[str, Any]:
    path = config_path()
    if not path.exists():
        return {"current": "default", "profiles": {}}
    data: dict[str, Any] = json.loads(path.read_text())
    data.setdefault("current", "default")
    data.setdefault("profiles", {})
    return data


def save(data: dict[str, Any]) -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds tokens: owner only
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)


def active_name(data: dict[str, Any], override: str | None = None) -> str:
    return override or os.environ.get("SKALD_PROFILE") or str(data["current"])


def resolve(profile: str | None = None) -> Endpoint:
    """The endpoint to talk to; raises :class:`NoProfile` when no URL is configured anywhere."""
    data = load()
    name = active_name(data, profile)
    values = data["profiles"].get(name, {})
    url = os.environ.get("SKALD_URL") or values.get("url")
    token = os.environ.get("SKALD_TOKEN") or values.get("token")
    if not url:
        raise NoProfile(
            f"no profile configured (profile {name!r} has no url): run `skald config set url http://HOST:PORT`"
        )
    return Endpoint(name, str(url).rstrip("/"), token)
