"""skald's h11 connection for hypercorn: chunk runs joined, request boundaries kept."""

from __future__ import annotations

import h11

from skald.hypercorn_patches import _JoiningConnection


def _request(body_chunks: list[bytes], path: bytes = b"/p/x") -> bytes:
    head = b"PUT " + path + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in body_chunks) + b"0\r\n\r\n"


def _respond(conn: h11.Connection) -> None:
    conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
    conn.send(h11.EndOfMessage())


def test_back_to_back_chunks_arrive_as_one_event_and_the_request_still_ends() -> None:
    conn = _JoiningConnection(h11.SERVER)
    conn.receive_data(_request([b"a" * 10, b"b" * 20, b"c" * 30]))
    assert isinstance(conn.next_event(), h11.Request)
    data = conn.next_event()
    assert isinstance(data, h11.Data) and bytes(data.data) == b"a" * 10 + b"b" * 20 + b"c" * 30
    assert isinstance(conn.next_event(), h11.EndOfMessage)


def test_a_pipelined_request_follows_even_if_the_answer_came_before_the_end_was_handed_out() -> None:
    conn = _JoiningConnection(h11.SERVER)
    conn.receive_data(_request([b"x" * 5, b"y" * 5]) + _request([b"z"], b"/p/second"))
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.Data)  # the EndOfMessage behind it is held
    _respond(conn)  # the app answered while hypercorn still handled the body
    conn.start_next_cycle()
    second = conn.next_event()
    assert isinstance(second, h11.Request) and second.target == b"/p/second"


def test_a_body_split_across_reads_keeps_every_byte() -> None:
    conn = _JoiningConnection(h11.SERVER)
    raw = _request([b"1" * 100, b"2" * 100, b"3" * 100])
    conn.receive_data(raw[:150])
    received = b""
    assert isinstance(conn.next_event(), h11.Request)
    while (event := conn.next_event()) is not h11.NEED_DATA:
        received += bytes(event.data)
    conn.receive_data(raw[150:])
    while not isinstance(event := conn.next_event(), h11.EndOfMessage):
        received += bytes(event.data)
    assert received == b"1" * 100 + b"2" * 100 + b"3" * 100
