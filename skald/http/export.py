"""Query results as CSV and NDJSON (``?format=csv|ndjson`` or ``Accept``), streamed.

The statement runs under the same limits as a JSON answer (rows, bytes, time: the result is complete
before the first byte leaves); what is streamed is the encoding, a chunk per :data:`CHUNK_ROWS` rows,
so a large export never exists twice in memory as one string. ``Skald-Truncated: true`` says the row
or byte cap cut the result (CSV has no room for that in its body).

Values follow the JSON mapping of docs/query.md, flattened for CSV as Datasette does: NULL is an
empty field, a blob its base64 text, a 64-bit integer beyond 2^53 its decimal digits.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from quart import Response

from skald.errors import BadRequest

CHUNK_ROWS = 200
FORMATS = ("json", "csv", "ndjson")
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}
_ACCEPT = {"text/csv": "csv", "application/x-ndjson": "ndjson", "application/ndjson": "ndjson"}


class UnsupportedFormat(BadRequest):
    code = "unsupported_format"
    title = "Unknown result format"


def negotiate(format_arg: str | None, accept: str) -> str:
    """``json``, ``csv`` or ``ndjson``: ``?format=`` if given (400 ``unsupported_format`` if unknown),
    else the first of ``Accept``'s media types that names one of them, else ``json``."""
    if format_arg is not None:
        if format_arg not in FORMATS:
            raise UnsupportedFormat(f"format must be one of {', '.join(FORMATS)}, not {format_arg!r}")
        return format_arg
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in _ACCEPT:
            return _ACCEPT[media]
        if media in ("application/json", "*/*"):
            return "json"
    return "json"


def flat_value(value: Any) -> str:
    """One JSON-mapped value as CSV text."""
    if value is None:
        return ""
    if isinstance(value, dict) and len(value) == 1:
        ((_, inner),) = value.items()  # {"$base64"|"$int"|"$float": text}
        return str(inner)
    return str(value)


async def _csv_chunks(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180 line ends
    writer.writerow(columns)
    for start in range(0, len(rows), CHUNK_ROWS):
        writer.writerows([flat_value(v) for v in row] for row in rows[start:start + CHUNK_ROWS])
        yield buffer.getvalue().encode("utf-8")
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode("utf-8")


# Characters that end a line for str.splitlines() and JavaScript, though JSON may hold them raw:
# escaped, so every reader sees exactly one object per line.
_LINE_BREAKS = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029\x1c\x1d\x1e\x0b\x0c"})


def _ndjson_line(columns: Sequence[str], row: Sequence[Any]) -> str:
    text = json.dumps(dict(zip(columns, row, strict=True)), ensure_ascii=False, separators=(",", ":"))
    return text.translate(_LINE_BREAKS)


async def _ndjson_chunks(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> AsyncIterator[bytes]:
    for start in range(0, len(rows), CHUNK_ROWS):
        lines = (_ndjson_line(columns, row) for row in rows[start:start + CHUNK_ROWS])
        yield ("\n".join(lines) + "\n").encode("utf-8")


def export_response(
    fmt: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, truncated: bool, filename: str = ""
) -> Response:
    """A streamed ``text/csv`` or ``application/x-ndjson`` response of a result."""
    chunks = _csv_chunks(columns, rows) if fmt == "csv" else _ndjson_chunks(columns, rows)
    response = Response(chunks, content_type=MEDIA_TYPES[fmt])
    response.headers["Skald-Truncated"] = "true" if truncated else "false"
    response.headers["Cache-Control"] = "no-store"
    if filename:
        response.headers["Content-Disposition"] = f'attachment; filename="{filename}.{fmt}"'
    return response
