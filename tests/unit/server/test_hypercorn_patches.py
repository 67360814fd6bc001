"""skald's reach into hypercorn: chunk runs joined with request boundaries kept, hang-ups seen."""

from __future__ import annotations

import socket
import types

import h11
import trio
import trio.testing
from hypercorn.trio.task_group import TaskGroup

from skald.relay import io as relay_io
from skald.server import hang_ups, keep_alive
from skald.server.h11_reads import JoiningConnection


def _request(body_chunks: list[bytes], path: bytes = b"/p/x") -> bytes:
    head = b"PUT " + path + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in body_chunks) + b"0\r\n\r\n"


def _respond(conn: h11.Connection) -> None:
    conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
    conn.send(h11.EndOfMessage())


def test_back_to_back_chunks_arrive_as_one_event_and_the_request_still_ends() -> None:
    conn = JoiningConnection(h11.SERVER)
    conn.receive_data(_request([b"a" * 10, b"b" * 20, b"c" * 30]))
    assert isinstance(conn.next_event(), h11.Request)
    data = conn.next_event()
    assert isinstance(data, h11.Data) and bytes(data.data) == b"a" * 10 + b"b" * 20 + b"c" * 30
    assert isinstance(conn.next_event(), h11.EndOfMessage)


def test_a_pipelined_request_follows_even_if_the_answer_came_before_the_end_was_handed_out() -> None:
    conn = JoiningConnection(h11.SERVER)
    conn.receive_data(_request([b"x" * 5, b"y" * 5]) + _request([b"z"], b"/p/second"))
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.Data)  # the EndOfMessage behind it is held
    _respond(conn)  # the app answered while hypercorn still handled the body
    conn.start_next_cycle()
    second = conn.next_event()
    assert isinstance(second, h11.Request) and second.target == b"/p/second"


def test_a_body_split_across_reads_keeps_every_byte() -> None:
    conn = JoiningConnection(h11.SERVER)
    raw = _request([b"1" * 100, b"2" * 100, b"3" * 100])
    conn.receive_data(raw[:150])
    received = b""
    assert isinstance(conn.next_event(), h11.Request)
    while isinstance(event := conn.next_event(), h11.Data):
        received += bytes(event.data)
    assert event is h11.NEED_DATA
    conn.receive_data(raw[150:])
    while isinstance(event := conn.next_event(), h11.Data):
        received += bytes(event.data)
    assert isinstance(event, h11.EndOfMessage)
    assert received == b"1" * 100 + b"2" * 100 + b"3" * 100


