"""A real skald on 127.0.0.1:0 for integration tests.

``start_live_server(nursery, settings)`` runs the real app under hypercorn's
trio worker (:func:`skald.server.runner.serve_app`, as ``skald serve`` does) in the
test's nursery; ``SkaldProcess`` runs ``python -m skald serve`` as a
subprocess (for SIGTERM/SIGKILL tests).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from quart_trio import QuartTrio

from skald.config import Settings
from skald.http.app import create_app
from skald.http.state import AppState
from skald.server.runner import hypercorn_config, serve_app
from skald.server.shutdown import Shutdown

ADMIN_TOKEN = "skd_test_admin_token_0123456789abcdefghijklmnop"


@dataclasses.dataclass
class LiveServer:
    url: str
    settings: Settings
    app: QuartTrio
    _shutdown: Shutdown
    _done: trio.Event

    @property
    def state(self) -> AppState:
        state: AppState = self.app.extensions["skald"]
        return state

    def client(self, token: str | None = ADMIN_TOKEN, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kwargs.pop("headers", {}))
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=kwargs.pop("timeout", 30), **kwargs)

    async def mint_token(self, *scopes: str, expires: str | None = None, label: str = "test") -> str:
        """Mint a token with ``DB:ACTION[:PREFIX]`` scopes through the admin API; return its secret."""
        from skald.auth.scopes import Scope
        from skald.auth.tokens import create_token, parse_duration

        parsed = [Scope.parse(s) for s in scopes]
        expires_in = parse_duration(expires) if expires else None
        secret, _ = await self.state.supervisor.service.write(
            lambda conn: create_token(conn, scopes=parsed, label=label, owner="test", expires_in=expires_in)
        )
        return secret

    async def stop(self) -> None:
        self._shutdown.begin()
        await self._done.wait()


async def start_live_server(nursery: trio.Nursery, settings: Settings, *, graceful_timeout: float = 2) -> LiveServer:
    """The server's grace is short (a test that forgets to end a request does not wait long) unless set."""
    app = create_app(settings, print_admin_token=False)
    config = hypercorn_config(settings)
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = graceful_timeout
    shutdown: Shutdown = app.extensions["skald"].shutdown
    done = trio.Event()

    async def run(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve_app(app, config, task_status=task_status)
        finally:
            done.set()

    binds = await nursery.start(run)
    return LiveServer(binds[0], settings, app, shutdown, done)


def patches_on() -> bool:
    """Whether this test run serves with skald's hypercorn patches: ``SKALD_HYPERCORN_PATCHES`` as
    ``skald serve`` reads it (CI runs tests/compat a second time with it false)."""
    value = os.environ.get("SKALD_HYPERCORN_PATCHES", "true").strip().lower()
    return value not in {"0", "false", "no", "off"}


def patches_in_use() -> frozenset[str]:
    """The patches this run's servers apply (``SKALD_HYPERCORN_PATCHES_SKIP`` leaves some out)."""
    from skald.server.patches import enabled

    return enabled(patches_on(), os.environ.get("SKALD_HYPERCORN_PATCHES_SKIP", ""))


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    # Tests fire bursts from one IP: the limiter stays on (its code runs) but far above them.
    values: dict[str, Any] = {"rate_limit_per_second": 10_000.0, "rate_limit_burst": 100_000,
                              "hypercorn_patches": patches_on(),
                              "hypercorn_patches_skip": os.environ.get("SKALD_HYPERCORN_PATCHES_SKIP", ""),
                              **overrides}
    return Settings(data_dir=data_dir, port=0, admin_token=ADMIN_TOKEN, cookie_secure=False, **values)


class SkaldProcess:
    """``python -m skald serve`` on port 0 in a subprocess; the URL is read from its stdout."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, args: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, "SKALD_ADMIN_TOKEN": ADMIN_TOKEN, "SKALD_LOG_LEVEL": "warning", **(env or {})}
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.mqtt_port: int | None = None

    async def start(self) -> str:
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - starts at once; only the readline below blocks
            [sys.executable, "-m", "skald", "serve", "--port", "0", "--data-dir", str(self.data_dir), *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.env,
        )
        assert self.proc.stdout is not None
        while True:  # "skald mqtt listening on HOST:PORT" comes first when --mqtt-port is given
            line = await trio.to_thread.run_sync(self.proc.stdout.readline)
            mqtt = re.search(rb"mqtt listening on \S+:(\d+)", line)
            if mqtt:
                self.mqtt_port = int(mqtt[1])
                continue
            match = re.search(rb"listening on (http://\S+)", line)
            if not match:
                self.proc.kill()
                raise RuntimeError(f"server did not start: {line!r}")
            self.url = match[1].decode()
            return self.url

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, limit: float = 30) -> int:
        assert self.proc is not None
        proc = self.proc
        with trio.fail_after(limit):
            return await trio.to_thread.run_sync(proc.wait)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            await self.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


__all__ = ["ADMIN_TOKEN", "LiveServer", "SkaldProcess", "make_settings", "partial", "patches_in_use",
           "patches_on", "start_live_server"]
