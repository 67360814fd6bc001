"""Installs the cluster on a node when ``cluster_node_id`` is set; otherwise does nothing at all.

``before_serving`` (after the supervisor started) joins: Litestream, the node lease, the watchdog.
``after_serving`` (after every actor stopped and its queued writes were acknowledged) leaves: a last
sync of each owned document, then the lease is revoked so other nodes take its documents at once.
"""

from __future__ import annotations

from quart_trio import QuartTrio

from skald.cluster.forward import Forwarder
from skald.cluster.service import Cluster
from skald.config import ConfigError
from skald.http.state import AppState


def install(app: QuartTrio, state: AppState) -> None:
    settings = state.settings
    if not settings.clustered:
        return
    cluster = Cluster(settings, state.supervisor, state.metrics)
    state.cluster = cluster
    state.supervisor.placement = cluster

    def forget_tokens() -> None:
        if state.token_cache is not None:
            state.token_cache.clear()  # a token copy arrived (minted or revoked elsewhere)

    cluster.tokens.on_change.append(forget_tokens)
    forwarder = Forwarder(cluster)
    cluster.forwarder = forwarder  # create_app wraps the finished app with it (outermost)

    @app.before_serving
    async def join_cluster() -> None:
        url = settings.cluster_advertise_url
        if not url:
            host, port = state.shutdown.listening[0].getsockname()[:2] if state.shutdown.listening else ("", 0)
            if not port or host in ("0.0.0.0", "::"):
                raise ConfigError("set cluster_advertise_url: the bound address is not one other nodes can use")
            url = f"http://{host}:{port}"
        await app.nursery.start(cluster.serve, url)

    @app.after_serving
    async def leave_cluster() -> None:
        await cluster.leave()
        await forwarder.aclose()
