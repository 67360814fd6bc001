"""Run the app under hypercorn's trio worker in this process, with graceful shutdown.

SIGINT/SIGTERM: stop accepting, refuse new requests, end streams and waits,
let in-flight requests finish (see :mod:`skald.server.shutdown`); hypercorn exits as
soon as every connection has, ``grace_seconds`` at the latest. Then the
lifespan's ``after_serving`` commits queued writes and closes every actor.
"""

from __future__ import annotations

import math
import signal
from functools import partial

import structlog
import trio
from hypercorn.config import Config
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from quart_trio import QuartTrio

from skald.config import Settings
from skald.http.app import create_app
from skald.http.state import AppState
from skald.server import patches as hypercorn_patches
from skald.server.connection_limits import ConnectionLimits, SkaldConfig, fit_descriptor_limit

log = structlog.get_logger("skald.server.runner")


def hypercorn_config(settings: Settings) -> SkaldConfig:
    """hypercorn's config for ``settings``, with skald's patches to its trio worker applied."""
    hypercorn_patches.apply()
    config = SkaldConfig()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.backlog = settings.listen_backlog  # hypercorn's 100 drops connections when a thousand arrive at once
    config.connection_limits = ConnectionLimits(settings.request_head_timeout or math.inf, settings.max_connections)
    fit_descriptor_limit(settings.max_connections)
    config.graceful_timeout = settings.grace_seconds
    config.accesslog = None
    config.errorlog = "-"
    config.keep_alive_timeout = 75
    config.h11_max_incomplete_size = 64 * 1024
    return config


async def serve_app(
    app: QuartTrio, config: Config, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run ``app`` under hypercorn's trio worker until its :class:`~skald.server.shutdown.Shutdown` begins.

    Reports the bound addresses through ``task_status``; returns once every
    connection and the lifespan have ended. skald makes the listening sockets
    (hypercorn would) so that its shutdown trigger can see their backlog: the
    connections queued there at the signal are accepted and answered, not reset.
    """
    state: AppState = app.extensions["skald"]
    sockets = config.create_sockets()
    listening = [*sockets.secure_sockets, *sockets.insecure_sockets]
    try:
        for sock in listening:
            sock.listen(config.backlog)
        state.shutdown.listening = listening
        await worker_serve(
            wrap_app(app, config.wsgi_max_body_size, "asgi"),
            config,
            sockets=sockets,
            shutdown_trigger=state.shutdown.trigger,
            task_status=task_status,
        )
    finally:
        for sock in listening:  # hypercorn closes them as it stops serving; not if it failed to start
            sock.close()


async def serve(settings: Settings, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until SIGINT/SIGTERM; reports the bound addresses through ``task_status``."""
    app = create_app(settings)
    state: AppState = app.extensions["skald"]
    config = hypercorn_config(settings)

    async def watch_signals(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                log.info("shutdown requested", signal=signal.Signals(signum).name)
                state.shutdown.begin()
                return

    async with trio.open_nursery() as nursery:
        await nursery.start(watch_signals)
        binds = await nursery.start(partial(serve_app, app, config))
        for bind in binds:
            print(f"skald listening on {bind}", flush=True)
        task_status.started(binds)
    log.info("server exited")


def run(settings: Settings) -> None:
    trio.run(serve, settings)
