"""The places skald reaches into hypercorn's trio worker, and the why of each.

1. Larger reads. hypercorn reads 64 KiB per ``recv()``; relayed bodies move in
   far fewer, larger steps with 1 MiB (measured with ``bench/relay.py``). Memory
   stays bounded: one read per connection at a time.
2. Hang-ups while a request waits. Once hypercorn holds a whole request, h11 is
   PAUSED and hypercorn stops reading that connection until the response ends,
   so the app never hears ``http.disconnect`` from a client that leaves while its
   request waits: a relay producer whose message would still be delivered later,
   a consumer that would swallow one. The connection task publishes its socket
   in a context variable (each request task inherits it) and :func:`on_hang_up`
   watches that socket's ``EPOLLRDHUP`` (one shared epoll set), which fires
   on the peer's FIN or RST even while unread request bytes are queued.
3. Chunk runs. A chunked upload's back-to-back chunks reach the app as one
   event per read (:class:`_JoiningConnection`).
4. Fewer writes. hypercorn writes the response head, each body piece and the
   end of the message separately, each a trip through a lock, a cancel scope
   and ``send()``; a 1 KiB relayed message took three. An app that knows its
   body follows at once marks ``http.response.start`` with :data:`HOLD_HEAD`:
   the head then leaves with the first piece of body (or the end). Writes of
   nothing (the end of a sized body) are not made at all.
5. Closing is not cancelled half-way (see ``close`` in :func:`apply`).
6. The keep-alive timer. hypercorn starts a task for it after every response
   (with ``nursery.start()``, which waits a scheduler round) and cancels it at
   the next request; :class:`_KeepAliveTimer` is one task per connection whose
   deadline moves. At shutdown hypercorn closes idle connections at once: one
   whose next request was already in the socket (or on its way: the client had
   just had an answer) was left unanswered. The timer lets such a request come
   and be answered (a 503) first, and responses sent once the server shuts down
   say ``Connection: close``, as hypercorn closes after them.
7. Connection limits (:mod:`skald.server.connection_limits`). The connection task counts itself against
   ``max_connections`` (refusing with 503 beyond it), and the read loop (hypercorn's own, copied with one
   more deadline) ends the wait for a request head at ``request_head_timeout`` (408): hypercorn has neither
   bound, so a connection trickling its head was held until the keep-alive timer ended it.

:func:`apply` is idempotent; both the server and the test harness call it.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, cast

import h11
import hypercorn.trio.tcp_server as _tcp_server
import trio
from h11._readers import ContentLengthReader
from hypercorn.events import Closed, RawData
from trio.lowlevel import RunVar

from skald.server.connection_limits import HEAD_TIMEOUT_ANSWER, TOO_MANY_ANSWER, limits_of, refuse

READ_SIZE = 1024 * 1024
# At shutdown, how long after its last response an idle connection may still bring a request (see _KeepAliveTimer).
SHUTDOWN_LINGER = 0.5
# Key of an ``http.response.start`` message: the body (or its end) follows at once, send the head with it.
# Only for a sender that does not wait in between: a held head is not sent until then.
HOLD_HEAD = "skald.hold_head"

_connection_socket: ContextVar[socket.socket | trio.socket.SocketType | None] = ContextVar(
    "skald_connection_socket", default=None
)


def apply() -> None:
    import hypercorn.protocol.h11 as hypercorn_h11
    import hypercorn.protocol.http_stream as http_stream
    import hypercorn.trio.tcp_server as tcp_server

    tcp_server.MAX_RECV = max(getattr(tcp_server, "MAX_RECV", 0), READ_SIZE)
    server_class: Any = tcp_server.TCPServer
    if getattr(server_class.run, "_skald_publishes_socket", False):
        return
    original_run = server_class.run

    async def run(self: Any) -> None:
        limits = limits_of(self.config)
        if limits is not None and not limits.admit():
            await refuse(self.stream, TOO_MANY_ANSWER, limits)
            return
        try:
            _connection_socket.set(_socket_of(self.stream))
            await original_run(self)
        finally:
            if limits is not None:
                limits.release()

    original_close = server_class._close

    async def close(self: Any) -> None:
        # hypercorn may read a client's EOF and close the socket before the epoll set reports it; the
        # socket then leaves the set unreported. Whoever watches it hears of the close here instead.
        _connection_closing(_socket_of(self.stream))
        # Shielded: after a response with ``Connection: close`` hypercorn closes from the app's task,
        # which quart-trio cancels as the request ends (its message reader returns on the disconnect
        # hypercorn sends first). Cancelled at ``send_eof``'s checkpoint, the socket stayed open until
        # the client closed it, and held a shutdown for its whole grace.
        with trio.CancelScope(shield=True):
            await original_close(self)

    run._skald_publishes_socket = True  # type: ignore[attr-defined]
    server_class.run = run
    server_class._close = close

    protocol_class: Any = hypercorn_h11.H11Protocol
    original_init = protocol_class.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.connection.__class__ = _JoiningConnection

    protocol_class.__init__ = init
    _hold_heads(protocol_class, http_stream.HTTPStream, RawData)
    server_module: Any = tcp_server
    server_module.TrioSingleTask = _KeepAliveTimer
    server_class._read_data = _read_data_within_head_timeout


async def _read_data_within_head_timeout(self: Any) -> None:
    """hypercorn's ``TCPServer._read_data`` (0.18), plus the request head timeout and the timer's close.

    The wait for bytes ends at the timer's ``head_due`` (infinite unless a request head is awaited): then
    a connection that sent part of a head is answered 408, and closed either way. This loop is the
    connection's only reader, so the answer can linger here without a request slipping through.
    """
    timer: _KeepAliveTimer = self.idle_task
    try:
        while True:
            try:
                with trio.fail_after(self.config.read_timeout or math.inf):
                    with trio.move_on_at(timer.head_due) as timer.head_wait:
                        data = await self.stream.receive_some(_tcp_server.MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                break
            if timer.head_wait.cancelled_caught:
                if timer.head_begun:
                    async with self.send_lock:
                        await refuse(self.stream, HEAD_TIMEOUT_ANSWER, limits_of(self.config))
                break
            timer.heard()  # before the protocol sees the bytes: a head they complete stops the clock
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
        await self.protocol.handle(Closed())
    finally:
        timer.close()


class _KeepAliveTimer:
    """hypercorn's keep-alive timer as one task per connection whose deadline moves.

    hypercorn starts a task after every response and cancels it at the next
    request: a spawn and a cancellation per request. Here ``restart`` and
    ``stop`` move a deadline; the task wakes only when it passes (the connection
    idled too long) or the server shuts down, and then closes the connection as
    hypercorn's ``_idle_timeout`` does. A connection busy at shutdown is left to
    finish its response, and so is one whose next request has reached the socket
    but not hypercorn yet (it gets its answer, a 503 at shutdown, then the
    connection closes).

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

    async def restart(self, task_group: Any, action: Any) -> None:
        server = action.__self__  # hypercorn passes its TCPServer's bound ``_idle_timeout``
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
            self._task_scope = trio.CancelScope()
            task_group._nursery.start_soon(self._run, server, self._task_scope)

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

    async def _run(self, server: Any, task_scope: trio.CancelScope) -> None:
        with task_scope:
            while True:
                with trio.CancelScope(deadline=self._deadline) as self._timer:
                    await server.context.terminated.wait()
                if not self._timer.cancelled_caught or trio.current_time() >= self._deadline:
                    break
            shut_down = not self._timer.cancelled_caught
            stream = getattr(server, "stream", None)
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


