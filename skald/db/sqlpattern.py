"""SQLite's LIKE and GLOB, matched in time linear in the text (see :mod:`skald.db.connection`).

SQLite's own matcher tries the rest of the pattern at every occurrence of the character
after each ``%``/``*``: len(text) x len(pattern) inside one function call, where no
progress handler runs (a 16 MB text and a 256-character pattern: 18-36 s). The same
semantics, matched differently: a pattern is split at its ``%``/``*`` into segments of
single-character matchers; the first must match at the start, the last at the end, and
each middle one at its leftmost place after the previous (matching any segment further
right can only leave less text for the rest, so the leftmost choice is always right).
A literal segment is found with ``str.find`` (linear); a segment with ``_``/``?``/``[...]``
with a regex search, whose worst case is len(text) x len(segment): beyond a budget the
call is refused as too big rather than run.

Semantics copied from SQLite 3.40's ``patternCompare`` and ``likeFunc``: LIKE folds ASCII
letters only, ``_`` and ``?`` match any one character, a GLOB class ``[...]`` may start with
``^`` (negation) and then ``]`` (a literal), ``a-z`` is a range (a ``-`` first or last is
literal), an unclosed ``[`` never matches, an ESCAPE character makes the next character
literal (and loses its own wildcard meaning), text and pattern end at a NUL.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# Most regex steps one wildcard-segment search may take (about 0.5 s).
SEARCH_BUDGET = 1 << 28


class PatternTooCostly(Exception):
    """Matching would cost more than the budget: the caller reports the value as too big."""


_ANY = "R[\\s\\S]"  # one character, whatever it is (``_`` / ``?``)


@dataclass(frozen=True)
class _Segment:
    """Characters between two ``%``: ``lead`` and ``trail`` any-characters around a ``core``."""

    length: int
    lead: int
    trail: int
    literal: str | None  # the core's text when it has no single-character wildcard
    regex: re.Pattern[str] | None  # the whole segment
    core_regex: re.Pattern[str] | None

    def match_at(self, text: str, pos: int) -> bool:
        if self.literal is not None:
            return text.startswith(self.literal, pos + self.lead)
        assert self.regex is not None
        return self.regex.match(text, pos) is not None

    def find(self, text: str, start: int, end: int) -> int:
        """The leftmost start of this segment within ``text[start:end]``, or -1."""
        lo, hi = start + self.lead, end - self.trail
        if self.literal is not None:
            found = text.find(self.literal, lo, hi)
        else:
            assert self.core_regex is not None
            if (hi - lo) * (self.length - self.lead - self.trail) > SEARCH_BUDGET:
                raise PatternTooCostly()
            match = self.core_regex.search(text, lo, hi) if lo <= hi else None
            found = -1 if match is None else match.start()
        return -1 if found < 0 else found - self.lead


def _segment(parts: list[str]) -> _Segment:
    """``parts``: each either ``"L" + char`` (a literal) or ``"R" + regex for one char``."""
    lead = 0
    while lead < len(parts) and parts[lead] == _ANY:
        lead += 1
    trail = 0
    while trail < len(parts) - lead and parts[len(parts) - 1 - trail] == _ANY:
        trail += 1
    core = parts[lead : len(parts) - trail]

    def regex(items: list[str]) -> re.Pattern[str]:
        return re.compile("".join(re.escape(p[1:]) if p[0] == "L" else p[1:] for p in items), re.DOTALL)

    if all(p[0] == "L" for p in core):
        return _Segment(len(parts), lead, trail, "".join(p[1:] for p in core), None, None)
    return _Segment(len(parts), lead, trail, None, regex(parts), regex(core))


@dataclass(frozen=True)
class _Pattern:
    segments: tuple[_Segment, ...]  # one more than the multi-character wildcards
    never: bool = False  # an unclosed [ : SQLite never matches
    # the segments' texts when none has a single-character wildcard (most patterns): str methods only
    literals: tuple[str, ...] | None = None

    def matches(self, text: str) -> bool:
        if self.literals is not None:
            lits = self.literals
            if len(lits) == 1:
                return text == lits[0]
            head, tail = lits[0], lits[-1]
            if len(head) + len(tail) > len(text) or not text.startswith(head) or not text.endswith(tail):
                return False
            at, stop = len(head), len(text) - len(tail)
            for lit in lits[1:-1]:
                at = text.find(lit, at, stop)
                if at < 0:
                    return False
                at += len(lit)
            return True
        if self.never:
            return False
        first, last = self.segments[0], self.segments[-1]
        if len(self.segments) == 1:
            return len(text) == first.length and first.match_at(text, 0)
        end = len(text) - last.length
        if first.length > end or not first.match_at(text, 0) or not last.match_at(text, end):
            return False
        pos = first.length
        for segment in self.segments[1:-1]:
            found = segment.find(text, pos, end)
            if found < 0:
                return False
            pos = found + segment.length
        return True


def _glob_class(pattern: str, i: int) -> tuple[str | None, int]:
    """The regex of the class starting after ``[`` at ``i`` and the index after its ``]``;
    ``None`` when the class is not closed."""
    n = len(pattern)
    invert = i < n and pattern[i] == "^"
    if invert:
        i += 1
    chars: list[str] = []
    ranges: list[tuple[str, str]] = []
    if i < n and pattern[i] == "]":
        chars.append("]")
        i += 1
    prior: str | None = None
    while i < n and pattern[i] != "]":
        c = pattern[i]
        if c == "-" and i + 1 < n and pattern[i + 1] != "]" and prior is not None:
            ranges.append((prior, pattern[i + 1]))
            prior = None
            i += 2
            continue
        chars.append(c)
        prior = c
        i += 1
    if i >= n:
        return None, i
    body = "".join(re.escape(c) for c in chars)
    body += "".join(f"{re.escape(lo)}-{re.escape(hi)}" for lo, hi in ranges if lo <= hi)
    if not body:
        return ("[\\s\\S]" if invert else "(?!)"), i + 1
    return f"[{'^' if invert else ''}{body}]", i + 1


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str, glob: bool, escape: str | None) -> _Pattern:
    """A LIKE (folded, ``escape`` or None) or GLOB pattern, compiled once per distinct pattern."""
    pattern = pattern.partition("\x00")[0]
    # LIKE folds while comparing characters, not before recognising the escape character
    fold = _ASCII_FOLD if not glob else {}
    multi, one = ("*", "?") if glob else ("%", "_")
    if escape == multi:
        multi = ""
    if escape == one:
        one = ""
    segments: list[_Segment] = []
    parts: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == multi:
            segments.append(_segment(parts))
            parts = []
        elif c == one:
            parts.append(_ANY)
        elif glob and c == "[":
            regex, i = _glob_class(pattern, i)
            if regex is None:
                return _Pattern((_segment([]),), never=True)
            parts.append("R" + regex)
        elif escape is not None and c == escape:
            if i >= n:
                return _Pattern((_segment([]),), never=True)  # a trailing escape never matches
            parts.append("L" + pattern[i].translate(fold))
            i += 1
        else:
            parts.append("L" + c.translate(fold))
    segments.append(_segment(parts))
    literals = None
    if all(seg.literal is not None and seg.lead == seg.trail == 0 for seg in segments):
        literals = tuple(seg.literal or "" for seg in segments)
    return _Pattern(tuple(segments), literals=literals)


def like(pattern: str, text: str, escape: str | None = None) -> bool:
    if "\x00" in text:
        text = text.partition("\x00")[0]
    # str.lower() folds only A-Z in ASCII text, and is much faster than translate()
    return compile_pattern(pattern, False, escape).matches(
        text.lower() if text.isascii() else text.translate(_ASCII_FOLD)
    )


def glob(pattern: str, text: str) -> bool:
    if "\x00" in text:
        text = text.partition("\x00")[0]
    return compile_pattern(pattern, True, None).matches(text)
