"""Query-string and header values routes read as integers, with one error shape."""

from __future__ import annotations

from typing import overload

from skald.errors import ValidationFailed


@overload
def int_param(name: str, raw: str | None, default: int, *, minimum: int = 0, maximum: int | None = None) -> int: ...
@overload
def int_param(
    name: str, raw: str | None, default: None = None, *, minimum: int = 0, maximum: int | None = None
) -> int | None: ...
def int_param(
    name: str, raw: str | None, default: int | None = None, *, minimum: int = 0, maximum: int | None = None
) -> int | None:
    """``raw`` as an int in ``[minimum, maximum]``; ``default`` when absent or empty; else 400."""
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed(f"{name} must be an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ValidationFailed(f"{name} must be at least {minimum}{upper}")
    return value
