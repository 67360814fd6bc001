"""Topic names, MQTT-style topic filters and their intersection with token prefixes.

A topic is 1-255 characters of ``/``-separated, non-empty segments without
``+``, ``#`` or control characters (U+0000-U+001F, U+007F-U+009F). A filter
is a topic whose segments may also be ``+`` (exactly one non-empty segment)
or, as the last segment only, ``#`` (any number of segments, including none:
``a/#`` matches ``a`` as in MQTT).
"""

from __future__ import annotations

import dataclasses
import re

from skald.errors import ValidationFailed

MAX_TOPIC_LENGTH = 255

# NUL and the other C0/C1 control characters (MQTT forbids U+0000 and advises against the rest):
# invisible in logs and listings, cut short by C string handling, and never what a client meant.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


class InvalidTopic(ValidationFailed):
    code = "invalid_topic"
    title = "Invalid topic or topic filter"


def validate_topic(topic: object) -> str:
    """Return ``topic`` if it is a valid topic name; raise :class:`InvalidTopic` (400) otherwise."""
    if not isinstance(topic, str) or not 1 <= len(topic) <= MAX_TOPIC_LENGTH:
        raise InvalidTopic(f"topic must be a string of 1-{MAX_TOPIC_LENGTH} characters")
    if "+" in topic or "#" in topic:
        raise InvalidTopic("topic must not contain '+' or '#' (they are filter wildcards)")
    _refuse_control(topic, "topic")
    if "" in topic.split("/"):
        raise InvalidTopic("topic must not have an empty segment (leading, trailing or double '/')")
    return topic


def _refuse_control(text: str, what: str) -> None:
    found = _CONTROL.search(text)
    if found:
        raise InvalidTopic(f"{what} must not contain control characters (found U+{ord(found[0]):04X})")


@dataclasses.dataclass(frozen=True)
class TopicFilter:
    """A parsed filter; :meth:`matches` tests a topic name."""

    text: str
    segments: tuple[str, ...]
    literal: bool

    @classmethod
    def parse(cls, text: str) -> TopicFilter:
        """Parse a filter; raise :class:`InvalidTopic` (400) if it is malformed."""
        if not 1 <= len(text) <= MAX_TOPIC_LENGTH:
            raise InvalidTopic(f"topic filter must be 1-{MAX_TOPIC_LENGTH} characters")
        _refuse_control(text, "topic filter")
        segments = tuple(text.split("/"))
        for index, segment in enumerate(segments):
            if segment == "":
                raise InvalidTopic(f"topic filter {text!r} has an empty segment")
            if segment == "#":
                if index != len(segments) - 1:
                    raise InvalidTopic(f"topic filter {text!r}: '#' is only allowed as the last segment")
            elif segment != "+" and ("+" in segment or "#" in segment):
                raise InvalidTopic(f"topic filter {text!r}: wildcards must fill a whole segment")
        literal = "+" not in segments and "#" not in segments
        return cls(text, segments, literal)

    def matches(self, topic: str) -> bool:
        if self.literal:
            return topic == self.text
        return match_segments(self.segments, topic.split("/"))

    def may_intersect(self, prefix: str) -> bool:
        """True if some topic matched by this filter starts with the string ``prefix``."""
        return filter_intersects_prefix(self.segments, prefix)


def match_segments(filter_segments: tuple[str, ...], topic_segments: list[str]) -> bool:
    for index, segment in enumerate(filter_segments):
        if segment == "#":
            return True  # the rest, including nothing at all (parent level)
        if index >= len(topic_segments):
            return False
        if segment == "+":
            if topic_segments[index] == "":
                return False
            continue
        if segment != topic_segments[index]:
            return False
    return len(topic_segments) == len(filter_segments)


def match_topic(filter_text: str, topic: str) -> bool:
    """True if ``topic`` matches the filter ``filter_text`` (parsed each call: prefer TopicFilter)."""
    return TopicFilter.parse(filter_text).matches(topic)


def filter_intersects_prefix(filter_segments: tuple[str, ...], prefix: str) -> bool:
    """True if some valid topic matched by the filter starts with ``prefix`` (a plain string prefix)."""
    if prefix == "":
        return True
    prefix_segments = prefix.split("/")
    last = len(prefix_segments) - 1
    for index, wanted in enumerate(prefix_segments):
        if index >= len(filter_segments):
            return False  # the filter's topics are all shorter than the prefix
        segment = filter_segments[index]
        if segment == "#":
            return True
        if index == last:  # possibly partial: the topic's segment must start with it
            return segment == "+" or segment.startswith(wanted)
        if wanted == "":
            return False  # the prefix needs an empty segment, which no topic has
        if segment != "+" and segment != wanted:
            return False
    return True  # unreachable: the loop returns at the last prefix segment


def topic_allowed(topic: str, prefixes: list[str] | None) -> bool:
    """True if ``topic`` is visible under the token's resource prefixes (None = unrestricted)."""
    return prefixes is None or any(topic.startswith(p) for p in prefixes)


def topic_visible(topic: str, filters: list[TopicFilter], prefixes: list[str] | None) -> bool:
    """True if a subscriber with ``filters`` (none = every topic) under ``prefixes`` sees ``topic``.

    The one predicate for live fan-out, replay and ``tail`` alike, so a message a stream would
    deliver live is exactly one it would replay after a reconnect.
    """
    if not topic_allowed(topic, prefixes):
        return False
    return not filters or any(f.matches(topic) for f in filters)
