"""Install the MQTT adapter: no HTTP routes, only the listener's lifecycle in the app's nursery.

Off unless ``mqtt_port`` is set. The listener starts in ``before_serving``, after the
supervisor and the pub/sub service (it needs both), in ``app.nursery``: the same trio
run as hypercorn. It stops on the app's :class:`~skald.server.shutdown.Shutdown`, before
``after_serving`` closes the actors, so every session is saved first.
"""

from __future__ import annotations

from quart_trio import QuartTrio

from skald.http.state import AppState
from skald.mqtt.service import MqttService


def install(app: QuartTrio, state: AppState) -> None:
    if state.settings.mqtt_port is None:
        return
    service = MqttService(state)
    state.mqtt = service

    @app.before_serving
    async def start_mqtt() -> None:
        port = await app.nursery.start(service.serve)
        # The line scripts and tests read (as "skald listening on ..." for HTTP).
        print(f"skald mqtt listening on {state.settings.host}:{port}", flush=True)
