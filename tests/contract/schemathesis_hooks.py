"""schemathesis hooks for the contract run (loaded through ``SCHEMATHESIS_HOOKS``).

- The relay routes (``…/streams/…``) wait for a counterpart as long as the
  client stays connected. For each relay case a counterpart request (the
  consumer for a producer, the responder for a requester, and so on) is sent
  on its own connection, so a valid case completes; it is hung up after the
  case's response, whatever it was.
- ``DELETE …/tokens/{token_id}`` revokes: the token stays readable, marked
  ``"state": "revoked"`` (the audit trail names it). A "deleted resource still
  available" report is dropped exactly when the response says so.
- A webhook delivery (``POST …/webhooks/{endpoint}``) creates no settings at
  ``…/{endpoint}/config``, whatever the shared path suggests to schemathesis's
  inferred links: a "created resource not found" report there is dropped.
- A job fetch (``POST …/jobs/fetch``) long-polls for up to ``wait_seconds``
  (60 at most): the run caps it at one second so an empty queue answers 204 soon.
- The run must not revoke the token it runs with: ``DELETE …/tokens/{token_id}``
  never targets ``SKALD_FUZZ_TOKEN_ID`` (other token ids, minted by the run
  itself, are fair game).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import urllib.parse
from typing import TYPE_CHECKING, Any

import requests
import schemathesis
from schemathesis import HookContext, Response
from schemathesis.core.failures import Failure

if TYPE_CHECKING:  # schemathesis defines its OpenAPI case type for type checkers only
    from schemathesis.specs.openapi.schemas import OpenApiCase

_COUNTERPART_SECONDS = 10.0
_live: dict[int, _Counterpart] = {}


class _Counterpart(threading.Thread):
    """One raw HTTP/1.1 request on its own socket; :meth:`hang_up` ends it from outside."""

    def __init__(self, url: str, method: str, token: str) -> None:
        super().__init__(daemon=True)
        parts = urllib.parse.urlsplit(url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        body = b"counterpart" if method in ("POST", "PUT") else b""
        head = (f"{method} {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        self.request = head.encode() + body
        self.sock = socket.create_connection(self.address, timeout=_COUNTERPART_SECONDS)

    def run(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(self.request)
            while self.sock.recv(65536):
                pass

    def hang_up(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.join(_COUNTERPART_SECONDS)
        self.sock.close()


def _counterpart_of(method: str, url: str) -> tuple[str, str] | None:
    """The request that pairs with a relay request: (method, url), or None if ``url`` is no relay route."""
    head, sep, tail = url.partition("/streams/")
    if not sep:
        return None
    tail = tail.split("?", 1)[0]
    kind, _, rest = tail.partition("/")
    if kind == "queue":
        if method == "GET":
            return "POST", f"{head}/streams/queue/{rest.removesuffix('/next')}"
        return "GET", f"{head}/streams/queue/{rest}/next"
    if kind == "req":
        return "POST", f"{head}/streams/res/{rest}"
    if kind == "res":
        return "POST", f"{head}/streams/req/{rest}"
    return None


@schemathesis.hook
def before_call(context: HookContext, case: OpenApiCase, kwargs: dict[str, Any]) -> None:
    revoke = case.operation.method.upper() == "DELETE" and case.operation.path.startswith("/api/v1/admin/tokens/")
    if revoke and case.path_parameters.get("token_id") == os.environ.get("SKALD_FUZZ_TOKEN_ID"):
        case.path_parameters["token_id"] = "tok_not_the_fuzzers_own"
    if case.operation.path.endswith(("/jobs/fetch", "/jobs/work")):
        # A long poll over an empty queue waits its whole wait_seconds (up to 60): the contract
        # is the same at a second, and the run stays inside its time (and request-timeout). A
        # work stream's body is its lines (each may wait).
        for body in (case.body, kwargs.get("json")):
            for item in body if isinstance(body, list) else [body]:
                wait = item.get("wait_seconds") if isinstance(item, dict) else None
                if isinstance(item, dict) and isinstance(wait, int | float) and wait > 1:
                    item["wait_seconds"] = 1
    if "/streams/" not in case.operation.path:
        return
    url = case.as_transport_kwargs()["url"]
    pair = _counterpart_of(case.method.upper(), url)
    if pair is None:
        return
    counterpart = _Counterpart(pair[1], pair[0], os.environ["SKALD_FUZZ_TOKEN"])
    counterpart.start()
    _live[id(case)] = counterpart


def _finish(case: OpenApiCase) -> None:
    counterpart = _live.pop(id(case), None)
    if counterpart is not None:
        counterpart.hang_up()


@schemathesis.hook
def after_call(context: HookContext, case: OpenApiCase, response: Response) -> None:
    _finish(case)


@schemathesis.hook
def after_network_error(context: HookContext, case: OpenApiCase, request: requests.PreparedRequest) -> None:
    _finish(case)


@schemathesis.hook
def filter_failure(context: HookContext, failure: Failure, case: OpenApiCase, response: Response) -> bool:
    code = getattr(failure, "code", None)
    if code in ("ST301", "ST302") and case.operation.path == "/api/v1/db/{db_id}/webhooks/{endpoint}/config":
        # GET answers an endpoint's settings, the defaults when it has none (also after DELETE):
        # by design (skald.webhooks.routes.get_config_view), not a resource outliving its deletion
        return False
    if code == "ST301" and case.operation.path == "/api/v1/admin/tokens/{token_id}":
        try:
            return bool(response.json().get("state") != "revoked")
        except ValueError:
            return True
    return True


# ---- NDJSON streams (POST …/messages/stream, …/query/stream, …/jobs/stream, …/jobs/work) -----------------------
# The schema describes a stream body as an array of its lines and an acknowledgement stream as an
# array of ack objects; these turn one into the other on the wire.


@schemathesis.serializer("application/x-ndjson")
def ndjson_lines(ctx: Any, value: Any) -> bytes:
    items = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


@schemathesis.deserializer("application/x-ndjson")
def ndjson_acks(ctx: Any, response: Any) -> Any:
    text = response.content.decode()
    if not ctx.operation.path.endswith(("/stream", "/jobs/work")):
        return text  # other NDJSON answers (libSQL's Hrana cursor) are described as a string
    return [json.loads(line) for line in text.splitlines() if line.strip()]
