"""The two places skald reaches into hypercorn's trio worker, and the why of each.

1. Larger reads. hypercorn reads 64 KiB per ``recv()``; relayed bodies move in
   far fewer, larger steps with 1 MiB (measured with ``bench/relay.py``). Memory
   stays bounded: one read per connection at a time.
2. Hang-ups while a request waits. Once hypercorn holds a whole request, h11 is
   PAUSED and hypercorn stops reading that connection until the response ends,
   so the app never hears ``http.disconnect`` from a client that leaves while its
   request waits: a relay producer whose message would still be delivered later,
   a consumer that would swallow one. The connection task publishes its socket
   in a context variable (each request task inherits it) and :func:`hung_up`
   waits for that socket's ``EPOLLRDHUP`` (one shared epoll set), which fires
   on the peer's FIN or RST even while unread request bytes are queued.

:func:`apply` is idempotent; both the server and the test harness call it.
"""

from __future__ import annotations

import contextlib
import select
import socket
from contextvars import ContextVar
from typing import Any

import h11
import trio
from trio.lowlevel import RunVar

READ_SIZE = 1024 * 1024

_connection_socket: ContextVar[socket.socket | trio.socket.SocketType | None] = ContextVar(
    "skald_connection_socket", default=None
)


def apply() -> None:
    import hypercorn.protocol.h11 as hypercorn_h11
    import hypercorn.trio.tcp_server as tcp_server

    tcp_server.MAX_RECV = max(getattr(tcp_server, "MAX_RECV", 0), READ_SIZE)
    server_class: Any = tcp_server.TCPServer
    if getattr(server_class.run, "_skald_publishes_socket", False):
        return
    original_run = server_class.run

    async def run(self: Any) -> None:
        stream = self.stream
        # A plain TCP stream holds its socket; a TLS stream wraps one.
        sock = getattr(stream, "socket", None) or getattr(getattr(stream, "transport_stream", None), "socket", None)
        _connection_socket.set(sock)
        await original_run(self)

    run._skald_publishes_socket = True  # type: ignore[attr-defined]
    server_class.run = run

    protocol_class: Any = hypercorn_h11.H11Protocol
    original_init = protocol_class.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.connection.__class__ = _JoiningConnection

    protocol_class.__init__ = init


class _JoiningConnection(h11.Connection):
    """Hands back-to-back body chunks out as one ``Data`` event.

    A chunked upload (``... | curl -T -``) arrives in ~64 KiB chunks, and
    hypercorn passes each through its stream and the app's queue, one scheduler
    trip apiece; joined, a 1 MiB read makes one trip. The event that ends a run
    of chunks is held for the next call. A held ``EndOfMessage`` belongs to its
    request, so a new cycle drops it.
    """

    _held: Any = None

    def next_event(self) -> Any:
        if self._held is not None:
            event, self._held = self._held, None
            return event
        event = super().next_event()
        if type(event) is not h11.Data:
            return event
        parts, size = [event.data], len(event.data)
        while size < READ_SIZE:
            following = super().next_event()
            if type(following) is h11.Data:
                parts.append(following.data)
                size += len(following.data)
                continue
            if following is not h11.NEED_DATA and following is not h11.PAUSED:  # those two hold no state
                self._held = following
            break
        return event if len(parts) == 1 else h11.Data(data=b"".join(parts))

    def start_next_cycle(self) -> None:
        super().start_next_cycle()
        self._held = None


class _HangUps:
    """One epoll set for every waiting request's socket, and one task reading it.

    One set rather than one per request: a thousand waiting consumers cost one
    file descriptor, not a thousand more.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._waiters: dict[int, set[trio.Event]] = {}
        trio.lowlevel.spawn_system_task(self._dispatch, name="skald.hang_ups")

    async def wait(self, fd: int) -> None:
        event = trio.Event()
        waiters = self._waiters.setdefault(fd, set())
        if not waiters:
            try:
                # EPOLLHUP and EPOLLERR are reported without asking.
                self._epoll.register(fd, select.EPOLLRDHUP)
            except OSError:
                del self._waiters[fd]
                await trio.lowlevel.checkpoint()
                return  # the socket is already closed: the client is gone
        waiters.add(event)
        try:
            await event.wait()
        finally:
            waiters.discard(event)
            if not waiters and self._waiters.get(fd) is waiters:
                del self._waiters[fd]
                with contextlib.suppress(OSError, ValueError):
                    self._epoll.unregister(fd)

    async def _dispatch(self) -> None:
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                for fd, _mask in self._epoll.poll(0):
                    waiters = self._waiters.pop(fd, set())
                    with contextlib.suppress(OSError, ValueError):
                        self._epoll.unregister(fd)  # level-triggered: it would keep firing
                    for event in waiters:
                        event.set()
        finally:
            trio.lowlevel.notify_closing(self._epoll.fileno())
            self._epoll.close()


_hang_ups: RunVar[_HangUps] = RunVar("skald_hang_ups")


async def hung_up() -> None:
    """Return once this request's client has closed (or reset) its connection.

    Never returns where that cannot be seen: outside hypercorn's trio worker, or
    without epoll (non-Linux), so callers fall back to ``http.disconnect``.
    """
    sock = _connection_socket.get()
    if sock is None or not hasattr(select, "epoll"):
        await trio.sleep_forever()
        return
    try:
        watcher = _hang_ups.get()
    except LookupError:
        watcher = _HangUps()
        _hang_ups.set(watcher)
    try:
        fd = sock.fileno()
    except OSError:
        fd = -1
    if fd < 0:
        await trio.lowlevel.checkpoint()
        return  # closed already
    await watcher.wait(fd)
