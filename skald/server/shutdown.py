"""The server stopping, as every part that must react to it sees it.

hypercorn's graceful shutdown stops accepting and then waits, up to
``grace_seconds``, for every connection to finish. It ends as soon as they
have, so a prompt shutdown needs every request to end on its own:

- a new request (one that arrives on a kept-alive connection, or a relay
  request) is refused with 503 ``shutting_down`` and ``Connection: close``;
- a long-lived stream (pub/sub SSE, query watch, change feed) sends a final
  ``shutdown`` event and ends;
- a wait for something that may never come (a relay consumer with no producer,
  a producer with no consumer, a requester with no responder) runs under
  :meth:`Shutdown.unless_stopping`, which ends it with :class:`ShuttingDown`;
- work already under way (a query, a commit, a relayed body) finishes.

Then the lifespan's ``after_serving`` commits queued writes and closes every
actor (:meth:`skald.db.supervisor.Supervisor.aclose`).
"""

from __future__ import annotations

import select
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from skald.errors import ShuttingDown
from skald.http.sse import json_event

T = TypeVar("T")

SHUTDOWN_DETAIL = "server is shutting down; retry"
# How long the stop may wait for the accept loop to take the connections queued in the backlog.
BACKLOG_LIMIT = 1.0
STREAM_END_DETAIL = "server is shutting down; reconnect to resume"


class Shutdown:
    """One per app: :meth:`begin` starts the stop, everything else watches it."""

    def __init__(self) -> None:
        self.event = trio.Event()
        """Set by :meth:`begin`; streams wait on it beside their own wake-ups."""
        self._waits: set[trio.CancelScope] = set()
        self.listening: list[socket.socket] = []
        """The listening sockets (:func:`skald.server.runner.serve_app` sets them), for :meth:`trigger`."""

    @property
    def stopping(self) -> bool:
        return self.event.is_set()

    def begin(self) -> None:
        """Stop: refuse new requests, end streams, end every wait under :meth:`unless_stopping`.

        Idempotent, synchronous (a signal handler's task calls it without awaiting anything).
        """
        self.event.set()
        for scope in self._waits:
            scope.cancel(reason="shutting down")

    async def trigger(self) -> None:
        """hypercorn's ``shutdown_trigger``: return once the server is to stop accepting.

        Calls :meth:`begin` too, so the waits end even where someone set :attr:`event` directly.
        Returns once no connection waits in a listening socket's backlog (``BACKLOG_LIMIT`` at
        most, for a flood): hypercorn closes the listening sockets then, and the kernel resets
        the connections still queued, whose clients had sent requests nobody would answer.
        Until then hypercorn's accept loop takes them, and they are answered (503).
        """
        await self.event.wait()
        self.begin()
        with trio.move_on_after(BACKLOG_LIMIT):
            # No event says "the backlog is empty": look again after each round of the scheduler,
            # in which the accept loop takes what is queued. It ends in a round or two unless flooded.
            while any(_connection_queued(sock) for sock in self.listening):
                await trio.lowlevel.checkpoint()

    def refuse_if_stopping(self) -> None:
        """Raise :class:`ShuttingDown` (with ``Connection: close``) once the server is stopping."""
        if self.stopping:
            raise refusal()

    async def unless_stopping(self, wait: Callable[[], Awaitable[T]]) -> T:
        """``await wait()``, unless the server stops first: then raise :class:`ShuttingDown`.

        For waits that may never end on their own. ``wait`` is cancelled at
        :meth:`begin` and must leave nothing behind when it is (the relay's
        rendezvous queues remove a cancelled waiter). A ``wait`` that already
        returned when the stop came keeps its result: the work it paired with goes on.
        """
        self.refuse_if_stopping()
        result: list[T] = []
        with trio.CancelScope() as scope:
            self._waits.add(scope)
            try:
                result.append(await wait())
            finally:
                self._waits.discard(scope)
        if not result:  # only begin() cancels this scope: an outer cancellation propagated above
            raise refusal()
        return result[0]


def _connection_queued(sock: socket.socket) -> bool:
    if sock.fileno() < 0:
        return False
    poll = select.poll()
    poll.register(sock, select.POLLIN)  # a listening socket is readable while its backlog holds a connection
    return bool(poll.poll(0))


def refusal() -> ShuttingDown:
    error = ShuttingDown(SHUTDOWN_DETAIL)
    # Do not invite another request on this connection: the next one goes to a live server.
    error.headers["Connection"] = "close"
    return error


def final_event(**resume: Any) -> bytes:
    """The SSE event a stream ends with at shutdown: ``event: shutdown``, data ``{"code": "shutting_down", …}``.

    ``resume`` adds where to resume from (``resume_from``: the last id sent). It has no
    ``id:`` line, so an ``EventSource``'s ``Last-Event-ID`` stays the last event it received.
    """
    data = {"code": "shutting_down", "detail": STREAM_END_DETAIL, **resume}
    return json_event("shutdown", data)
