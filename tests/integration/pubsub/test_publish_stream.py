"""``POST …/messages/stream`` (issue 17): NDJSON in, one acknowledgement line per input line.

Each line is one message, acknowledged (its id, or its problem) after its commit, in input
order; ids follow the input; a bad line fails alone; the client can keep many lines in
flight on one connection and read acknowledgements while it is still sending.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import trio
from support.live import ADMIN_TOKEN, LiveServer

S = "/api/v1/db/d/messages/stream"
NDJSON = {"Content-Type": "application/x-ndjson"}


def _lines(*items: Any) -> bytes:
    return b"".join((item if isinstance(item, bytes) else json.dumps(item).encode()) + b"\n" for item in items)


def _acks(r: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in r.text.splitlines()]


async def test_each_line_is_acknowledged_in_order_and_a_bad_line_fails_alone(server: LiveServer) -> None:
    async with server.client() as c:
        assert (await c.put("/api/v1/db/d")).status_code == 201
        body = _lines(
            {"topic": "a", "payload": 1},
            b"{not json",
            {"topic": "bad/#", "payload": 2},
            b"",
            {"topic": "a", "payload_text": "three", "dedupe_key": "k"},
            {"topic": "a", "payload_text": "again", "dedupe_key": "k"},
        )
        r = await c.post(S, content=body, headers=NDJSON)
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson", r.text
        acks = _acks(r)
        assert [a["line"] for a in acks] == [1, 2, 3, 5, 6]  # the blank line 4 has none
        assert acks[1]["problem"]["code"] == "invalid_json" and acks[1]["problem"]["status"] == 400
        assert acks[2]["problem"]["code"] == "invalid_topic"
        assert acks[0]["id"] < acks[3]["id"] and acks[4] == {**acks[3], "line": 6, "deduplicated": True}
        stored = (await c.get("/api/v1/db/d/messages")).json()["messages"]
        assert [m["id"] for m in stored] == [acks[0]["id"], acks[3]["id"]]


async def test_a_topic_outside_the_tokens_prefixes_is_refused_per_line(server: LiveServer) -> None:
    async with server.client() as admin:
        assert (await admin.put("/api/v1/db/d")).status_code == 201
    token = await server.mint_token("d:pub.publish:s/")
    async with server.client(token) as c:
        r = await c.post(S, content=_lines({"topic": "s/1", "payload": 1}, {"topic": "x", "payload": 1}),
                         headers=NDJSON)
        acks = _acks(r)
        assert "id" in acks[0] and acks[1]["problem"]["code"] == "scope_denied"
    reader = await server.mint_token("d:pub.subscribe")
    async with server.client(reader) as c:
        r = await c.post(S, content=_lines({"topic": "s/1", "payload": 1}), headers=NDJSON)
        assert r.status_code == 403 and r.json()["code"] == "scope_denied"
    async with server.client() as admin:
        r = await admin.post("/api/v1/db/missing/messages/stream", content=b"", headers=NDJSON)
        assert r.status_code == 404


async def test_thousands_in_flight_and_acks_read_while_sending(server: LiveServer) -> None:
    """The client sends 3,000 lines and reads acknowledgements as they come, on one connection."""
    async with server.client() as c:
        assert (await c.put("/api/v1/db/d")).status_code == 201
    count = 3000
    acked: list[dict[str, Any]] = []
    first_ack = trio.Event()
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        head = (f"POST {S} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
                "Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
        await stream.send_all(head)

        async def send_lines() -> None:
            for start in range(0, count, 500):
                chunk = _lines(*({"topic": "load", "payload": n} for n in range(start, start + 500)))
                await stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                if start == 0:
                    await first_ack.wait()  # acknowledgements arrive before the input ends
            await stream.send_all(b"0\r\n\r\n")

        async def read_acks() -> None:
            buffer = b""
            while len(acked) < count:
                data = await stream.receive_some(65536)
                assert data, "the server closed early"
                buffer += data
                for line in buffer.split(b"\n")[:-1]:
                    if line.startswith(b"{"):
                        acked.append(json.loads(line))
                        first_ack.set()
                buffer = buffer.split(b"\n")[-1]

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_lines)
                nursery.start_soon(read_acks)
    assert [a["line"] for a in acked] == list(range(1, count + 1))
    ids = [a["id"] for a in acked]
    assert ids == sorted(ids) and len(set(ids)) == count
