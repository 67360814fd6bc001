"""Query-string and header values routes read as numbers, with one error shape.

Every route reads its numeric parameters through :func:`int_param` or
:func:`float_param`, so the same rules hold everywhere: plain ASCII decimal
digits (no ``_``, no spaces, no other scripts' digits), and a value inside the
bounds. Integers are always bounded by SQLite's 64-bit range, because a
larger Python int reaches SQLite as ``OverflowError`` (a 500) wherever it is
bound.
"""

from __future__ import annotations

import math
import re
from typing import overload

from skald.errors import ValidationFailed

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_INTEGER = re.compile(r"-?[0-9]{1,19}")  # 19 digits hold every int64; more is refused before int()
# Up to 17 fractional digits: how a client's JSON encoder or Python's repr writes any float that needs
# no exponent (0.30000000000000004, 107.80923044364803), which OpenAPI's "number" lets a client send.
_DECIMAL = re.compile(r"[0-9]{1,12}(\.[0-9]{1,17})?|\.[0-9]{1,17}")


def _bounds(name: str, minimum: float, maximum: float) -> str:
    return f"{name} must be a number from {minimum:g} to {maximum:g}"


@overload
def int_param(name: str, raw: str | None, default: int, *, minimum: int = 0, maximum: int = INT64_MAX) -> int: ...
@overload
def int_param(
    name: str, raw: str | None, default: None = None, *, minimum: int = 0, maximum: int = INT64_MAX
) -> int | None: ...
def int_param(
    name: str, raw: str | None, default: int | None = None, *, minimum: int = 0, maximum: int = INT64_MAX
) -> int | None:
    """``raw`` as an int in ``[minimum, maximum]``; ``default`` when absent or empty; else 400.

    Raises :class:`~skald.errors.ValidationFailed` (``validation_failed``) for
    anything but decimal digits with an optional ``-``, and for values out of range.
    """
    if raw is None or raw == "":
        return default
    minimum, maximum = max(minimum, INT64_MIN), min(maximum, INT64_MAX)
    if not _INTEGER.fullmatch(raw):
        if re.fullmatch(r"-?[0-9]+", raw):  # digits, just too many of them
            raise ValidationFailed(f"{name} must be at least {minimum} and at most {maximum}")
        raise ValidationFailed(f"{name} must be an integer")
    value = int(raw)
    if not minimum <= value <= maximum:
        raise ValidationFailed(f"{name} must be at least {minimum} and at most {maximum}")
    return value


def float_param(name: str, raw: str | None, default: float, *, minimum: float, maximum: float) -> float:
    """``raw`` as a decimal number of seconds (or similar) in ``[minimum, maximum]``; else 400.

    Only plain decimals (``2``, ``0.5``, ``.25``): no exponent, sign, ``nan`` or ``inf``,
    which ``float()`` would accept and the caller could not use as a bound.
    """
    if raw is None or raw == "":
        return default
    if not _DECIMAL.fullmatch(raw):
        raise ValidationFailed(_bounds(name, minimum, maximum), minimum=minimum, maximum=maximum)
    value = float(raw)
    if not (math.isfinite(value) and minimum <= value <= maximum):
        raise ValidationFailed(_bounds(name, minimum, maximum), minimum=minimum, maximum=maximum)
    return value


# A client may ask an SSE stream for its own heartbeat interval, within these bounds. The floor is
# what keeps a stream from becoming a busy loop of heartbeats (``0`` used to mean one every 50 ms);
# the ceiling keeps proxies from timing an idle stream out. docs/pubsub.md and docs/query.md say so.
HEARTBEAT_MIN_SECONDS = 0.1
HEARTBEAT_MAX_SECONDS = 3600.0


def heartbeat_param(raw: str | None, default: float) -> float:
    """The ``heartbeat`` query parameter in seconds; ``default`` when absent; else 400."""
    return float_param("heartbeat", raw, default, minimum=HEARTBEAT_MIN_SECONDS, maximum=HEARTBEAT_MAX_SECONDS)
