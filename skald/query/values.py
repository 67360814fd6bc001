"""JSON <-> SQLite value mapping of the query API, and the canonical ``result_hash``.

| SQLite | JSON out | JSON in |
|---|---|---|
| NULL | null | null |
| INTEGER within +-(2^53-1) | number | number (true/false -> 1/0) |
| INTEGER beyond | {"$int": "..."} | number fitting int64, or {"$int": "..."} |
| REAL | number; +-inf as {"$float": "Infinity"} | finite number |
| TEXT | string | string |
| BLOB | {"$base64": "..."} | {"$base64": "..."} |
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from skald.errors import BadRequest

MAX_SAFE_INTEGER = 2**53 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

JSONValue = Any
Params = tuple[Any, ...] | dict[str, Any]


class InvalidArgument(BadRequest):
    code = "invalid_argument"
    title = "A statement argument cannot be bound"


def decode_arg(value: JSONValue) -> Any:
    """JSON argument -> SQLite value. See docs/query.md for the mapping."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidArgument(f"integer {value} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument("NaN and infinity cannot be bound")
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((key, inner),) = value.items()
        if key == "$base64" and isinstance(inner, str):
            try:
                return base64.b64decode(inner, validate=True)
            except ValueError:
                raise InvalidArgument('invalid base64 in {"$base64": ...}') from None
        if key == "$int" and isinstance(inner, str):
            try:
                number = int(inner, 10)
            except ValueError:
                raise InvalidArgument(f'invalid integer in {{"$int": {inner!r}}}') from None
            return decode_arg(number)
    raise InvalidArgument(
        f'cannot bind {json.dumps(value)[:80]}: use null, a number, a string, {{"$base64"}} or {{"$int"}}'
    )


def decode_args(args: Sequence[JSONValue] | Mapping[str, JSONValue] | None) -> Params:
    if args is None:
        return ()
    if isinstance(args, Mapping):
        return {str(k): decode_arg(v) for k, v in args.items()}
    if isinstance(args, Sequence) and not isinstance(args, str):
        return tuple(decode_arg(v) for v in args)
    raise InvalidArgument("args must be a list (positional) or an object (named)")


def encode_value(value: Any) -> JSONValue:
    """SQLite value -> JSON value (lossless; see docs/query.md)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else {"$int": str(value)}
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"$float": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    return str(value)


def approx_size(value: JSONValue) -> int:
    if value is None:
        return 4
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, dict):
        return sum(len(str(v)) + 12 for v in value.values())
    return len(repr(value))


def canonical_json(columns: Sequence[str], rows: Sequence[Sequence[JSONValue]]) -> bytes:
    """The canonical encoding hashed into ``result_hash`` (stable across runs and machines)."""
    return json.dumps(
        {"columns": list(columns), "rows": [list(r) for r in rows]},
        ensure_ascii=False,
        separators=(",", ":"),
        sort_keys=True,
        allow_nan=False,
    ).encode("utf-8")


def result_hash(columns: Sequence[str], rows: Sequence[Sequence[JSONValue]]) -> str:
    return hashlib.sha256(canonical_json(columns, rows)).hexdigest()
