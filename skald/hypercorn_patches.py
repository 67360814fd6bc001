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
   waits on an epoll set holding just that socket with ``EPOLLRDHUP``, which
   fires on the peer's FIN or RST even while unread request bytes are queued.

:func:`apply` is idempotent; both the server and the test harness call it.
"""

from __future__ import annotations

import select
import socket
from contextvars import ContextVar
from typing import Any

import trio

READ_SIZE = 1024 * 1024

_connection_socket: ContextVar[socket.socket | trio.socket.SocketType | None] = ContextVar(
    "skald_connection_socket", default=None
)


def apply() -> None:
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


async def hung_up() -> None:
    """Return once this request's client has closed (or reset) its connection.

    Never returns where that cannot be seen: outside hypercorn's trio worker, or
    without epoll (non-Linux), so callers fall back to ``http.disconnect``.
    """
    sock = _connection_socket.get()
    if sock is None or not hasattr(select, "epoll"):
        await trio.sleep_forever()
        return
    with select.epoll(1) as watch:
        try:
            # EPOLLHUP and EPOLLERR are reported without asking.
            watch.register(sock.fileno(), select.EPOLLRDHUP)
        except (OSError, ValueError):
            return  # the socket is already closed: the client is gone
        try:
            await trio.lowlevel.wait_readable(watch.fileno())
        finally:
            trio.lowlevel.notify_closing(watch.fileno())
