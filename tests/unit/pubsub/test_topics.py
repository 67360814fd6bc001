from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skald.pubsub.topics import InvalidTopic, TopicFilter, match_topic, topic_allowed, validate_topic

MATCH_TABLE = [
    ("a", "a", True),
    ("a", "b", False),
    ("a/b", "a/b", True),
    ("a/b", "a", False),
    ("a", "a/b", False),
    ("+", "a", True),
    ("+", "a/b", False),
    ("+/b", "a/b", True),
    ("+/b", "a/c", False),
    ("a/+", "a/b", True),
    ("a/+", "a", False),
    ("a/+", "a/b/c", False),
    ("a/+/c", "a/b/c", True),
    ("a/+/c", "a/b/d", False),
    ("+/+", "a/b", True),
    ("+/+", "a", False),
    ("#", "a", True),
    ("#", "a/b/c", True),
    ("a/#", "a", True),  # '#' matches the parent level, as in MQTT
    ("a/#", "a/b", True),
    ("a/#", "a/b/c/d", True),
    ("a/#", "b", False),
    ("a/#", "ab", False),
    ("a/b/#", "a", False),
    ("a/b/#", "a/b", True),
    ("+/#", "a", True),
    ("+/#", "a/b/c", True),
    ("a/+/#", "a", False),
    ("a/+/#", "a/b", True),
    ("sensors/+/temp", "sensors/kitchen/temp", True),
    ("sensors/+/temp", "sensors/kitchen/humidity", False),
    ("sensors/+/temp", "sensors//temp", False),  # '+' never matches an empty segment
    ("+", "", False),
    ("a/+", "a/", False),
    ("A", "a", False),  # case-sensitive
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), MATCH_TABLE)
def test_match_table(pattern: str, topic: str, expected: bool) -> None:
    assert match_topic(pattern, topic) is expected


def test_table_is_big_enough() -> None:
    assert len(MATCH_TABLE) >= 30


@pytest.mark.parametrize("bad", ["a/#/b", "#/a", "a+", "a/b#", "a//b", "/a", "a/", "", "x" * 256, "a/+b"])
def test_invalid_filters(bad: str) -> None:
    with pytest.raises(InvalidTopic):
        TopicFilter.parse(bad)


@pytest.mark.parametrize("bad", ["", "a/+", "a/#", "/a", "a/", "a//b", "x" * 256, 5, None])
def test_invalid_topics(bad: object) -> None:
    with pytest.raises(InvalidTopic) as info:
        validate_topic(bad)
    assert info.value.status == 400


@pytest.mark.parametrize("good", ["a", "a/b/c", "x" * 255, "sensors/kitchen/temp", "with space/é"])
def test_valid_topics(good: str) -> None:
    assert validate_topic(good) == good


INTERSECT_TABLE = [
    ("#", "sensors/", True),
    ("sensors/#", "sensors/", True),
    ("sensors", "sensors/", False),
    ("sensors/+", "sensors/", True),
    ("sensors/kitchen", "sensors/", True),
    ("other/#", "sensors/", False),
    ("+/temp", "sensors/", True),
    ("+/temp", "sensors/kitchen", False),
    ("+/kitchen/#", "sensors/kit", True),
    ("sens", "sensors", False),
    ("sensors", "sens", True),
    ("+", "sens", True),
    ("a/b", "", True),
    ("a/b/c", "a/b/c/d", False),
    ("a/+/c", "a/x/c", True),
    ("a/#", "a/x/y/z", True),
]


@pytest.mark.parametrize(("pattern", "prefix", "expected"), INTERSECT_TABLE)
def test_prefix_intersection(pattern: str, prefix: str, expected: bool) -> None:
    assert TopicFilter.parse(pattern).may_intersect(prefix) is expected


def test_topic_allowed() -> None:
    assert topic_allowed("anything", None)
    assert topic_allowed("sensors/a", ["other/", "sensors/"])
    assert not topic_allowed("sensorsX", ["sensors/"])
    assert not topic_allowed("x", [])


control_chars = st.characters(min_codepoint=0, max_codepoint=0x1F) | st.sampled_from(
    [chr(c) for c in range(0x7F, 0xA0)]
)


@given(st.text(alphabet="ab/", max_size=10), control_chars, st.text(alphabet="ab/", max_size=10))
def test_control_characters_are_refused_in_topics_and_filters(before: str, control: str, after: str) -> None:
    text = before + control + after
    with pytest.raises(InvalidTopic):
        validate_topic(text)
    with pytest.raises(InvalidTopic):
        TopicFilter.parse(text)


@given(st.text(st.characters(blacklist_categories=["Cc", "Cs"], blacklist_characters="+#/"), min_size=1, max_size=40))
def test_printable_segments_are_topics(segment: str) -> None:
    assert validate_topic(segment) == segment
    assert TopicFilter.parse(segment).matches(segment)
