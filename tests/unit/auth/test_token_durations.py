"""Token lifetimes (``30d``, ``12h``): anything that parses can be added to today's date."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skald.auth.tokens import MAX_LIFETIME, parse_duration, utcnow


@given(count=st.integers(min_value=0, max_value=10**30), unit=st.sampled_from("smhdw"))
def test_a_duration_parses_to_a_usable_lifetime_or_is_refused(count: int, unit: str) -> None:
    try:
        lifetime = parse_duration(f"{count}{unit}")
    except ValueError:
        return  # refused: the API answers 400 validation_failed
    assert dt.timedelta(0) <= lifetime <= MAX_LIFETIME
    assert utcnow() + lifetime > utcnow() - dt.timedelta(seconds=1)  # no OverflowError


@pytest.mark.parametrize("text", ["99999999999999999d", "99999999d", "999999w"])
def test_lifetimes_past_the_calendar_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="at most"):
        parse_duration(text)


def test_ordinary_lifetimes_still_parse() -> None:
    assert parse_duration("30d") == dt.timedelta(days=30)
    assert parse_duration("15m") == dt.timedelta(minutes=15)
