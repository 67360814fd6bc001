"""Bounds on the connections the server holds: time to receive a request head, and how many are open.

hypercorn (0.18) bounds neither. A connection that trickles its request head one byte at a time was held
until the keep-alive timer (75 s) ended it, and any number of them could be open at once, each a file
descriptor and a task: a few hundred slow clients tie the server up (slowloris).

- ``request_head_timeout`` (seconds): a new connection must deliver a whole request head within it, and so
  must a kept-alive one from the first byte of its next request. Bytes that trickle in do not extend it.
  A connection that sent part of a head is then answered ``408`` and closed; one that sent nothing is
  closed, as an idle keep-alive connection is.
- ``max_connections``: beyond it a new connection is answered ``503`` (``Retry-After: 1``) and closed
  before it is read; the open ones are untouched.

Both answers are problem+json with ``Connection: close``. They are written on the socket directly: the
request (if any) was never parsed, so no route, and no ASGI app, is involved. :mod:`skald.server.patches`
calls in here from hypercorn's connection task and keep-alive timer; the limits travel on hypercorn's
``Config`` (:class:`SkaldConfig`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import resource
from typing import Any

import structlog
import trio
from hypercorn.config import Config

from skald.errors import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE

log = structlog.get_logger("skald.connections")

# Descriptors kept for what is not a client connection: documents, their WAL files, read pools, logs.
_DESCRIPTOR_RESERVE = 512
# How long a refused connection is drained after our answer, so the close does not become a reset that
# destroys the answer in the client's receive buffer (the client may still be sending its request).
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 64 * 1024
# At most this many refused connections linger at once; beyond, the answer is written and the socket closed
# at once, so a flood beyond the cap cannot pile up descriptors in lingering refusals.
_MAX_LINGERING = 256


@dataclasses.dataclass
class ConnectionLimits:
    head_timeout: float
    max_connections: int
    open: int = 0  # connections served now (refused ones are not counted)
    lingering: int = 0  # refused connections being drained now

    def admit(self) -> bool:
        """Count a new connection in; ``False`` (nothing counted) when ``max_connections`` are open."""
        if self.open >= self.max_connections:
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1


class SkaldConfig(Config):
    """hypercorn's ``Config`` plus the patches its trio worker runs for this server, and the limits they enforce."""

    connection_limits: ConnectionLimits | None = None
    skald_patches: frozenset[str] = frozenset()  # names from skald.server.patches.NAMES; none: stock hypercorn


def limits_of(config: Any) -> ConnectionLimits | None:
    limits: ConnectionLimits | None = getattr(config, "connection_limits", None)
    return limits


def _answer(status: int, reason: str, code: str, detail: str, extra_headers: str = "") -> bytes:
    body = json.dumps({"type": PROBLEM_TYPE_BASE + code, "title": reason, "status": status, "detail": detail,
                       "code": code}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: {PROBLEM_CONTENT_TYPE}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n{extra_headers}\r\n")
    return head.encode() + body


HEAD_TIMEOUT_ANSWER = _answer(408, "Request Timeout", "request_head_timeout",
                              "the request head did not arrive in time")
TOO_MANY_ANSWER = _answer(503, "Service Unavailable", "too_many_connections",
                          "the server holds as many connections as it may; retry", "retry-after: 1\r\n")


async def refuse(stream: trio.abc.Stream, answer: bytes, limits: ConnectionLimits | None) -> None:
    """Write ``answer``, half-close, drain what the client still sends (briefly), close. Never raises."""
    linger = limits is None or limits.lingering < _MAX_LINGERING
    if limits is not None and linger:
        limits.lingering += 1
    try:
        # Bounded as a whole: on a TLS stream, sending means a handshake first, which a client may stall.
        with trio.move_on_after(_LINGER_SECONDS), contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError
        ):
            await stream.send_all(answer)
            if isinstance(stream, trio.abc.HalfCloseableStream):  # a TLS stream cannot half-close
                await stream.send_eof()
            drained = 0
            while linger and drained < _LINGER_BYTES:
                data = await stream.receive_some(_LINGER_BYTES)
                if not data:
                    break
                drained += len(data)
    finally:
        if limits is not None and linger:
            limits.lingering -= 1
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await stream.aclose()


def fit_descriptor_limit(max_connections: int) -> None:
    """Raise this process's soft file descriptor limit so ``max_connections`` fit (up to the hard limit).

    Past the limit, ``accept()`` fails and the kernel queues connections unanswered instead of the clean
    503 above; many systems start processes at a soft limit of 1,024. Logs a warning when even the hard
    limit is too small.
    """
    needed = max_connections + _DESCRIPTOR_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("file descriptor limit below max_connections", limit=soft, max_connections=max_connections,
                    hint="lower max_connections or raise the limit (ulimit -n, LimitNOFILE=)")
