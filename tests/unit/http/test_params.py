"""Properties of the numeric query-parameter parsers every route uses (skald.http.params)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skald.errors import ValidationFailed
from skald.http.params import (
    HEARTBEAT_MAX_SECONDS,
    HEARTBEAT_MIN_SECONDS,
    INT64_MAX,
    INT64_MIN,
    float_param,
    heartbeat_param,
    int_param,
)

numberish = st.one_of(
    st.text(max_size=30),
    st.integers().map(str),
    st.integers(-(2**70), 2**70).map(str),
    st.floats().map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "1_000", " 7", "+7", "\u0661", "0x10", "٣", "²"]),
)
bounds = st.integers(INT64_MIN - 10, INT64_MAX + 10)


@given(numberish, bounds, bounds)
def test_int_param_is_in_bounds_or_refused(raw: str, low: int, high: int) -> None:
    try:
        value = int_param("n", raw, minimum=low, maximum=high)
    except ValidationFailed as exc:
        assert exc.status == 400 and exc.code == "validation_failed" and "n " in exc.detail
        return
    if raw == "":
        assert value is None
        return
    assert value is not None
    assert max(low, INT64_MIN) <= value <= min(high, INT64_MAX)
    digits = raw.removeprefix("-")
    assert digits.isascii() and digits.isdigit() and value == int(raw)  # plain decimal, read as written


@given(st.integers(INT64_MIN, INT64_MAX))
def test_every_int64_is_read_back(number: int) -> None:
    assert int_param("n", str(number), minimum=INT64_MIN) == number


@given(st.integers(min_value=INT64_MAX + 1) | st.integers(max_value=INT64_MIN - 1))
def test_beyond_int64_is_refused_even_without_a_maximum(number: int) -> None:
    with pytest.raises(ValidationFailed, match="at most"):
        int_param("n", str(number), minimum=INT64_MIN)


def test_absent_means_default() -> None:
    assert int_param("n", None, 5) == 5 and int_param("n", "", 5) == 5 and int_param("n", None) is None


@given(numberish, st.floats(0, 100), st.floats(0, 100))
def test_float_param_is_finite_and_in_bounds_or_refused(raw: str, low: float, high: float) -> None:
    try:
        value = float_param("f", raw, 1.0, minimum=low, maximum=high)
    except ValidationFailed as exc:
        assert exc.code == "validation_failed"
        return
    assert math.isfinite(value)
    assert raw == "" or low <= value <= high


@pytest.mark.parametrize("raw", ["0", "-1", "0.05", "nan", "inf", "1e400", "3600.5", "1e2", "-0.5", " 1"])
def test_heartbeat_outside_bounds_is_refused(raw: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        heartbeat_param(raw, 15.0)
    assert caught.value.extra == {"minimum": HEARTBEAT_MIN_SECONDS, "maximum": HEARTBEAT_MAX_SECONDS}


@pytest.mark.parametrize(("raw", "seconds"), [(None, 15.0), ("0.1", 0.1), (".5", 0.5), ("2", 2.0), ("3600", 3600.0)])
def test_heartbeat_inside_bounds(raw: str | None, seconds: float) -> None:
    assert heartbeat_param(raw, 15.0) == seconds
