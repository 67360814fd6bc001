"""The framework ceiling: a no-op quart-trio POST on stock hypercorn (trio worker), no skald.

``bench/http_stack.py`` serves it beside skald and drives both the same way, so the run shows
how much of each skald figure is the HTTP stack itself. :func:`serve_forever` prints
``listening on http://127.0.0.1:PORT`` and serves until killed; run as a script (``make
bench`` runs every ``bench/*.py``) this module only says so and exits.
"""

from __future__ import annotations

import sys

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import request
from quart_trio import QuartTrio

app = QuartTrio(__name__)


@app.post("/ping")
async def ping() -> dict[str, bool]:
    await request.get_json(force=True, silent=True)  # skald's /ping parses its body too
    return {"ok": True}


async def main() -> None:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.backlog = 4096  # as skald's listen_backlog: neither side drops connects
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(_serve, config)
        print(f"listening on {binds[0]}", flush=True)


async def _serve(config: Config, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    await serve(app, config, task_status=task_status)


def serve_forever() -> None:
    try:
        trio.run(main)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    print("bench/noop_app.py is the no-op app bench/http_stack.py serves; run that instead")