def _unparsed_bytes(server: Any) -> bool:
    """Whether the connection's h11 holds received bytes it has not parsed yet (hypercorn 0.18's layout)."""
    connection = getattr(getattr(server, "protocol", None), "protocol", None)
    connection = getattr(connection, "connection", None)
    return isinstance(connection, h11.Connection) and bool(connection.trailing_data[0])


def _hold_heads(protocol_class: Any, stream_class: Any, raw_data: Any) -> None:
    original_app_send = stream_class.app_send

    async def app_send(self: Any, message: Any) -> None:
        if message is not None and message.get(HOLD_HEAD):
            self.skald_hold_head = True
        await original_app_send(self, message)

    async def send_h11_event(self: Any, event: Any) -> None:
        # hypercorn's own, plus the held head; and once the server shuts down, a response says
        # ``Connection: close``: hypercorn closes the connection after it anyway, and a client not told
        # so may send its next request on it in the meantime, to be left without an answer.
        if type(event) is h11.Response and self.context.terminated.is_set() and not _says_close(event):
            event = h11.Response(status_code=event.status_code, reason=event.reason,
                                 headers=[*event.headers.raw_items(), (b"connection", b"close")])
        try:
            data = self.connection.send(event)
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            return
        held = self.__dict__.pop("skald_held", None)
        if held is not None:
            data = held + data
        if type(event) is h11.Response and getattr(self.stream, "skald_hold_head", False):
            self.skald_held = data
        elif data:
            await self.send(raw_data(data=data))

    stream_class.app_send = app_send
    protocol_class._send_h11_event = send_h11_event


