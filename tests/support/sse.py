"""Read a skald SSE stream in tests without leaking httpx's generators."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import trio
from httpx_sse import aconnect_sse

Event = tuple[str, str, Any]  # (event, id, decoded data)


async def follow(
    client: httpx.AsyncClient,
    path: str,
    stop_when: Callable[[list[Event]], bool],
    params: httpx.QueryParams | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    limit_seconds: float = 30,
) -> list[Event]:
    """Collect events until ``stop_when(events)`` is true or the server ends the stream.

    Stops by cancelling rather than ``break``: cancellation unwinds httpx's nested
    async generators, while ``break`` leaves them to the garbage collector (which warns).
    """
    out: list[Event] = []
    with trio.fail_after(limit_seconds), trio.CancelScope() as stop:
        async with aconnect_sse(client, "GET", path, params=params, headers=headers or {}) as src:
            if src.response.status_code != 200:
                await src.response.aread()
                raise AssertionError(f"stream refused: {src.response.status_code} {src.response.text}")
            async for sse in src.aiter_sse():
                if stop.cancel_called:
                    continue  # events already buffered before the cancellation lands
                out.append((sse.event, sse.id, json.loads(sse.data)))
                if stop_when(out):
                    stop.cancel()
    return out


def message_ids(events: list[Event]) -> list[int]:
    return [int(e[1]) for e in events if e[0] == "message"]
