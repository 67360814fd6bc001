"""The ``keep_alive_timer`` and ``connection_limits`` patches' run-time half: one timer task per
connection, and hypercorn's read loop with the request head deadline.

hypercorn (0.18) starts a task for the keep-alive timeout after every response (with ``nursery.start()``,
which waits a scheduler round) and cancels it at the next request. At shutdown it closes idle connections
at once: one whose next request was already in the socket (or on its way: the client had just had an
answer) was left unanswered, its request reset. :class:`KeepAliveTimer` is one task per connection whose
deadline moves, and lets such a request come and be answered (a 503) first.
"""

from __future__ import annotations

import math
import select
from collections.abc import Awaitable, Callable
from typing import Protocol

import h11
import trio
from hypercorn.events import Closed, RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer

from skald.server.connection_limits import HEAD_TIMEOUT_ANSWER, limits_of, refuse
from skald.server.hang_ups import socket_of

# At shutdown, how long after its last response an idle connection may still bring a request.
SHUTDOWN_LINGER = 0.5


class TimedServer(Protocol):
    """What the timer uses of hypercorn's :class:`~hypercorn.trio.tcp_server.TCPServer` (tests fake it)."""

    async def _initiate_server_close(self) -> None: ...


async def read_data(server: TCPServer, read_size: int, limit_heads: bool) -> None:
    """hypercorn's ``TCPServer._read_data`` (0.18), reading ``read_size`` bytes at a time, plus (with
    ``limit_heads``) the request head timeout and the timer's close.

    The wait for bytes ends at the timer's ``head_due`` (infinite unless a request head is awaited): then
    a connection that sent part of a head is answered 408, and closed either way. This loop is the
    connection's only reader, so the answer can linger here without a request slipping through.
    """
    timer = server.idle_task if isinstance(server.idle_task, KeepAliveTimer) else None
    try:
        while True:
            try:
                with trio.fail_after(server.config.read_timeout or math.inf):
                    if timer is None:
                        data = await server.stream.receive_some(read_size)
                    else:
                        with trio.move_on_at(timer.head_due if limit_heads else math.inf) as timer.head_wait:
                            data = await server.stream.receive_some(read_size)
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                break
            if timer is not None:
                if timer.head_wait is not None and timer.head_wait.cancelled_caught:
                    if timer.head_begun:
                        async with server.send_lock:
                            await refuse(server.stream, HEAD_TIMEOUT_ANSWER, limits_of(server.config))
                    break
                timer.heard()  # before the protocol sees the bytes: a head they complete stops the clock
            await server.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
        await server.protocol.handle(Closed())
    finally:
        if timer is not None:
            timer.close()


