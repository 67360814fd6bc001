"""Document ids: what a ``db_id`` may look like (never a path)."""

from __future__ import annotations

import re

from skald.errors import InvalidDocumentId

DB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_db_id(db_id: str) -> str:
    """Return ``db_id`` unchanged if it is a valid document id.

    Raises :class:`InvalidDocumentId` (400) for empty ids, ids over 128
    characters, a leading dot or dash, ``..`` anywhere, or any character
    outside ``[A-Za-z0-9._-]``.
    """
    if not DB_ID_PATTERN.match(db_id) or ".." in db_id:
        raise InvalidDocumentId(
            f"{db_id[:140]!r} is not a valid document id: 1-128 characters of [A-Za-z0-9._-], "
            "starting with a letter or digit, without '..'"
        )
    return db_id
