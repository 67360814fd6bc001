"""Header carriage on the relay: whatever a producer or responder sends, no framing header passes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from skald.relay.headers import FRAMING, answer_headers, body_length, message_headers

_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12)
_other_names = st.sampled_from(["user-agent", "accept", "x-trace", "origin", "content-type", "cookie"])
_framing_names = st.sampled_from(sorted(FRAMING))


@st.composite
def _request_headers(draw: st.DrawFn) -> dict[str, str]:
    """Request headers as :class:`skald.relay.legacy._Request` holds them (names lower-cased)."""
    headers = draw(st.dictionaries(_other_names, _values, max_size=4))
    headers |= {f"patch-h-{n}": v for n, v in draw(st.dictionaries(_framing_names, _values, max_size=5)).items()}
    headers |= {f"patch-h-{n}": v for n, v in draw(st.dictionaries(_other_names, _values, max_size=2)).items()}
    if draw(st.booleans()):
        headers["content-length"] = str(draw(st.integers(0, 10**9)))
    if draw(st.booleans()):
        headers["patch-status"] = draw(st.sampled_from(["201", "404", "99", "abc"]))
    return headers


def _names(headers: list[tuple[bytes, bytes]]) -> list[str]:
    return [name.decode() for name, _ in headers]


@given(_request_headers(), st.booleans())
def test_a_consumer_never_receives_a_framing_header(headers: dict[str, str], body_param: bool) -> None:
    delivered = _names(message_headers("/p/x", [], headers, body_param))
    assert not set(delivered) & FRAMING
    assert len(delivered) == len(set(delivered))
    # explicit Patch-H-* headers other than framing ones are still delivered, prefix stripped
    for name in headers:
        if name.startswith("patch-h-") and name[8:] not in FRAMING | {"content-type"}:
            assert name[8:] in delivered


@given(_request_headers(), st.booleans())
def test_a_switch_responder_sees_only_the_real_length_among_framing_headers(
    headers: dict[str, str], body_param: bool
) -> None:
    unstripped = dict(message_headers("/p/req/x", [], headers, body_param, strip=False))
    carried = {name.decode()[8:] for name in unstripped if name.startswith(b"patch-h-")}
    assert carried & FRAMING <= {"content-length"}
    real = None if body_param else headers.get("content-length")
    assert unstripped.get(b"patch-h-content-length") == (real.encode() if real is not None else None)


@given(_request_headers(), st.booleans())
def test_a_requester_never_receives_a_framing_header_from_an_answer(headers: dict[str, str], body_param: bool) -> None:
    status, answer = answer_headers(headers, body_param)
    assert not set(_names(answer)) & FRAMING
    assert 200 <= status <= 599


def test_body_length_follows_the_requests_own_framing() -> None:
    assert body_length({"content-length": "12"}, None) == 12
    assert body_length({"transfer-encoding": "chunked"}, None) is None
    assert body_length({}, None) == 0  # neither header: no body
    assert body_length({"content-length": "12"}, b"new") == 3  # body= replaces the body, and its length
