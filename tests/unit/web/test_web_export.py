"""CSV and NDJSON encoding of query results (skald.http.export): what a spreadsheet or jq reads back."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skald.http.export import CHUNK_ROWS, UnsupportedFormat, _csv_chunks, _ndjson_chunks, flat_value, negotiate

# What the query API's JSON mapping produces for a cell (docs/query.md).
values = st.one_of(
    st.none(), st.integers(-(2**53) + 1, 2**53 - 1), st.floats(allow_nan=False, allow_infinity=False),
    st.text(), st.sampled_from(["a\u2028b", "\x85", "x\r\ny", '"']),
    st.builds(lambda b: {"$base64": b}, st.text("ABCDEFabcdef0123456789+/=", max_size=12)),
    st.builds(lambda i: {"$int": str(i)}, st.integers(2**53, 2**63 - 1)),
)


async def collect(chunks: Any) -> bytes:
    return b"".join([chunk async for chunk in chunks])


@settings(deadline=None)  # the first example pays for the event loop's start-up
@given(columns=st.lists(st.text(min_size=1), min_size=1, max_size=4, unique=True), data=st.data())
async def test_csv_reads_back_as_the_flattened_values(columns: list[str], data: st.DataObject) -> None:
    rows = data.draw(st.lists(st.lists(values, min_size=len(columns), max_size=len(columns)), max_size=5))
    body = (await collect(_csv_chunks(columns, rows))).decode("utf-8")
    parsed = list(csv.reader(io.StringIO(body, newline="")))
    assert parsed[0] == columns
    assert parsed[1:] == [[flat_value(v) for v in row] for row in rows]


@settings(deadline=None)
@given(rows=st.lists(st.lists(values, min_size=2, max_size=2), max_size=5))
async def test_ndjson_is_one_object_per_row(rows: list[list[Any]]) -> None:
    body = (await collect(_ndjson_chunks(["a", "b"], rows))).decode("utf-8")
    assert body == "" or body.endswith("\n")
    lines = body.split("\n")[:-1]
    assert body.splitlines() == lines  # no U+2028 or U+0085 raw inside a line: they split lines too
    assert [json.loads(line) for line in lines] == [{"a": row[0], "b": row[1]} for row in rows]


async def test_large_results_stream_in_chunks() -> None:
    rows = [[n, f"row {n}"] for n in range(CHUNK_ROWS * 3 + 1)]
    chunks = [chunk async for chunk in _csv_chunks(["n", "text"], rows)]
    assert len(chunks) == 4  # one per CHUNK_ROWS rows: never the whole export as one string
    assert b"".join(chunks).count(b"\r\n") == len(rows) + 1


def test_negotiation() -> None:
    assert negotiate(None, "") == "json"
    assert negotiate(None, "text/csv") == "csv"
    assert negotiate(None, "application/x-ndjson, application/json;q=0.5") == "ndjson"
    assert negotiate(None, "application/json, text/csv") == "json"  # the first named wins
    assert negotiate("csv", "application/json") == "csv"  # ?format= beats Accept
    with pytest.raises(UnsupportedFormat):
        negotiate("xml", "")
