"""A duplex NDJSON stream over one raw HTTP/1.1 request (chunked body): send lines and read their
acknowledgements while the request is still open, as a worker on ``POST …/jobs/work`` does
(httpx sends a whole request body before it reads the response)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import trio


class DuplexNdjson:
    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = b""
        self._head: bytes | None = None
        self.status = 0

    async def send(self, *lines: dict[str, Any]) -> None:
        data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        await self._stream.send_all(b"%x\r\n%s\r\n" % (len(data), data))

    async def end(self) -> None:
        await self._stream.send_all(b"0\r\n\r\n")

    async def _more(self) -> bool:
        data = await self._stream.receive_some(65536)
        self._buffer += data
        return bool(data)

    async def head(self) -> int:
        while self._head is None:
            if b"\r\n\r\n" in self._buffer:
                self._head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
                self.status = int(self._head.split(b" ", 2)[1])
            elif not await self._more():
                raise EOFError("the server closed before its response head")
        return self.status

    async def receive(self) -> dict[str, Any]:
        """The next acknowledgement line (chunk framing skipped: every JSON line starts with ``{``)."""
        await self.head()
        while True:
            lines = self._buffer.split(b"\n")
            for index, line in enumerate(lines[:-1]):
                if line.startswith(b"{"):
                    self._buffer = b"\n".join(lines[index + 1:])
                    value: dict[str, Any] = json.loads(line)
                    return value
            self._buffer = lines[-1]
            if not await self._more():
                raise EOFError("the stream ended")

    async def rest(self) -> bytes:
        """Everything after what was read, to the response's last chunk (the connection stays open)."""
        while not self._buffer.endswith(b"0\r\n\r\n"):
            if not await self._more():
                raise EOFError("the server closed before the response's last chunk")
        return self._buffer


@contextlib.asynccontextmanager
async def duplex_ndjson(url: str, path: str, token: str) -> AsyncIterator[DuplexNdjson]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            (f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n"
             "Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
        )
        yield DuplexNdjson(stream)
