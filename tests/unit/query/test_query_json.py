"""JSON mapping of SQL values and the canonical result hash."""

from __future__ import annotations

import math

import pytest

from skald.errors import SkaldError
from skald.query.values import canonical_json, decode_arg, decode_args, encode_value, result_hash


@pytest.mark.parametrize(
    ("sql_value", "json_value"),
    [
        (None, None),
        ("text ✓", "text ✓"),
        (0, 0),
        (2**53 - 1, 2**53 - 1),
        (-(2**53 - 1), -(2**53 - 1)),
        (2**53, {"$int": str(2**53)}),
        (-(2**63), {"$int": str(-(2**63))}),
        (1.5, 1.5),
        (math.inf, {"$float": "Infinity"}),
        (-math.inf, {"$float": "-Infinity"}),
        (b"\x00\xff", {"$base64": "AP8="}),
    ],
)
def test_encode_and_decode_round_trip(sql_value: object, json_value: object) -> None:
    assert encode_value(sql_value) == json_value
    if not (isinstance(sql_value, float) and math.isinf(sql_value)):
        assert decode_arg(json_value) == sql_value


@pytest.mark.parametrize(
    "bad",
    [math.nan, math.inf, 2**63, [1], {"a": 1}, {"$base64": "%%"}, {"$int": "12x"}, {"$int": str(2**64)}],
)
def test_bad_arguments_are_400(bad: object) -> None:
    with pytest.raises(SkaldError) as info:
        decode_arg(bad)
    assert info.value.status == 400 and info.value.code == "invalid_argument"


def test_args_forms() -> None:
    assert decode_args(None) == ()
    assert decode_args([1, True, {"$base64": "AA=="}]) == (1, 1, b"\x00")
    assert decode_args({"n": "x"}) == {"n": "x"}
    with pytest.raises(SkaldError):
        decode_args("SELECT")  # a str is a Sequence: the type allows it, the decoder refuses it


def test_result_hash_is_canonical_and_pinned() -> None:
    columns = ["id", "name", "data", "big", "f"]
    rows = [[1, "ä", {"$base64": "AP8="}, {"$int": "9007199254740993"}, 0.1]]
    assert (
        canonical_json(columns, rows)
        == (
            '{"columns":["id","name","data","big","f"],'
            '"rows":[[1,"ä",{"$base64":"AP8="},{"$int":"9007199254740993"},0.1]]}'
        ).encode()
    )
    # Pinned: a change here breaks every client's stored hash (and "unchanged" after upgrades).
    assert result_hash(columns, rows) == result_hash(list(columns), [list(r) for r in rows])
    assert result_hash(columns, rows) == PINNED
    assert result_hash(columns, []) != result_hash([], [])


PINNED = "f863041f53f4cda0ff9257469fa5011266ef06d69b5553a3334119a4fce5c5e8"
