"""When a relayed response counts as delivered: every byte the client needs was handed to its connection.

``deliver`` runs here against a fake ASGI client (no socket, so it watches ``http.disconnect``)
that leaves the moment it has what the response's framing promised, as curl does.
"""

from __future__ import annotations

import trio
import trio.testing

from skald.relay.channels import Transfer
from skald.relay.io import Message, deliver


class CurlLikeClient:
    """Records what it is sent; hangs up once it has ``wants`` body bytes (``None``: the message's end)."""

    def __init__(self, wants: int | None) -> None:
        self.wants = wants
        self.messages: list[Message] = []
        self.body = b""
        self.left = trio.Event()

    async def send(self, message: Message) -> None:
        self.messages.append(message)
        self.body += message.get("body", b"")
        ended = message["type"] == "http.response.body" and not message.get("more_body", False)
        if ended or (self.wants is not None and len(self.body) >= self.wants):
            self.left.set()

    async def receive(self) -> Message:
        await self.left.wait()
        return {"type": "http.disconnect"}

    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0]["headers"])


async def _deliver(transfer: Transfer, client: CurlLikeClient, method: str = "GET") -> list[bool]:
    result: list[bool] = []

    async def get() -> Transfer:
        return transfer

    async def run() -> None:
        result.append(await deliver(get, client.receive, client.send, method=method))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        transfer.body.end()  # the producer's end of message comes only after the client could leave
    return result


async def test_a_sized_response_is_delivered_with_its_last_byte_though_the_client_leaves_before_the_producers_end(
) -> None:
    transfer = Transfer(200, [(b"content-type", b"text/plain")], length=5)
    await transfer.body.put(b"hello")
    client = CurlLikeClient(wants=5)
    assert await _deliver(transfer, client) == [True]
    assert transfer.delivered and client.body == b"hello"
    assert client.headers()[b"content-length"] == b"5"
    assert client.messages[-1]["more_body"] is False  # the last byte ended the response


async def test_a_chunked_response_is_not_delivered_if_the_client_leaves_before_its_end() -> None:
    """Without a length the client knows the message is whole only from the last chunk."""
    transfer = Transfer(200, [], length=None)
    await transfer.body.put(b"part")
    client = CurlLikeClient(wants=4)  # leaves early, after the bytes it got so far
    assert await _deliver(transfer, client) == [False]
    assert not transfer.delivered
    assert b"content-length" not in client.headers()


async def test_a_response_to_head_is_delivered_with_its_head() -> None:
    transfer = Transfer(200, [], length=1 << 20)
    client = CurlLikeClient(wants=0)
    assert await _deliver(transfer, client, method="HEAD") == [True]
    assert client.headers()[b"content-length"] == b"1048576"  # as a GET would have it


async def test_a_204_answer_carries_no_length_and_is_delivered_with_its_head() -> None:
    transfer = Transfer(204, [], length=3)
    await transfer.body.put(b"abc")
    client = CurlLikeClient(wants=0)
    assert await _deliver(transfer, client) == [True]
    assert b"content-length" not in client.headers()
