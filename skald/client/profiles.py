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
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs

KEYS = ("url", "token")
PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ProfileError(Exception):
    """A profile setting that cannot work: a bad URL, an unknown or badly named profile."""


class NoProfile(ProfileError):
    """No server URL configured (neither profile nor ``SKALD_URL``)."""


def check_url(url: str, *, source: str = "url") -> str:
    """``url`` without a trailing slash if it is an ``http(s)://host[:port][/path]`` URL; else :class:`ProfileError`.

    ``source`` names where the value came from (``SKALD_URL``, ``--url``) for the message.
    """
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number or out of range
    except ValueError as exc:
        raise ProfileError(f"{source} {url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        hint = f": did you mean http://{url.strip()}?" if not parts.scheme or "://" not in url else ""
        raise ProfileError(f"{source} {url!r} is not an http:// or https:// URL{hint}")
    if parts.query or parts.fragment:
        raise ProfileError(f"{source} {url!r} must not have a query or fragment")
    return url.strip().rstrip("/")


def check_name(name: str) -> str:
    if not PROFILE_NAME.match(name):
        raise ProfileError(f"{name!r} is not a profile name: 1-64 of [A-Za-z0-9._-], starting with a letter or digit")
    return name


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


def resolve(profile: str | None = None, *, url: str | None = None, token: str | None = None) -> Endpoint:
    """The endpoint to talk to: ``url``/``token`` (flags) over ``SKALD_URL``/``SKALD_TOKEN`` over the profile.

    Raises :class:`NoProfile` when no URL is configured anywhere, :class:`ProfileError` for a profile
    named (by ``--profile`` or ``SKALD_PROFILE``) that does not exist or a URL that is not one.
    """
    data = load()
    name = active_name(data, profile)
    named_by = "--profile" if profile else "SKALD_PROFILE" if os.environ.get("SKALD_PROFILE") else None
    if named_by and name not in data["profiles"] and not (url or os.environ.get("SKALD_URL")):
        known = ", ".join(sorted(data["profiles"])) or "none yet"
        raise ProfileError(
            f"profile {name!r} (from {named_by}) does not exist (profiles: {known});"
            f" create it with `skald config set url URL --profile {name}`"
        )
    values = data["profiles"].get(name, {})
    if url:
        found, source = url, "--url"
    elif os.environ.get("SKALD_URL"):
        found, source = os.environ["SKALD_URL"], "SKALD_URL"
    else:
        found, source = values.get("url"), f"profile {name!r} url"
    secret = token or os.environ.get("SKALD_TOKEN") or values.get("token")
    if not found:
        raise NoProfile(
            f"no server configured (profile {name!r} has no url): give --url, set SKALD_URL, or run"
            " `skald config set url http://HOST:PORT`"
        )
    return Endpoint(name, check_url(str(found), source=source), secret)
