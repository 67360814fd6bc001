"""Properties of the one JSON body decoder (skald.http.json_body)."""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skald.errors import InvalidJSON
from skald.http.json_body import MAX_JSON_DEPTH, decode_json_body

# Text as a client can send it: any code point but a surrogate (those are not Unicode scalar values).
text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=30
)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_invalid_json(data: bytes) -> None:
    with contextlib.suppress(InvalidJSON):  # any other exception fails the property
        decode_json_body(data)


@given(st.text(max_size=200))
def test_any_text_decodes_or_raises_invalid_json(data: str) -> None:
    try:
        value = decode_json_body(data.encode("utf-8", "surrogatepass"))
    except InvalidJSON:
        return
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # what comes out can be stored and sent again


@given(json_values, st.booleans())
def test_valid_json_round_trips(value: Any, ascii_only: bool) -> None:
    encoded = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8")
    assert decode_json_body(encoded) == value


@given(st.integers(0, 3 * MAX_JSON_DEPTH), st.sampled_from(["[", '{"k":']))
def test_nesting_limit(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    document = (opener * depth + "0" + closer * depth) if depth else "0"
    if depth <= MAX_JSON_DEPTH:
        assert depth_of(decode_json_body(document.encode())) == depth
    else:
        with pytest.raises(InvalidJSON, match=str(MAX_JSON_DEPTH)):
            decode_json_body(document.encode())


def test_nesting_far_beyond_the_recursion_limit() -> None:
    with pytest.raises(InvalidJSON, match=str(MAX_JSON_DEPTH)):
        decode_json_body(b"[" * 100_000 + b"]" * 100_000)


@given(st.integers(0xD800, 0xDFFF), text, text, st.booleans())
def test_lone_surrogate_escapes_are_refused(code: int, before: str, after: str, as_key: bool) -> None:
    escaped = json.dumps(before)[:-1] + f"\\u{code:04x}" + json.dumps(after)[1:]
    document = f"{{{escaped}: 1}}" if as_key else f"[1, {{\"a\": [{escaped}]}}]"
    with pytest.raises(InvalidJSON, match="surrogate"):
        decode_json_body(document.encode())


@given(st.characters(min_codepoint=0x10000))
def test_escaped_surrogate_pairs_are_one_character(char: str) -> None:
    assert decode_json_body(json.dumps([char], ensure_ascii=True).encode()) == [char]


def test_escaped_backslash_before_u_is_plain_text() -> None:
    assert decode_json_body(rb'["\\ud800"]') == ["\\ud800"]


@given(st.binary(min_size=1, max_size=8).filter(lambda b: not _is_utf8(b)))
def test_invalid_utf8_is_refused(junk: bytes) -> None:
    with pytest.raises(InvalidJSON, match="UTF-8"):
        decode_json_body(b'{"sql": "' + junk + b'"}')


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
def test_non_finite_numbers_are_refused(number: str) -> None:
    with pytest.raises(InvalidJSON):
        decode_json_body(f'{{"x": {number}}}'.encode())


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_finite_floats_survive(number: float) -> None:
    decoded = decode_json_body(json.dumps(number).encode())
    assert decoded == number and math.isfinite(decoded)


# Strings full of what the depth scan must not count: brackets, quotes and backslashes.
tricky_text = st.text(st.sampled_from('[]{}"\\/ab') | st.characters(blacklist_categories=["Cs"]), max_size=12)
tricky_values = st.recursive(
    st.none() | st.integers() | tricky_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky_text, inner, max_size=3),
    max_leaves=10,
)


@given(tricky_values, st.integers(0, MAX_JSON_DEPTH + 3), st.booleans())
def test_depth_counts_containers_not_brackets_in_strings(value: Any, extra: int, ascii_only: bool) -> None:
    for _ in range(extra):
        value = [value, "]]]}}}"] if extra % 2 else {"k]": value}
    document = json.dumps(value, ensure_ascii=ascii_only).encode()
    if depth_of(value) <= MAX_JSON_DEPTH:
        assert decode_json_body(document) == value
    else:
        with pytest.raises(InvalidJSON, match=str(MAX_JSON_DEPTH)):
            decode_json_body(document)


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deep_nesting_is_refused_before_the_decoder_recurses(opener: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The decoder recursing a thousand frames deep lets a garbage collection run finalizers there,
    # which then fail with RecursionError of their own (seen as an unraisable error in the suite).
    import skald.http.json_body as json_body

    class NoDecoder:
        def decode(self, text: str) -> Any:
            raise AssertionError("deep nesting reached the decoder")

    monkeypatch.setattr(json_body, "_DECODER", NoDecoder())
    closer = "]" if opener == "[" else "}"
    with pytest.raises(InvalidJSON, match="nested deeper"):
        decode_json_body(opener * 50_000 + "1" + closer * 50_000)
