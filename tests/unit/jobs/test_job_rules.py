"""The job queue's pure rules: backoff timing, RFC 3339 times, and search filters against real SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skald.db.connection import DocConnection, open_connection
from skald.db.migrations import apply_migrations
from skald.errors import SkaldError, ValidationFailed
from skald.jobs import ops, search
from skald.jobs.model import Backoff, JobSpec, parse_time


@pytest.mark.parametrize(("strategy", "delays"), [
    ("none", [0, 0, 0, 0]),
    ("fixed", [5, 5, 5, 5]),
    ("linear", [5, 10, 15, 20]),
    ("exponential", [5, 10, 20, 30]),  # capped at max_seconds
])
def test_backoff_delays(strategy: str, delays: list[float]) -> None:
    backoff = Backoff.parse({"strategy": strategy, "base_seconds": 5, "max_seconds": 30})
    assert [backoff.delay_seconds(n) for n in (1, 2, 3, 4)] == delays


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)))
def test_rfc3339_times_agree_with_datetime(moment: datetime) -> None:
    text = moment.isoformat().replace("+00:00", "Z")
    expected = int(moment.timestamp() * 1000) if moment.microsecond == 0 else None
    parsed = parse_time("t", text)
    assert parsed is not None
    if expected is not None:
        assert parsed == expected
    assert abs(parsed - moment.timestamp() * 1000) < 1.001


@pytest.mark.parametrize("text", ["2026-02-29T00:00:00Z", "2026-01-01", "2026-01-01T24:00:00Z", "", "tomorrow",
                                  "2026-01-01T00:00:00+24:00"])
def test_not_rfc3339_is_refused(text: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_time("t", text)


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocConnection]:
    path: Path = tmp_path_factory.mktemp("jobs") / "doc.sqlite3"
    connection = open_connection(path)
    apply_migrations(connection, "document")
    tx = ops.Tx(connection, 1_700_000_000_000)
    for n in range(20):
        spec = JobSpec.parse({"queue": "q" if n % 2 else "r", "payload": {"n": n, "kind": ["a", "b"][n % 2]},
                              "tags": ["t"] if n < 5 else [], "priority": "high" if n == 3 else None}, 1 << 20)
        ops.enqueue(tx, spec)
    connection.commit()
    yield connection
    connection.close()


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_known = st.sampled_from(sorted(search.FILTER_KEYS))


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.dictionaries(_known, _values, max_size=4), st.sampled_from(sorted(search.SORTS)), st.booleans())
def test_any_filter_is_refused_cleanly_or_runs(conn: DocConnection, data: dict[str, object], sort: str,
                                               descending: bool) -> None:
    """Whatever a client sends as a filter: a 400, or SQL that SQLite runs (never a 500)."""
    try:
        where = search.parse_filter(data)
    except SkaldError as exc:
        assert exc.status == 400
        return
    page = search.Page(sort, descending, 5, None)
    result = search.search(ops.Tx(conn, 1_700_000_000_000), where, page)
    assert len(result["jobs"]) <= 5
    conn.rollback()


def test_payload_contains_matches_fields_exactly(conn: DocConnection) -> None:
    tx = ops.Tx(conn, 1_700_000_000_000)
    found = search.search(tx, search.parse_filter({"payload_contains": {"kind": "a", "n": 4}}),
                          search.Page("id", False, 100, None))
    assert [job["payload"] for job in found["jobs"]] == [{"n": 4, "kind": "a"}]
    text = search.search(tx, search.parse_filter({"payload_contains": json.dumps("b")}),
                         search.Page("id", False, 100, None))
    assert len(text["jobs"]) == 10


_fields = st.sampled_from(["queue", "payload", "priority", "run_at", "max_attempts", "backoff", "unique_key",
                           "unique_for_seconds", "tags", "timeout_seconds", "other"])


@given(st.dictionaries(_fields, _values, max_size=6).map(lambda d: {"queue": "q", **d})
       | st.dictionaries(_fields, _values, max_size=6) | _values)
def test_any_enqueue_body_is_refused_cleanly_or_accepted(body: object) -> None:
    try:
        spec = JobSpec.parse(body, 1 << 20)
    except SkaldError as exc:
        assert exc.status in (400, 413)
        return
    assert spec.queue and 1 <= spec.max_attempts <= 1000 and spec.backoff.delay_seconds(3) >= 0
