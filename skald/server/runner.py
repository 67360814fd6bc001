"""Run the app under hypercorn's trio worker in this process, with graceful shutdown.

SIGINT/SIGTERM: stop accepting, refuse new requests, end streams and waits,
let in-flight requests finish (see :mod:`skald.server.shutdown`); hypercorn exits as
soon as every connection has, ``grace_seconds`` at the latest. Then the
lifespan's ``after_serving`` commits queued writes and closes every actor.
"""

from __future__ import annotations

import errno
import math
import signal
import socket

import structlog
import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from quart_trio import QuartTrio

from skald.config import ConfigError, Settings
from skald.http.app import create_app
from skald.http.state import AppState
from skald.server import native_memory, tracemalloc_dumps
from skald.server import patches as hypercorn_patches
from skald.server.connection_limits import ConnectionLimits, SkaldConfig, fit_descriptor_limit

log = structlog.get_logger("skald.server.runner")


def hypercorn_config(settings: Settings) -> SkaldConfig:
    """hypercorn's config for ``settings``, with skald's patches to its trio worker applied.

    Raises :class:`~skald.server.patches.HypercornPatchMismatch` (one line: which patch, what differs,
    the setting that turns the patches off) when the installed hypercorn or h11 is not the code a patch
    was written for, and :class:`~skald.config.ConfigError` for an unknown name in
    ``hypercorn_patches_skip``.
    """
    try:
        names = hypercorn_patches.enabled(settings.hypercorn_patches, settings.hypercorn_patches_skip)
    except ValueError as exc:
        raise ConfigError(f"hypercorn_patches_skip: {exc}") from None
    hypercorn_patches.apply(names)
    if "connection_limits" not in names:
        log.warning("hypercorn patches off: max_connections and request_head_timeout are not enforced",
                    patches=sorted(names))
    config = SkaldConfig()
    config.skald_patches = names
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


class CannotListen(Exception):
    """The configured address cannot be bound (in use, not this machine's, a port out of range)."""


def bind_sockets(config: Config) -> Sockets:
    """Bind (not yet listen on) the configured addresses; :class:`CannotListen` with one clear line if not.

    ``skald serve`` binds before anything else starts, so a busy or bad port stops it before the data
    folder is touched and before a first start mints (and prints) an admin token.
    """
    try:
        return config.create_sockets()
    except OverflowError as exc:  # socket.bind's "port must be 0-65535"
        raise CannotListen(f"cannot listen on {', '.join(config.bind)}: {exc}".replace("bind(): ", "")) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = " (is another server running there? choose another --port)" if exc.errno == errno.EADDRINUSE else ""
        raise CannotListen(f"cannot listen on {', '.join(config.bind)}: {reason.lower()}{hint}") from None


def bind_mqtt_sockets(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Bind and listen on the MQTT address; :class:`CannotListen` with one clear line if not (as for HTTP)."""
    from skald.mqtt.service import listen_sockets

    where = f"{host}:{port}"
    try:
        return listen_sockets(host, port, backlog)
    except OverflowError as exc:
        raise CannotListen(f"cannot listen for MQTT on {where}: {exc}".replace("bind(): ", "")) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = " (is another broker running there? choose another --mqtt-port)" if exc.errno == errno.EADDRINUSE else ""
        raise CannotListen(f"cannot listen for MQTT on {where}: {reason.lower()}{hint}") from None


async def serve_app(
    app: QuartTrio,
    config: Config,
    *,
    sockets: Sockets | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``app`` under hypercorn's trio worker until its :class:`~skald.server.shutdown.Shutdown` begins.

    Reports the bound addresses through ``task_status``; returns once every
    connection and the lifespan have ended. Raises
    :class:`~skald.server.patches.HypercornPatchMismatch` before serving if a patch ``config`` names does
    not fit the installed hypercorn (a config made by :func:`hypercorn_config` was checked already).
    skald makes the listening sockets
    (hypercorn would) so that its shutdown trigger can see their backlog: the
    connections queued there at the signal are accepted and answered, not reset.
    """
    state: AppState = app.extensions["skald"]
    # A config made elsewhere than hypercorn_config is checked here too: no patch runs unchecked.
    hypercorn_patches.apply(getattr(config, "skald_patches", frozenset()))
    sockets = bind_sockets(config) if sockets is None else sockets
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
    """Serve until SIGINT/SIGTERM; reports the bound addresses through ``task_status``.

    Raises :class:`CannotListen` before starting anything when the address cannot be bound.
    """
    config = hypercorn_config(settings)
    sockets = bind_sockets(config)
    mqtt_sockets: list[socket.socket] = []
    if settings.tracemalloc:
        tracemalloc_dumps.start()  # before the app exists: its allocations are traced too
    native_memory.limit_arenas(settings.malloc_arena_max)  # before any actor thread exists
    try:
        if settings.mqtt_port is not None:
            # The HTTP sockets listen first (serve_app's listen() again is harmless): a port that is
            # bound but not listening can be bound a second time with SO_REUSEADDR.
            for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
                sock.listen(config.backlog)
            mqtt_sockets = bind_mqtt_sockets(settings.host, settings.mqtt_port, settings.listen_backlog)
        app = create_app(settings)
    except BaseException:
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets, *mqtt_sockets]:
            sock.close()
        raise
    state: AppState = app.extensions["skald"]
    if state.mqtt is not None:
        state.mqtt.bound = mqtt_sockets  # the listener listens on these instead of binding again

    async def watch_signals(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                log.info("shutdown requested", signal=signal.Signals(signum).name)
                state.shutdown.begin()
                return

    housekeeping = trio.CancelScope()  # memory trims and tracemalloc dumps: they end with serving

    async def serve_then_stop(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve_app(app, config, sockets=sockets, task_status=task_status)
        finally:
            housekeeping.cancel(reason="server exited")

    async def dump_memory(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        with housekeeping:
            await tracemalloc_dumps.serve_tracemalloc_dumps(settings.data_dir, task_status=task_status)

    async def trim_memory(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with housekeeping:
            await native_memory.serve_memory_trims(settings.malloc_trim_seconds, task_status=task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(watch_signals)
        if settings.tracemalloc:
            await nursery.start(dump_memory)
        if settings.malloc_trim_seconds > 0:
            await nursery.start(trim_memory)
        binds = await nursery.start(serve_then_stop)
        for bind in binds:
            print(f"skald listening on {bind}", flush=True)
        task_status.started(binds)
    log.info("server exited")


def run(settings: Settings) -> None:
    trio.run(serve, settings)
