"""skald's printf/format/instr/replace/trim answer exactly what SQLite's own functions answer.

DocConnection replaces them (see skald.db.connection: SQLite's versions can loop far past the
time limit inside one call); these properties compare every result, and its SQL type, with
the built-in function on a plain connection, for generated arguments of every type.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from skald.db.connection import DocConnection, open_connection

values = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=12),
    st.text(alphabet="ab\u00e9\u20ac\U0001f600 ", max_size=12),
    st.binary(max_size=8),
)
LIMIT = 1 << 20
formats = st.text(alphabet="%-+ #0!,.*123lcdsifgeEGqQwxXozn%ab", max_size=14)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DocConnection, sqlite3.Connection]]:
    ours = open_connection(Path(tmp_path_factory.mktemp("fn")) / "doc.db")
    theirs = sqlite3.connect(":memory:")
    for conn in (ours, theirs):  # printf('%333333333d') would build 333 MB under the default
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, LIMIT)
    try:
        yield ours, theirs
    finally:
        ours.close()
        theirs.close()


def _run(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> tuple[str, Any]:
    try:
        value, kind = conn.execute(f"SELECT v, typeof(v) FROM (SELECT {sql} AS v)", args).fetchone()
    except sqlite3.Error as exc:
        return "error", type(exc).__name__
    return kind, value


def _same(pair: tuple[DocConnection, sqlite3.Connection], sql: str, *args: Any) -> None:
    ours, theirs = pair
    expected = _run(theirs, sql, args)
    assume(expected[0] != "error")  # e.g. text that is not UTF-8: Python cannot read it either way
    assert _run(ours, sql, args) == expected, (sql, args)


common = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@common
@given(values, values)
def test_instr(pair: tuple[DocConnection, sqlite3.Connection], haystack: Any, needle: Any) -> None:
    _same(pair, "instr(?, ?)", haystack, needle)


@common
@given(values, values, values)
def test_replace(pair: tuple[DocConnection, sqlite3.Connection], text: Any, old: Any, new: Any) -> None:
    _same(pair, "replace(?, ?, ?)", text, old, new)


@common
@given(st.sampled_from(["trim", "ltrim", "rtrim"]), values, values)
def test_trim(pair: tuple[DocConnection, sqlite3.Connection], name: str, text: Any, chars: Any) -> None:
    _same(pair, f"{name}(?, ?)", text, chars)
    _same(pair, f"{name}(?)", text)


@common
@given(st.sampled_from(["printf", "format"]), formats, st.lists(values, max_size=4))
def test_printf(pair: tuple[DocConnection, sqlite3.Connection], name: str, fmt: str, args: list[Any]) -> None:
    _same(pair, f"{name}({', '.join('?' * (1 + len(args)))})", fmt, *args)


@common
@given(st.integers(min_value=-(2**40), max_value=2**40), st.sampled_from(["%.*c", "%-5.*c|", "%*.*c"]))
def test_printf_repeat_counts(pair: tuple[DocConnection, sqlite3.Connection], count: int, fmt: str) -> None:
    ours, _ = pair
    ours.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000)
    try:
        args = (3, count, "x") if fmt.startswith("%*") else (count, "x")
        # within the limit: what SQLite answers; past it: NULL, as SQLite answers after its loop
        if abs(count) < 900:
            _same(pair, f"printf(?, {', '.join('?' * len(args))})", fmt, *args)
        else:
            assert _run(ours, f"printf(?, {', '.join('?' * len(args))})", (fmt, *args))[0] in ("null", "text")
    finally:
        ours.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, LIMIT)


like_patterns = st.text(alphabet="%_ab\u00e9AB\\x[]^-*?\x00", max_size=10)
like_texts = st.one_of(st.text(alphabet="abAB\u00e9x%_[]^-*?\\\x00", max_size=12), values)


@common
@given(like_patterns, like_texts)
def test_like_and_glob(pair: tuple[DocConnection, sqlite3.Connection], pattern: str, text: Any) -> None:
    _same(pair, "? LIKE ?", text, pattern)
    _same(pair, "? GLOB ?", text, pattern)
    _same(pair, "like(?, ?)", pattern, text)


@common
@given(like_patterns, like_texts, st.one_of(st.sampled_from(["\\", "x", "%", "_", "a", "A", "", "ab"]), values))
def test_like_escape(pair: tuple[DocConnection, sqlite3.Connection], pattern: str, text: Any, escape: Any) -> None:
    _same(pair, "? LIKE ? ESCAPE ?", text, pattern, escape)


@common
@given(values, values)
def test_like_and_glob_any_types(pair: tuple[DocConnection, sqlite3.Connection], pattern: Any, text: Any) -> None:
    _same(pair, "? LIKE ?", text, pattern)
    _same(pair, "? GLOB ?", text, pattern)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(alphabet="ab", max_size=3),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from("abc"), children, max_size=3),
    max_leaves=8,
)


@common
@given(json_values, json_values, values)
def test_json_patch(pair: tuple[DocConnection, sqlite3.Connection], target: Any, patch: Any, other: Any) -> None:
    _same(pair, "json_patch(?, ?)", json.dumps(target), json.dumps(patch))
    _same(pair, "json_patch(?, ?)", other, json.dumps(patch))
