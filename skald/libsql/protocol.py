"""Hrana's JSON wire format: values, statements, batches and their conditions, results, errors.

Values (``docs/HRANA_3_SPEC.md``, "Values"): ``{"type": "null"}``, ``{"type": "integer",
"value": "<decimal string>"}`` (a string, so 64-bit integers survive JavaScript),
``{"type": "float", "value": <number>}``, ``{"type": "text", "value": "..."}`` and
``{"type": "blob", "base64": "..."}``. Decoding is strict: a malformed request is a
:class:`HranaProtocolError`, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from skald.db.actor import sqlite_cause
from skald.errors import SkaldError
from skald.libsql.errors import HranaProtocolError
from skald.query.values import Params

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
Json = Any


def encode_value(value: Any) -> Json:
    """SQLite value -> Hrana value."""
    if value is None:
        return {"type": "null"}
    if isinstance(value, int):
        return {"type": "integer", "value": str(value)}
    if isinstance(value, float):
        if math.isfinite(value):
            return {"type": "float", "value": value}
        # JSON has no infinities: sent as text rather than as a number that is not the value.
        return {"type": "text", "value": "Infinity" if value > 0 else "-Infinity"}
    if isinstance(value, str):
        return {"type": "text", "value": value}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"type": "blob", "base64": base64.b64encode(bytes(value)).decode("ascii")}
    return {"type": "text", "value": str(value)}


def decode_value(value: Json) -> Any:
    """Hrana value -> SQLite value; :class:`HranaProtocolError` when malformed."""
    if not isinstance(value, Mapping):
        raise HranaProtocolError("a value must be an object with a type")
    kind = value.get("type")
    if kind == "null":
        return None
    inner = value.get("value")
    if kind == "integer":
        if isinstance(inner, str):
            try:
                number = int(inner, 10)
            except ValueError:
                raise HranaProtocolError(f"integer value {inner[:40]!r} is not a decimal integer") from None
        elif isinstance(inner, int) and not isinstance(inner, bool):
            number = inner
        else:
            raise HranaProtocolError("an integer value must be a decimal string")
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise HranaProtocolError(f"integer {number} does not fit in 64 bits")
        return number
    if kind == "float":
        if isinstance(inner, bool) or not isinstance(inner, int | float):
            raise HranaProtocolError("a float value must be a number")
        return float(inner)
    if kind == "text":
        if not isinstance(inner, str):
            raise HranaProtocolError("a text value must be a string")
        return inner
    if kind == "blob":
        data = value.get("base64")
        if not isinstance(data, str):
            raise HranaProtocolError("a blob value needs base64")
        try:
            # Hrana's base64 may leave the padding out.
            return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise HranaProtocolError("invalid base64 in a blob value") from None
    raise HranaProtocolError(f"unknown value type {str(kind)[:40]!r}")


def _obj(value: Json, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise HranaProtocolError(f"{what} must be an object")
    return value


def _int(value: Json, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HranaProtocolError(f"{what} must be an integer")
    return value


@dataclasses.dataclass(frozen=True)
class Stmt:
    """A decoded Hrana ``Stmt``: SQL text (or the id of stored text) and its arguments."""

    sql: str | None
    sql_id: int | None
    params: Params
    want_rows: bool = True


def decode_stmt(raw: Json) -> Stmt:
    body = _obj(raw, "stmt")
    sql = body.get("sql")
    sql_id = body.get("sql_id")
    if sql is not None and not isinstance(sql, str):
        raise HranaProtocolError("stmt.sql must be a string")
    if sql_id is not None:
        sql_id = _int(sql_id, "stmt.sql_id")
    if (sql is None) == (sql_id is None):
        raise HranaProtocolError("a stmt needs exactly one of sql and sql_id")
    args = body.get("args") or []
    named = body.get("named_args") or []
    if not isinstance(args, list) or not isinstance(named, list):
        raise HranaProtocolError("args and named_args must be arrays")
    params: Params
    if named:
        if args:
            # Python's sqlite3 binds either a sequence or a mapping, not both at once.
            raise HranaProtocolError("a stmt cannot mix positional args and named_args here")
        mapping: dict[str, Any] = {}
        for entry in named:
            entry = _obj(entry, "a named arg")
            name = entry.get("name")
            if not isinstance(name, str) or not name:
                raise HranaProtocolError("a named arg needs a name")
            # SQLite's names carry their prefix (:a, @a, $a); sqlite3 looks them up without it.
            key = name[1:] if name[0] in ":@$" else name
            mapping[key] = decode_value(entry.get("value"))
        params = mapping
    else:
        params = tuple(decode_value(v) for v in args)
    want_rows = body.get("want_rows", True)
    if not isinstance(want_rows, bool):
        raise HranaProtocolError("stmt.want_rows must be a boolean")
    return Stmt(sql, sql_id, params, want_rows)


# ---- batches ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cond:
    """A batch step's condition: ``kind`` with a ``step`` or sub-conditions."""

    kind: str
    step: int = -1
    conds: tuple[Cond, ...] = ()


