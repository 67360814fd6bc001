"""Hrana's value encoding and batch conditions."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skald.libsql import protocol
from skald.libsql.errors import HranaProtocolError

sqlite_values = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.binary(),
)


@given(sqlite_values)
def test_values_round_trip(value: Any) -> None:
    encoded = protocol.encode_value(value)
    if isinstance(value, int):
        assert encoded == {"type": "integer", "value": str(value)}  # a string: exact past 2^53
    assert protocol.decode_value(encoded) == value


def test_blob_without_padding_and_infinities() -> None:
    assert protocol.decode_value({"type": "blob", "base64": "AAH+/w"}) == b"\x00\x01\xfe\xff"
    assert protocol.encode_value(math.inf) == {"type": "text", "value": "Infinity"}


@pytest.mark.parametrize("bad", [
    None, {"type": "integer", "value": "1.5"}, {"type": "integer", "value": str(2**63)},
    {"type": "float", "value": "x"}, {"type": "blob", "base64": "!!"}, {"type": "text"},
    {"type": "date", "value": 1}, {"type": "integer", "value": True},
])
def test_malformed_values_are_protocol_errors(bad: Any) -> None:
    with pytest.raises(HranaProtocolError):
        protocol.decode_value(bad)


def test_named_args_keep_or_guess_the_prefix() -> None:
    stmt = protocol.decode_stmt({"sql": "SELECT :a, @b", "named_args": [
        {"name": ":a", "value": {"type": "integer", "value": "1"}}, {"name": "b", "value": {"type": "null"}}]})
    assert stmt.params == {"a": 1, "b": None}
    with pytest.raises(HranaProtocolError):
        protocol.decode_stmt({"sql": "SELECT 1", "sql_id": 3})
    with pytest.raises(HranaProtocolError):
        protocol.decode_batch({"steps": [{"stmt": {"sql": "SELECT 1"}, "condition": {"type": "ok", "step": 0}}]})


conds = st.recursive(
    st.one_of(
        st.builds(lambda s: {"type": "ok", "step": s}, st.integers(0, 3)),
        st.builds(lambda s: {"type": "error", "step": s}, st.integers(0, 3)),
        st.just({"type": "is_autocommit"}),
    ),
    lambda inner: st.one_of(
        st.builds(lambda c: {"type": "not", "cond": c}, inner),
        st.builds(lambda cs: {"type": "and", "conds": cs}, st.lists(inner, max_size=3)),
        st.builds(lambda cs: {"type": "or", "conds": cs}, st.lists(inner, max_size=3)),
    ),
    max_leaves=8,
)


def _reference(cond: dict[str, Any], ok: list[bool | None], autocommit: bool) -> bool:
    kind = cond["type"]
    if kind == "ok":
        return ok[cond["step"]] is True
    if kind == "error":
        return ok[cond["step"]] is False
    if kind == "not":
        return not _reference(cond["cond"], ok, autocommit)
    if kind == "and":
        return all(_reference(c, ok, autocommit) for c in cond["conds"])
    if kind == "or":
        return any(_reference(c, ok, autocommit) for c in cond["conds"])
    return autocommit


@given(conds, st.lists(st.sampled_from([True, False, None]), min_size=4, max_size=4), st.booleans())
def test_conditions_follow_the_spec(cond: dict[str, Any], ok: list[bool | None], autocommit: bool) -> None:
    """ok: the step ran and succeeded; error: it ran and failed; a skipped step is neither."""
    decoded = protocol.decode_cond(cond, before=4)
    assert protocol.evaluate(decoded, ok, lambda: autocommit) == _reference(cond, ok, autocommit)
