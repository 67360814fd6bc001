"""Which headers travel with a relayed message (specs/legacy-streams.md, "Headers carried")."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

Headers = list[tuple[bytes, bytes]]

# Sent automatically as Patch-H-<Name> when the producer sent them.
CARRIED = ("user-agent", "accept", "accept-language", "accept-encoding", "referer", "origin",
           "x-forwarded-for", "x-real-ip", "content-length")
# Headers that frame the connection never pass, whatever a producer asks for.
_NEVER = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                    "content-type", "patch-uri", "patch-status"})
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
    automatically carried headers and explicit ``Patch-H-*`` ones (explicit wins).
    ``strip`` delivers ``Patch-H-<Name>`` as ``<Name>``; a switch responder gets them unstripped.
    """
    content_type = "text/plain" if body_param else headers.get("content-type") or "text/plain"
    carried = {n: headers[n] for n in CARRIED if n in headers and not (n == "content-length" and body_param)}
    carried.update(explicit_patch_headers(headers))
    out: Headers = [(b"content-type", _b(content_type)), (b"patch-uri", _b(patch_uri(path, query)))]
    for name, value in carried.items():
        if name not in _NEVER:
            out.append((_b(name if strip else f"patch-h-{name}"), _b(value)))
    return out


def answer_headers(headers: Mapping[str, str], body_param: bool) -> tuple[int, Headers]:
    """Status and headers a requester receives from an answer: ``Patch-Status``, ``Content-Type``, ``Patch-H-*``."""
    content_type = "text/plain" if body_param else headers.get("content-type") or "text/plain"
    out: Headers = [(b"content-type", _b(content_type))]
    out += [(_b(n), _b(v)) for n, v in explicit_patch_headers(headers).items() if n not in _NEVER]
    return patch_status(headers.get("patch-status")), out


def patch_status(value: str | None) -> int:
    """A valid ``Patch-Status`` (200-599) or 200."""
    try:
        status = int(value or "")
    except ValueError:
        return 200
    return status if 200 <= status <= 599 else 200


def _b(text: str) -> bytes:
    return text.encode("latin-1", "replace")