@dataclasses.dataclass(frozen=True)
class Step:
    stmt: Stmt
    condition: Cond | None


def decode_cond(raw: Json, before: int, depth: int = 0) -> Cond:
    """A condition of step ``before``: it may only name earlier steps."""
    if depth > 64:
        raise HranaProtocolError("batch condition nested too deep")
    body = _obj(raw, "a batch condition")
    kind = body.get("type")
    if kind in ("ok", "error"):
        step = _int(body.get("step"), "condition.step")
        if not 0 <= step < before:
            raise HranaProtocolError(f"condition of step {before} refers to step {step}, not an earlier one")
        return Cond(str(kind), step)
    if kind == "not":
        return Cond("not", conds=(decode_cond(body.get("cond"), before, depth + 1),))
    if kind in ("and", "or"):
        conds = body.get("conds")
        if not isinstance(conds, list):
            raise HranaProtocolError(f"an {kind} condition needs conds")
        return Cond(str(kind), conds=tuple(decode_cond(c, before, depth + 1) for c in conds))
    if kind == "is_autocommit":
        return Cond("is_autocommit")
    raise HranaProtocolError(f"unknown batch condition {str(kind)[:40]!r}")


def decode_batch(raw: Json, max_steps: int = 1000) -> list[Step]:
    body = _obj(raw, "batch")
    steps = body.get("steps")
    if not isinstance(steps, list):
        raise HranaProtocolError("batch.steps must be an array")
    if len(steps) > max_steps:
        raise HranaProtocolError(f"a batch has at most {max_steps} steps")
    decoded = []
    for index, raw_step in enumerate(steps):
        step = _obj(raw_step, "a batch step")
        cond = step.get("condition")
        decoded.append(Step(decode_stmt(step.get("stmt")), None if cond is None else decode_cond(cond, index)))
    return decoded


def evaluate(cond: Cond, ok: Sequence[bool | None], autocommit: Callable[[], bool]) -> bool:
    """Whether ``cond`` holds; ``ok[i]`` is True/False for a step that succeeded/failed, None if skipped."""
    if cond.kind == "ok":
        return ok[cond.step] is True
    if cond.kind == "error":
        return ok[cond.step] is False
    if cond.kind == "not":
        return not evaluate(cond.conds[0], ok, autocommit)
    if cond.kind == "and":
        return all(evaluate(c, ok, autocommit) for c in cond.conds)
    if cond.kind == "or":
        return any(evaluate(c, ok, autocommit) for c in cond.conds)
    return autocommit()


# ---- errors ----------------------------------------------------------------------------------------


def error_code(exc: SkaldError) -> str:
    """The Hrana error ``code`` clients raise: SQLite's (extended) error name where SQLite refused
    the statement (``SQLITE_CONSTRAINT_PRIMARYKEY``, ``SQLITE_ERROR``), else skald's stable code in
    capitals (``SCOPE_DENIED``, ``STATEMENT_FORBIDDEN``, ``QUERY_TIMEOUT``, ``TRANSACTION_TIMEOUT``)."""
    if exc.code in ("sql_error", "constraint_violation"):
        cause = sqlite_cause(exc)
        name = getattr(cause, "sqlite_errorname", None)
        if isinstance(name, str):
            return name
        return "SQLITE_CONSTRAINT" if exc.code == "constraint_violation" else "SQLITE_ERROR"
    return exc.code.upper()


def error_json(exc: SkaldError) -> dict[str, str]:
    return {"message": exc.detail, "code": error_code(exc)}


def cursor_entries(result: dict[str, Any]) -> list[dict[str, Any]]:
    """A ``BatchResult`` as cursor entries (step_begin, rows, step_end; or step_error)."""
    entries: list[dict[str, Any]] = []
    for step, (ok, error) in enumerate(zip(result["step_results"], result["step_errors"], strict=True)):
        if error is not None:
            entries.append({"type": "step_error", "step": step, "error": error})
        elif ok is not None:
            entries.append({"type": "step_begin", "step": step, "cols": ok["cols"]})
            entries.extend({"type": "row", "row": row} for row in ok["rows"])
            entries.append({"type": "step_end", "affected_row_count": ok["affected_row_count"],
                            "last_insert_rowid": ok["last_insert_rowid"]})
    return entries
