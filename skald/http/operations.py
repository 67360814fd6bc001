"""Operator surface: liveness, readiness, status and Prometheus metrics.

These routes are unauthenticated on purpose (probes and scrapers carry no
tokens); put them behind the network boundary you trust. ``/status`` shows
counts and mailbox depths, no document contents.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

from quart import Response
from quart_trio import QuartTrio

from skald import __version__
from skald.db.migrations import check_migrations
from skald.errors import ServiceUnavailable
from skald.http.state import AppState, get_state


class NotReady(ServiceUnavailable):
    code = "not_ready"
    title = "Not ready"


def install(app: QuartTrio, state: AppState) -> None:
    app.add_url_rule("/healthz", view_func=healthz, methods=["GET"])
    app.add_url_rule("/readyz", view_func=readyz, methods=["GET"])
    app.add_url_rule("/status", view_func=status, methods=["GET"])
    app.add_url_rule("/metrics", view_func=metrics, methods=["GET"])


async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


async def readyz() -> dict[str, Any]:
    state = get_state()
    data_dir = state.settings.data_dir
    try:
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".readyz-"):
            pass
    except OSError as exc:
        raise NotReady(f"data folder {data_dir} is not writable: {exc}") from None
    pending = await state.supervisor.service.read(lambda conn: check_migrations(conn, "service"))
    if pending:
        raise NotReady(f"{len(pending)} service migrations pending")
    return {"status": "ready"}


async def status() -> dict[str, Any]:
    state = get_state()
    return {
        "version": __version__,
        "uptime_seconds": round(time.time() - state.started_at, 3),
        "pid": os.getpid(),
        "data_dir": str(state.settings.data_dir),
        **state.supervisor.status(),
        **({"cluster": await state.cluster.status()} if state.cluster is not None else {}),
    }


async def metrics() -> Response:
    state = get_state()
    try:
        usage = shutil.disk_usage(state.settings.data_dir)
        state.metrics.data_dir_free.set(usage.free)
        state.metrics.data_dir_size.set(usage.total)
    except OSError:
        pass
    return Response(state.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")


