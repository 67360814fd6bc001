"""When a relayed message counts as delivered, and how its framing reaches the consumer.

The consumers here behave as curl does: they close the connection the moment the response is
complete (:mod:`support.rawhttp`, in threads beside the server's loop). A producer must get 200
whenever its consumer received the whole message (a script that retries on 502 would otherwise
send twice), and the consumer's framing is the relay's own, never a header someone asked for.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import trio
from support import rawhttp
from support.live import LiveServer, make_settings, start_live_server
from support.relay import channel_key, wait_for_requests, wait_for_waiters

from skald.relay.channels import RelayHub, RequestChannels

PAIRS = 500


def _hub(server: LiveServer) -> RelayHub:
    hub: RelayHub = server.state.relay
    return hub


async def _request(server: LiveServer, head: bytes, body: bytes = b"") -> rawhttp.RawResponse:
    return await trio.to_thread.run_sync(partial(rawhttp.request, server, head, body))


async def test_a_consumer_that_hangs_up_once_it_has_the_whole_message_is_a_delivery(
    nursery: trio.Nursery, data_dir: Path
) -> None:
    """curl closes once it has ``Content-Length`` bytes: that is a delivery, the producer's 200 (not 502)."""
    server = await start_live_server(nursery, make_settings(data_dir, public_rate_burst=10 * PAIRS))
    key = channel_key("public", "p", "pairs")
    consumed: list[rawhttp.RawResponse] = []
    false_502s: list[int] = []

    async def consume() -> None:
        consumed.append(await _request(server, b"GET /p/pairs HTTP/1.1\r\nHost: x\r\n\r\n"))

    for n in range(PAIRS):  # one pair after another, each consumer waiting first (as `curl … & curl -d …`)
        body = f"message {n}".encode()
        async with trio.open_nursery() as pair:
            pair.start_soon(consume)
            await wait_for_waiters(_hub(server), key, consumers=1)
            head = b"POST /p/pairs HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
            produced = await _request(server, head, body)
        got = consumed.pop()
        assert got.status == 200 and got.complete and got.body == body
        if produced.status != 200:
            false_502s.append(n)
    assert false_502s == [], f"{len(false_502s)} of {PAIRS} producers were told 502 after a whole delivery"
    await server.stop()


# A producer or responder asking for these would reframe the consumer's response; none may pass.
FRAMING_ASKED = (
    b"Patch-H-Content-Length: 100\r\nPatch-H-Transfer-Encoding: chunked\r\nPatch-H-Connection: close\r\n"
    b"Patch-H-Keep-Alive: timeout=1\r\nPatch-H-TE: trailers\r\nPatch-H-Trailer: X-Sum\r\n"
    b"Patch-H-Upgrade: websocket\r\nPatch-H-Host: elsewhere.example\r\nPatch-H-X-Kept: yes\r\n"
)
FRAMING_NAMES = {"transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade"}


def _assert_framed_by_the_relay(response: rawhttp.RawResponse, body: bytes) -> None:
    assert response.status == 200 and response.complete and response.body == body
    assert response.header("content-length") == str(len(body))
    assert not response.names() & FRAMING_NAMES
    assert response.header("host") is None
    assert response.header("x-kept") == "yes"  # the rest of what was asked for still passes


async def test_a_producers_patch_h_framing_headers_never_frame_the_consumers_response(server: LiveServer) -> None:
    got: list[rawhttp.RawResponse] = []

    async def consume() -> None:
        got.append(await _request(server, b"GET /p/framed HTTP/1.1\r\nHost: x\r\n\r\n"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await wait_for_waiters(_hub(server), channel_key("public", "p", "framed"), consumers=1)
        head = b"POST /p/framed HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n" + FRAMING_ASKED + b"\r\n"
        produced = await _request(server, head, b"hi")
    _assert_framed_by_the_relay(got[0], b"hi")
    assert produced.status == 200


async def test_a_responders_framing_headers_never_frame_the_requesters_answer(server: LiveServer) -> None:
    channels: RequestChannels = server.state.relay_requests
    answered: list[rawhttp.RawResponse] = []
    answer = b'{"ok": 1}'

    async def respond() -> None:
        head = (b"POST /p/res/framed HTTP/1.1\r\nHost: x\r\nPatch-Status: 201\r\nContent-Length: %d\r\n" % len(answer)
                + FRAMING_ASKED + b"\r\n")
        answered.append(await _request(server, head, answer))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(respond)
        await wait_for_requests(channels, channel_key("public", "p", "res/framed"), responders=1)
        requested = await _request(server, b"GET /p/req/framed HTTP/1.1\r\nHost: x\r\n\r\n")
    assert requested.status == 201
    requested.status = 200
    _assert_framed_by_the_relay(requested, answer)
    assert answered[0].status == 200


async def test_a_body_parameter_frames_the_consumers_response_by_its_own_length(server: LiveServer) -> None:
    """Legacy kept the replaced body's ``Content-Length`` (the consumer waited for bytes that never came)."""
    got: list[rawhttp.RawResponse] = []

    async def consume() -> None:
        got.append(await _request(server, b"GET /p/replaced HTTP/1.1\r\nHost: x\r\n\r\n"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await wait_for_waiters(_hub(server), channel_key("public", "p", "replaced"), consumers=1)
        long_body = b"original-long-body"
        head = b"POST /p/replaced?body=new HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(long_body)
        produced = await _request(server, head, long_body)
    assert (got[0].body, got[0].complete, got[0].header("content-length")) == (b"new", True, "3")
    assert produced.status == 200
