"""Hearing that a client hung up while its request waits (the ``hang_ups`` patch's run-time half).

Once hypercorn holds a whole request, h11 is PAUSED and hypercorn stops reading that connection until the
response ends, so the app never hears ``http.disconnect`` from a client that leaves while its request
waits: a relay producer whose message would still be delivered later, a consumer that would swallow one.
The patched connection task publishes its socket in a context variable (each request task inherits it)
and :func:`on_hang_up` watches that socket's ``EPOLLRDHUP`` (one shared epoll set), which fires on the
peer's FIN or RST even while unread request bytes are queued.
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import trio
from trio.lowlevel import RunVar

AnySocket = socket.socket | trio.socket.SocketType

connection_socket: ContextVar[AnySocket | None] = ContextVar("skald_connection_socket", default=None)
"""The socket of the connection whose request this task serves; set by the patched ``TCPServer.run``."""


def socket_of(stream: trio.abc.Stream) -> AnySocket | None:
    """The socket under hypercorn's connection stream: a plain TCP stream holds it, a TLS stream wraps one."""
    if isinstance(stream, trio.SocketStream):
        return stream.socket
    if isinstance(stream, trio.SSLStream) and isinstance(stream.transport_stream, trio.SocketStream):
        return stream.transport_stream.socket
    return None


class _HangUps:
    """One epoll set for every waiting request's socket, and one task reading it.

    One set rather than one per request: a thousand waiting consumers cost one
    file descriptor, not a thousand more. Watchers are callbacks, not tasks: a
    request that waits costs no task of its own for this.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._callbacks: dict[int, list[Callable[[], None]]] = {}
        trio.lowlevel.spawn_system_task(self._dispatch, name="skald.hang_ups")

    def add(self, fd: int, callback: Callable[[], None]) -> bool:
        """Watch ``fd`` for ``callback``; ``False`` if the socket is closed already (nothing is watched)."""
        callbacks = self._callbacks.get(fd)
        if callbacks is None:
            try:
                # EPOLLHUP and EPOLLERR are reported without asking.
                self._epoll.register(fd, select.EPOLLRDHUP)
            except OSError:
                return False
            callbacks = self._callbacks[fd] = []
        callbacks.append(callback)
        return True

    def discard(self, fd: int, callback: Callable[[], None]) -> None:
        callbacks = self._callbacks.get(fd)
        if callbacks is None or callback not in callbacks:
            return  # fired already
        callbacks.remove(callback)
        if not callbacks:
            del self._callbacks[fd]
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def fire(self, fd: int) -> None:
        """``fd`` hung up or is about to close: call its watchers and forget it."""
        callbacks = self._callbacks.pop(fd, None)
        if callbacks is None:
            return  # not watched
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fd)  # level-triggered: it would keep firing
        for callback in callbacks:
            callback()

    async def _dispatch(self) -> None:
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                for fd, _mask in self._epoll.poll(0):
                    self.fire(fd)
        finally:
            trio.lowlevel.notify_closing(self._epoll.fileno())
            self._epoll.close()


_hang_ups: RunVar[_HangUps] = RunVar("skald_hang_ups")


def connection_closing(sock: AnySocket | None) -> None:
    """The server is about to close ``sock``: whoever watches it hears of it now.

    hypercorn may read a client's EOF and close the socket before the epoll set
    reports it; a closed descriptor leaves the set unreported.
    """
    if sock is None:
        return
    try:
        watcher, fd = _hang_ups.get(), sock.fileno()
    except (LookupError, OSError):
        return  # nobody ever watched, or no socket
    if fd >= 0:
        watcher.fire(fd)


@contextlib.contextmanager
def on_hang_up(callback: Callable[[], None]) -> Iterator[bool]:
    """Call ``callback`` (at most once) if this request's client closes or resets its connection meanwhile.

    Yields ``False`` where that cannot be seen (outside hypercorn's trio worker,
    with ``hypercorn_patches`` off, or without epoll, i.e. not Linux): the
    caller then watches ``http.disconnect``.
    """
    sock = connection_socket.get()
    if sock is None or not hasattr(select, "epoll"):
        yield False
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
    if fd < 0 or not watcher.add(fd, callback):
        callback()  # closed already: the client is gone
        yield True
        return
    try:
        yield True
    finally:
        watcher.discard(fd, callback)
