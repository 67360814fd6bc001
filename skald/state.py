"""The per-app state every route reaches through :func:`get_state`."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from quart import current_app

from skald.config import Settings
from skald.metrics import Metrics
from skald.shutdown import Shutdown
from skald.supervisor import Supervisor


@dataclasses.dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    supervisor: Supervisor
    started_at: float = dataclasses.field(default_factory=time.time)
    shutdown: Shutdown = dataclasses.field(default_factory=Shutdown)
    # Capability services register themselves here by name (e.g. "pubsub", "relay")
    # so routes find them without import cycles; each value is owned by its module.
    services: dict[str, Any] = dataclasses.field(default_factory=dict)


def get_state() -> AppState:
    state: AppState = current_app.extensions["skald"]
    return state
