"""The one decoder for JSON request bodies: strict RFC 8259 / I-JSON, or ``InvalidJSON`` (400).

Every JSON body a route reads goes through :func:`decode_json_body` (the app's
request class calls it from ``get_json``; the webhook Stripe id lookup calls it
directly). What it refuses, and why each would otherwise surface later as a 500:

- bytes that are not UTF-8: Quart decodes the body outside its own error handling;
- a lone surrogate escape (``"\\ud800"``): Python's ``json`` accepts it, but the
  string cannot be encoded to UTF-8 again, so SQLite binding or the response fails;
- nesting deeper than :data:`MAX_JSON_DEPTH`: the C parser raises ``RecursionError``
  near Python's recursion limit, and a value just under that limit still breaks
  whatever recurses over it afterwards (pydantic, ``json.dumps`` of a payload);
- ``NaN``, ``Infinity`` and numbers that overflow a double (``1e400``): not JSON,
  and they reach code that cannot store or compare them.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate, repeat
from typing import Any

from skald.errors import InvalidJSON

MAX_JSON_DEPTH = 128  # arrays/objects inside each other; serde_json's default limit, ample for real data

# A ``\uD800``-``\uDFFF`` escape somewhere in the text: only then can a decoded string hold a surrogate
# (strict UTF-8 decoding refuses encoded surrogates). An escaped backslash before "u" can match too;
# the walk below then finds nothing, which costs time but never a wrong answer.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_BRACKET = str.maketrans("", "", "0123456789+-.eE truefalsn,:\t\r\n")  # all else outside strings
_DELTA = {"[": 1, "{": 1, "]": -1, "}": -1}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is out of range for a double")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def decode_json_body(data: bytes | str) -> Any:
    """Decode one JSON document; raise :class:`~skald.errors.InvalidJSON` for anything that is not.

    ``data`` is the raw body (UTF-8 bytes) or text already decoded. The result
    holds only strings that encode to UTF-8, finite floats, and at most
    :data:`MAX_JSON_DEPTH` levels of arrays and objects.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJSON(f"request body is not valid UTF-8 (byte {exc.start})") from None
    else:
        text = data
    # Depth is checked before decoding (skipped when the text shows it cannot fail: one count): the
    # decoder recurses, and a garbage collection that runs finalizers a thousand frames deep makes them
    # fail with RecursionError of their own (an unraisable error outside this request).
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _depth(text) > MAX_JSON_DEPTH:
        raise InvalidJSON(f"JSON is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = _DECODER.decode(text)
    except RecursionError:  # deep nesting _depth could not see (text that is not valid JSON)
        raise InvalidJSON(f"JSON is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, or a refused constant/number, or an int over 4300 digits
        raise InvalidJSON(f"request body is not valid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(text):
        _refuse_surrogates(value)
    return value


def _depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text``, valid JSON (scanned in C, not walked)."""
    # Valid JSON has backslashes only inside strings: without its escaped backslashes and quotes, every
    # other piece between quotes is outside a string. str methods all, no per-character Python loop.
    unescaped = text.replace("\\\\", "").replace('\\"', "")
    brackets = "".join(unescaped.split('"')[::2]).translate(_NOT_BRACKET)  # what is left: [ ] { }
    return max(accumulate(map(_DELTA.get, brackets, repeat(0))), default=0)


def _refuse_surrogates(root: Any) -> None:
    """Raise :class:`InvalidJSON` if a string (or key) anywhere in ``root`` holds a surrogate."""
    stack: list[Any] = [root]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise InvalidJSON("JSON string holds a lone surrogate (\\ud800-\\udfff), which is not Unicode text")
        elif isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