def test_a_sized_body_is_handed_out_as_the_bytes_read_and_a_pipelined_request_follows() -> None:
    conn = JoiningConnection(h11.SERVER)
    conn.receive_data(b"PUT /p/x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    assert conn.next_event() is h11.NEED_DATA
    first = b"0123"
    conn.receive_data(first)
    data = conn.next_event()
    assert isinstance(data, h11.Data) and data.data is first  # not copied
    assert conn.next_event() is h11.NEED_DATA
    conn.receive_data(b"456789" + b"GET /p/next HTTP/1.1\r\nHost: x\r\n\r\n")
    data = conn.next_event()
    assert isinstance(data, h11.Data) and data.data == b"456789"
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    _respond(conn)
    conn.start_next_cycle()
    second = conn.next_event()
    assert isinstance(second, h11.Request) and second.target == b"/p/next"


async def test_a_hang_up_calls_back_without_a_task_and_a_finished_watch_forgets_the_socket() -> None:
    server, client = socket.socketpair()
    calls: list[str] = []
    token = hang_ups.connection_socket.set(server)
    try:
        with hang_ups.on_hang_up(lambda: calls.append("first")) as watched:
            assert watched
            await trio.testing.wait_all_tasks_blocked()
            assert calls == []
        with hang_ups.on_hang_up(lambda: calls.append("second")):
            client.close()
            with trio.fail_after(10):  # a guard against hanging, not a speed check
                while not calls:
                    await trio.lowlevel.wait_readable(server)  # readable at EOF; the dispatcher runs meanwhile
                    await trio.testing.wait_all_tasks_blocked()
        assert calls == ["second"]  # the first watch ended before the hang-up
    finally:
        hang_ups.connection_socket.reset(token)
        server.close()


async def test_without_a_watchable_socket_the_request_watches_http_disconnect() -> None:
    left, gone = trio.Event(), trio.Event()

    async def client_left() -> bool:
        await left.wait()
        return True

    async with relay_io.unless_gone(gone, client_left):
        await trio.testing.wait_all_tasks_blocked()
        assert not gone.is_set()
        left.set()
        await trio.sleep_forever()  # cancelled once the client left
    assert gone.is_set()


async def test_a_connection_closed_by_the_server_before_its_hang_up_was_reported_still_calls_back() -> None:
    server, client = socket.socketpair()
    calls: list[str] = []
    token = hang_ups.connection_socket.set(server)
    try:
        with hang_ups.on_hang_up(lambda: calls.append("closed")):
            hang_ups.connection_closing(server)  # what hypercorn's close now does first
            server.close()  # a closed descriptor leaves the epoll set without a report
            assert calls == ["closed"]
        # The descriptor number is free for the next connection, whose watch must work.
        reused, peer = socket.socketpair()
        hang_ups.connection_socket.set(reused)
        with hang_ups.on_hang_up(lambda: calls.append("next")):
            peer.close()
            with trio.fail_after(10):  # a guard against hanging, not a speed check
                while len(calls) < 2:
                    await trio.lowlevel.wait_readable(reused)
                    await trio.testing.wait_all_tasks_blocked()
        assert calls == ["closed", "next"]
        reused.close()
    finally:
        hang_ups.connection_socket.reset(token)
        client.close()


class _FakeServer:
    """What the keep-alive timer uses of hypercorn's TCPServer."""

    def __init__(self) -> None:
        self.config = types.SimpleNamespace(keep_alive_timeout=5.0)
        self.context = types.SimpleNamespace(terminated=trio.Event())
        self.closed_at: list[float] = []
        self.stream: trio.SocketStream | None = None  # the timer reads it as getattr(server, "stream", None)

    async def _initiate_server_close(self) -> None:
        self.closed_at.append(trio.current_time())

    async def _idle_timeout(self) -> None:  # only its binding matters: the timer finds the server through it
        raise AssertionError("the timer closes the connection itself")


class _Connection:
    """A connection's keep-alive timer in ``nursery``, armed as hypercorn arms it when the connection opens."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.server, self.timer = _FakeServer(), keep_alive.KeepAliveTimer()
        self._group = TaskGroup()
        self._group._nursery = nursery

    @classmethod
    async def open(cls, nursery: trio.Nursery) -> _Connection:
        connection = cls(nursery)
        await connection.idle()
        return connection

    async def idle(self) -> None:
        await self.timer.restart(self._group, self.server._idle_timeout)

    async def busy(self) -> None:
        await self.timer.stop()


async def test_the_keep_alive_timer_closes_an_idle_connection_and_spares_a_busy_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        connection = await _Connection.open(nursery)
        await trio.sleep(4)
        await connection.busy()  # a request arrived after 4 s
        await trio.sleep(60)  # it takes a minute: no close meanwhile
        assert connection.server.closed_at == []
        await connection.idle()  # answered
    assert connection.server.closed_at == [start + 64 + 5]


async def test_the_keep_alive_timer_closes_at_shutdown_once_idle_and_ends_quietly_with_its_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        idle = await _Connection.open(nursery)
        await trio.sleep(1)
        idle.server.context.terminated.set()
    assert idle.server.closed_at == [start + 1]  # an idle connection closes at shutdown

    async with trio.open_nursery() as nursery:
        busy = await _Connection.open(nursery)
        await busy.busy()  # a request is being answered
        busy.server.context.terminated.set()
        await trio.sleep(30)
        assert busy.server.closed_at == []  # its response may finish
        await busy.idle()  # answered and idle: now it closes
    assert busy.server.closed_at == [start + 1 + 30]

    async with trio.open_nursery() as nursery:
        ended = await _Connection.open(nursery)
        await trio.sleep(1)
        ended.timer.close()  # the read loop ended: the task goes, closing nothing
    assert ended.server.closed_at == []


async def test_at_shutdown_an_idle_connection_whose_next_request_has_arrived_is_answered_before_it_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # hypercorn had not read the request yet when the server shut down: closing then reset the
    # connection under a request the client had sent, and it never got an answer.
    start = trio.current_time()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        async with trio.open_nursery() as nursery:
            connection = await _Connection.open(nursery)
            connection.server.stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
            theirs.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            connection.server.context.terminated.set()
            await trio.sleep(1)
            assert connection.server.closed_at == []  # the request gets its answer (a 503) first
            await connection.busy()  # hypercorn reads it...
            await connection.idle()  # ...and answers it: now the connection closes
        assert connection.server.closed_at == [start + 1]

        async with trio.open_nursery() as nursery:
            quiet = await _Connection.open(nursery)
            quiet.server.stream = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))  # nothing waits on this end
            await trio.sleep(2)  # past the shutdown linger, within the keep-alive timeout
            quiet.server.context.terminated.set()
        assert quiet.server.closed_at == [start + 1 + 2]  # quiet for a while: closed at once


async def test_at_shutdown_a_connection_that_just_answered_is_given_a_moment_for_the_request_on_its_way(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Its client had just had an answer and was about to send the next request: closing at once
    # left that request without an answer.
    linger = keep_alive.SHUTDOWN_LINGER
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        active = await _Connection.open(nursery)  # answered a request at ``start``
        active.server.context.terminated.set()
        await trio.sleep(linger / 2)
        assert active.server.closed_at == []
        await active.busy()  # the next request came: it is answered (a 503) before the close
        await trio.sleep(linger * 4)
        assert active.server.closed_at == []
        await active.idle()
    assert active.server.closed_at == [start + linger / 2 + linger * 4]

    async with trio.open_nursery() as nursery:
        quiet = await _Connection.open(nursery)
        quiet.server.context.terminated.set()
    assert quiet.server.closed_at == [start + linger / 2 + linger * 4 + linger]  # no request came: closed
