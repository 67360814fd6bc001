"""Which headers travel with a relayed message (specs/legacy-streams.md, "Headers carried")."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

Headers = list[tuple[bytes, bytes]]

# Sent automatically as Patch-H-<Name> when the producer sent them. ``Content-Length`` is carried
# too, but as framing: the relay frames each consumer's response itself (``Transfer.length``).
CARRIED = ("user-agent", "accept", "accept-language", "accept-encoding", "referer", "origin",
           "x-forwarded-for", "x-real-ip")
# Framing and hop-by-hop headers describe one connection, not the message: whoever asks for them
# (a producer's ``Patch-H-*``, a responder's answer), they never pass. A ``Content-Length`` that
# passed would frame the consumer's response with a length the body does not have (a cut reply,
# and the producer a 502); ``Connection: close`` or ``Transfer-Encoding`` would reframe it too.
FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
                     "te", "trailer", "trailers", "upgrade", "host"})
# Set by the relay itself from the request, never from a ``Patch-H-*`` header.
_OWN = frozenset({"content-type", "patch-uri", "patch-status"})
_NEVER = FRAMING | _OWN
_CREDENTIAL_PARAMS = ("token", "secret")


def patch_uri(path: str, query: list[tuple[str, str]]) -> str:
    """The producer's path and query as received, without credentials."""
    kept = [(k, v) for k, v in query if k not in _CREDENTIAL_PARAMS]
    return path + ("?" + urlencode(kept) if kept else "")


def explicit_patch_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``Patch-H-<Name>: v`` the sender set itself, as ``{name: v}``."""
    return {name[8:]: value for name, value in headers.items() if name.startswith("patch-h-") and len(name) > 8}


def message_headers(
    path: str, query: list[tuple[str, str]], headers: Mapping[str, str], body_param: bool, *, strip: bool = True
) -> Headers:
    """Headers a consumer receives with a producer's (or requester's) message.

    ``Content-Type`` (``text/plain`` when none, or for ``body=``), ``Patch-Uri``, the
    automatically carried headers and explicit ``Patch-H-*`` ones (explicit wins; never a
    :data:`FRAMING` one). ``strip`` delivers ``Patch-H-<Name>`` as ``<Name>``; a switch responder
    gets them unstripped, with the producer's own ``Content-Length`` as ``Patch-H-Content-Length``
    (stripped, it is the response's framing, which the relay sets from the body it relays).
    """
    content_type = "text/plain" if body_param else headers.get("content-type") or "text/plain"
    carried = {n: headers[n] for n in CARRIED if n in headers}
    carried.update((n, v) for n, v in explicit_patch_headers(headers).items() if n not in _NEVER)
    if not strip and not body_param and "content-length" in headers:
        carried["content-length"] = headers["content-length"]  # informational here, not framing
    out: Headers = [(b"content-type", _b(content_type)), (b"patch-uri", _b(patch_uri(path, query)))]
    for name, value in carried.items():
        out.append((_b(name if strip else f"patch-h-{name}"), _b(value)))
    return out


def answer_headers(headers: Mapping[str, str], body_param: bool) -> tuple[int, Headers]:
    """Status and headers a requester receives from an answer: ``Patch-Status``, ``Content-Type``, ``Patch-H-*``.

    Never a :data:`FRAMING` header: the relay frames the requester's response from the answer's body.
    """
    content_type = "text/plain" if body_param else headers.get("content-type") or "text/plain"
    out: Headers = [(b"content-type", _b(content_type))]
    out += [(_b(n), _b(v)) for n, v in explicit_patch_headers(headers).items() if n not in _NEVER]
    return patch_status(headers.get("patch-status")), out


def body_length(headers: Mapping[str, str], fixed: bytes | None) -> int | None:
    """The size of the body a request carries, as its own framing says (h11 validated it); ``None`` if chunked.

    ``fixed`` is a ``body=`` text that replaces the request's body. A request with neither
    ``Transfer-Encoding`` nor ``Content-Length`` has no body (RFC 9112, section 6.3).
    """
    if fixed is not None:
        return len(fixed)
    if "transfer-encoding" in headers:
        return None
    return int(headers.get("content-length") or 0)


def patch_status(value: str | None) -> int:
    """A valid ``Patch-Status`` (200-599) or 200."""
    try:
        status = int(value or "")
    except ValueError:
        return 200
    return status if 200 <= status <= 599 else 200


def _b(text: str) -> bytes:
    return text.encode("latin-1", "replace")
