"""A curl-like HTTP/1.1 client on a blocking socket, for relay tests that need curl's exact manners.

httpx keeps a finished connection in its pool; curl (and most one-liners) close it the moment the
response is complete, which for a sized response means as soon as ``Content-Length`` bytes arrived.
Call :func:`request` through ``trio.to_thread.run_sync``: in its own thread the client runs beside
the server's event loop as a separate curl process would, not in turns with it.
"""

from __future__ import annotations

import dataclasses
import socket

from support.live import LiveServer


@dataclasses.dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool  # the body arrived as framed (all Content-Length bytes, or the last chunk)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    def names(self) -> set[str]:
        return {k for k, _ in self.headers}


def request(server: LiveServer, head: bytes, body: bytes = b"", timeout: float = 30) -> RawResponse:
    """Send ``head`` (request line and headers, ending in a blank line) and ``body``; read one response.

    The connection is closed as soon as the response is complete (or the server closed it).
    """
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head + body)
        return _Reader(sock).response(bodiless=head.startswith(b"HEAD "))


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""
        self._eof = False

    def _fill(self) -> bool:
        data = self._sock.recv(65536)
        self._buffer += data
        self._eof = not data
        return bool(data)

    def _take(self, count: int) -> bytes:
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def response(self, *, bodiless: bool = False) -> RawResponse:
        """The response; ``bodiless`` (an answer to HEAD) has a head only, whatever it says of a body."""
        while b"\r\n\r\n" not in self._buffer:
            if not self._fill():
                raise ConnectionError(f"connection closed before a whole response head: {self._buffer!r}")
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
        response = RawResponse(int(status_line.split()[1]), headers, b"", complete=False)
        length = response.header("content-length")
        if bodiless:
            response.complete = True
        elif length is not None:
            while len(self._buffer) < int(length) and self._fill():
                pass
            response.body = self._take(int(length))
            response.complete = len(response.body) == int(length)
        elif response.header("transfer-encoding") == "chunked":
            response.body, response.complete = self._chunked()
        else:  # framed by the connection's end
            while self._fill():
                pass
            response.body, response.complete = self._take(len(self._buffer)), True
        return response

    def _chunked(self) -> tuple[bytes, bool]:
        body = b""
        while True:
            while b"\r\n" not in self._buffer:
                if not self._fill():
                    return body, False
            size_line, _, self._buffer = self._buffer.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(self._buffer) < size + 2:
                if not self._fill():
                    return body + self._take(size), False
            body += self._take(size)
            self._take(2)
            if size == 0:
                return body, True