def _says_close(response: h11.Response) -> bool:
    return any(name == b"connection" and b"close" in value.lower() for name, value in response.headers)


class _JoiningConnection(h11.Connection):
    """Hands back-to-back body chunks out as one ``Data`` event.

    A chunked upload (``... | curl -T -``) arrives in ~64 KiB chunks, and
    hypercorn passes each through its stream and the app's queue, one scheduler
    trip apiece; joined, a 1 MiB read makes one trip. The event that ends a run
    of chunks is held for the next call. A held ``EndOfMessage`` belongs to its
    request, so a new cycle drops it.

    A sized body (``Content-Length``) read into an empty buffer is handed out as
    the very bytes read: h11 would copy them three times on the way through its
    buffer (and hypercorn once more, from the ``bytearray`` h11 hands out).
    """

    _held: Any = None
    _direct: bytes | None = None  # read while a sized body was due and nothing else waited

    def receive_data(self, data: bytes) -> None:
        reader = self._reader
        if (data and self._direct is None and type(reader) is ContentLengthReader and reader._remaining > 0
                and not self._receive_buffer):
            self._direct = bytes(data)
            return
        super().receive_data(data)

    def _extract_next_receive_event(self) -> Any:
        direct, self._direct = self._direct, None
        if direct is None:
            return super()._extract_next_receive_event()
        reader = cast(ContentLengthReader, self._reader)
        body, rest = direct[: reader._remaining], direct[reader._remaining :]
        reader._remaining -= len(body)
        if rest:  # the next (pipelined) request begins: it goes through the buffer
            super().receive_data(rest)
        return h11.Data(data=body)

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


def _bytes_waiting(stream: Any) -> bool:
    """Whether the connection's socket has unread bytes (or an unread EOF) right now."""
    sock = _socket_of(stream)
    try:
        fd = sock.fileno() if sock is not None else -1
    except OSError:
        return False
    if fd < 0:
        return False
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return bool(poll.poll(0))


def _socket_of(stream: Any) -> Any:
    # A plain TCP stream holds its socket; a TLS stream wraps one.
    return getattr(stream, "socket", None) or getattr(getattr(stream, "transport_stream", None), "socket", None)


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


def _connection_closing(sock: Any) -> None:
    try:
        watcher, fd = _hang_ups.get(), sock.fileno()
    except (LookupError, AttributeError, OSError):
        return  # nobody ever watched, or no socket
    if fd >= 0:
        watcher.fire(fd)


@contextlib.contextmanager
def on_hang_up(callback: Callable[[], None]) -> Iterator[bool]:
    """Call ``callback`` (at most once) if this request's client closes or resets its connection meanwhile.

    Yields ``False`` where that cannot be seen (outside hypercorn's trio worker,
    or without epoll, i.e. not Linux): the caller then watches ``http.disconnect``.
    """
    sock = _connection_socket.get()
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
