"""The one topic-visibility predicate: a subscriber sees a topic its token's prefixes allow and a filter matches."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from skald.pubsub.service import Message, Subscriber
from skald.pubsub.topics import TopicFilter, topic_visible

_segment = st.text(alphabet="ab", min_size=1, max_size=2)
_topics = st.lists(_segment, min_size=1, max_size=4).map("/".join)
_filter_segment = _segment | st.just("+")
_filters = st.builds(
    lambda segments, hash_tail: "/".join(segments + (["#"] if hash_tail else [])),
    st.lists(_filter_segment, min_size=1, max_size=4),
    st.booleans(),
).map(TopicFilter.parse)
_prefixes = st.none() | st.lists(st.text(alphabet="ab/", max_size=4), max_size=3)


@given(topic=_topics, filters=st.lists(_filters, max_size=3), prefixes=_prefixes)
def test_visible_means_allowed_by_a_prefix_and_matched_by_a_filter(
    topic: str, filters: list[TopicFilter], prefixes: list[str] | None
) -> None:
    allowed = prefixes is None or any(topic.startswith(p) for p in prefixes)
    matched = not filters or any(f.matches(topic) for f in filters)
    assert topic_visible(topic, filters, prefixes) is (allowed and matched)
    # the live fan-out asks the same question as replay and tail do
    message = Message(1, topic, "text", b"", None, "2026-01-01T00:00:00.000Z")
    assert Subscriber(filters, prefixes, 1).wants(message) is topic_visible(topic, filters, prefixes)


@given(topic=_topics)
def test_a_topic_is_visible_through_its_own_filter_and_through_hash(topic: str) -> None:
    assert topic_visible(topic, [TopicFilter.parse(topic)], None)
    assert topic_visible(topic, [TopicFilter.parse("#")], [topic])
    assert not topic_visible(topic, [], [])  # a token with no prefixes sees nothing