class KeepAliveTimer:
    """hypercorn's keep-alive timer (``TrioSingleTask`` running ``_idle_timeout``) as one task per
    connection whose deadline moves.

    ``restart`` and ``stop`` move a deadline; the task wakes only when it passes
    (the connection idled too long) or the server shuts down, and then closes the
    connection as hypercorn's ``_idle_timeout`` does. A connection busy at
    shutdown is left to finish its response, and so is one whose next request has
    reached the socket but not hypercorn yet (it gets its answer, a 503 at
    shutdown, then the connection closes).

    A connection that answered a request less than :data:`SHUTDOWN_LINGER` ago
    is given the rest of that time for its next one: its client is likely
    sending it already, and closing now would leave that request unanswered
    (HTTP/1.1 has no way to say "send nothing more" on an idle connection). A
    request that comes gets its 503 and ``Connection: close``; a connection
    quiet for longer closes at once. :meth:`close` ends the task with the read loop.
    """

    def __init__(self) -> None:
        self.head_due = math.inf  # when the request head awaited now must have arrived (read loop's clock)
        self.head_begun = False  # bytes of that head arrived
        self.head_wait: trio.CancelScope | None = None  # the read loop's wait for bytes, ending at head_due
        self._awaiting_head = False
        self._head_timeout = math.inf
        self._fresh = True
        self._deadline = math.inf
        self._idle_since = -math.inf
        self._timer: trio.CancelScope | None = None
        self._task_scope: trio.CancelScope | None = None
        self._idle: trio.Event | None = None  # set up once the server shut down mid-request
        self._request_came: trio.Event | None = None  # set up while lingering at shutdown
        self._closed = False

    async def restart(self, task_group: TaskGroup, action: Callable[[], Awaitable[None]]) -> None:
        # hypercorn passes its TCPServer's bound ``_idle_timeout`` (the self-check holds it to that).
        server: TCPServer = action.__self__  # type: ignore[attr-defined]
        now = trio.current_time()
        self._idle_since = now
        self._move(now + server.config.keep_alive_timeout)
        # Waiting for a request head: a new connection's is due within the head timeout from now, a
        # kept-alive one's from its first byte (see heard).
        limits = limits_of(server.config)
        self._head_timeout = limits.head_timeout if limits is not None else math.inf
        self._awaiting_head, self.head_begun = True, False
        self._set_head_due(now + self._head_timeout if self._fresh else math.inf)
        self._fresh = False
        if _unparsed_bytes(server):  # the next request began before this one's answer was out
            self.heard()
        if self._idle is not None:
            self._idle.set()
        if self._task_scope is None and not self._closed:
            nursery = task_group._nursery
            assert nursery is not None, "hypercorn restarts the timer inside the connection's task group"
            self._task_scope = trio.CancelScope()
            nursery.start_soon(self._run, server, self._task_scope)

    async def stop(self) -> None:
        # A whole request head arrived (hypercorn's ``Updated(idle=False)``).
        self._awaiting_head = False
        self._set_head_due(math.inf)
        self._move(math.inf)
        if self._request_came is not None:
            self._request_came.set()

    def heard(self) -> None:
        """Bytes arrived; the first ones of an awaited request head start its clock."""
        if self._awaiting_head and not self.head_begun:
            self.head_begun = True
            self._set_head_due(min(self.head_due, trio.current_time() + self._head_timeout))

    def _set_head_due(self, deadline: float) -> None:
        # Also the wait in progress: restart() runs in another task while the read loop may be waiting.
        self.head_due = deadline
        if self.head_wait is not None:
            self.head_wait.deadline = deadline

    def close(self) -> None:
        self._closed = True
        if self._task_scope is not None:
            self._task_scope.cancel(reason="connection closed")

    def _move(self, deadline: float) -> None:
        # Only ever brought forward: a deadline pushed back (or off) is seen when the old one passes,
        # which costs a wake-up per keep-alive period instead of a deadline update per request.
        self._deadline = deadline
        if self._timer is not None and deadline < self._timer.deadline:
            self._timer.deadline = deadline

    async def _run(self, server: TCPServer, task_scope: trio.CancelScope) -> None:
        with task_scope:
            while True:
                with trio.CancelScope(deadline=self._deadline) as self._timer:
                    await server.context.terminated.wait()
                if not self._timer.cancelled_caught or trio.current_time() >= self._deadline:
                    break
            shut_down = not self._timer.cancelled_caught
            stream = getattr(server, "stream", None)  # a test's fake server may have none
            if shut_down and self._deadline != math.inf and not _bytes_waiting(stream):
                self._request_came = trio.Event()
                with trio.move_on_at(self._idle_since + SHUTDOWN_LINGER):
                    await self._request_came.wait()
            if shut_down and (self._deadline == math.inf or _bytes_waiting(stream)):
                # Shut down mid-request, or with the next request (or the client's EOF) unread: hypercorn
                # answers it and closes the connection once the response is out (or reads the EOF and
                # closes it); should it go idle instead, close it then.
                self._idle = trio.Event()
                await self._idle.wait()
            with trio.CancelScope(shield=True):
                await server._initiate_server_close()


def _unparsed_bytes(server: TCPServer) -> bool:
    """Whether the connection's h11 holds received bytes it has not parsed yet (hypercorn 0.18's layout)."""
    wrapper = getattr(server, "protocol", None)  # unset until the connection's protocol is made
    protocol = getattr(wrapper, "protocol", None)
    if not isinstance(protocol, H11Protocol):
        return False
    connection = protocol.connection
    return isinstance(connection, h11.Connection) and bool(connection.trailing_data[0])


def _bytes_waiting(stream: trio.abc.Stream | None) -> bool:
    """Whether the connection's socket has unread bytes (or an unread EOF) right now."""
    sock = socket_of(stream) if stream is not None else None
    try:
        fd = sock.fileno() if sock is not None else -1
    except OSError:
        return False
    if fd < 0:
        return False
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return bool(poll.poll(0))
