"""What the libSQL endpoint reads in SQL text itself, before SQLite sees it.

* :func:`transaction_statement`: ``BEGIN``/``COMMIT``/``ROLLBACK`` are not run as user SQL (the
  sandbox refuses transaction statements); a stream turns them into a loan of the document's
  writer (or of a read-only connection for libSQL's ``BEGIN TRANSACTION READONLY``).
* :func:`parameters`: the parameters of a statement, in SQLite's numbering (for ``describe``:
  Python's sqlite3 does not expose ``sqlite3_bind_parameter_name``).
* :func:`split_statements`: a ``sequence`` request's text, one statement at a time (SQLite's own
  ``sqlite3_complete`` decides where a statement ends, triggers' ``BEGIN ... END`` included).
"""

from __future__ import annotations

import enum
import re
import sqlite3
from collections.abc import Iterator


class TxnStatement(enum.Enum):
    BEGIN_WRITE = "begin"
    BEGIN_READ = "begin_readonly"
    COMMIT = "commit"
    ROLLBACK = "rollback"


_LEADING = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.S)
_TXN = re.compile(
    r"(?P<begin>BEGIN(?:\s+(?P<mode>DEFERRED|IMMEDIATE|EXCLUSIVE))?(?:\s+TRANSACTION)?(?:\s+(?P<ro>READONLY))?)"
    r"|(?P<commit>(?:COMMIT|END)(?:\s+TRANSACTION)?)"
    r"|(?P<rollback>ROLLBACK(?:\s+TRANSACTION)?)",
    re.I,
)
_TRAILING = re.compile(r"(?:\s+|;|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.S)


def transaction_statement(sql: str) -> TxnStatement | None:
    """The transaction statement ``sql`` is, or ``None`` (``ROLLBACK TO`` is not one: it is a savepoint's)."""
    start = _LEADING.match(sql)
    pos = start.end() if start else 0
    if sql[pos : pos + 1].upper() not in {"B", "C", "E", "R"}:
        return None  # the hot path: almost every statement
    match = _TXN.match(sql, pos)
    if match is None:
        return None
    rest = _TRAILING.match(sql, match.end())
    if rest is None or rest.end() != len(sql):
        return None
    if match.group("begin"):
        if match.group("ro") and match.group("mode"):
            return None
        return TxnStatement.BEGIN_READ if match.group("ro") else TxnStatement.BEGIN_WRITE
    if match.group("commit"):
        return TxnStatement.COMMIT
    return TxnStatement.ROLLBACK


def _skip_tokens(sql: str) -> Iterator[tuple[int, str]]:
    """(position, character) of every character of ``sql`` outside literals, quoted names and comments."""
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`":
            end = i + 1
            while end < n:
                if sql[end] == c:
                    if end + 1 < n and sql[end + 1] == c:  # doubled quote inside
                        end += 2
                        continue
                    break
                end += 1
            i = end + 1
        elif c == "[":
            end = sql.find("]", i + 1)
            i = n if end < 0 else end + 1
        elif c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif c == "/" and sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            yield i, c
            i += 1


_NAME_CHARS = re.compile(r"[A-Za-z0-9_$\u0080-\U0010ffff]*")
_DIGITS = re.compile(r"[0-9]*")


def parameters(sql: str) -> list[str | None]:
    """Parameter names by index (SQLite's rules): ``?`` is nameless, ``?N`` is named ``?N``,
    ``:a``/``@a``/``$a`` get the next index on first use and keep it."""
    names: dict[int, str | None] = {}
    by_name: dict[str, int] = {}
    highest = 0
    skip_until = -1
    for pos, c in _skip_tokens(sql):
        if pos < skip_until:
            continue
        if c == "?":
            digits = _DIGITS.match(sql, pos + 1)
            assert digits is not None
            if digits.group():
                name = "?" + digits.group()
                index = int(digits.group())
                names[index] = names.get(index) or name
                highest = max(highest, index)
                skip_until = digits.end()
            else:
                highest += 1
                names[highest] = None
        elif c in ":@$":
            match = _NAME_CHARS.match(sql, pos + 1)
            assert match is not None
            if not match.group() or (c == ":" and sql[pos + 1 : pos + 2] == ":"):
                continue
            name = c + match.group()
            skip_until = match.end()
            if name not in by_name:
                highest += 1
                by_name[name] = highest
                names[highest] = name
    return [names.get(index) for index in range(1, highest + 1)]


def split_statements(sql: str) -> Iterator[str]:
    """The statements of ``sql`` (without empty ones), each ending where SQLite says it is complete."""
    start = 0
    for pos, c in _skip_tokens(sql):
        if c == ";" and sqlite3.complete_statement(sql[start : pos + 1]):
            piece = sql[start : pos + 1]
            if piece.strip(" \t\r\n;"):
                yield piece
            start = pos + 1
    tail = sql[start:]
    if _TRAILING.fullmatch(tail) is None:
        yield tail
