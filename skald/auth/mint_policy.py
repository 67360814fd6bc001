"""Which scopes a signed-in person may mint on the token page.

- A person whose admin claim is true may mint any scope (like an admin token).
- Anyone else may mint scopes only on their **personal namespace**: the
  document named after their owner claim (characters outside ``[A-Za-z0-9._-]``
  become ``-``; ``alice@example.com`` -> ``alice-example.com``) and documents
  starting with that name plus ``-`` (``alice-example.com-notes``, or the
  pattern ``alice-example.com-*``), with any action except ``admin.token``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from skald.auth.scopes import ACTIONS, Scope

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_GLOB = re.compile(r"[*?\[\]]")
_PERSON_ACTIONS = tuple(a for a in ACTIONS if a != "admin.token")


def personal_namespace(owner: str) -> str:
    name = _UNSAFE.sub("-", owner).lstrip("-._") or "user"
    return name[:100]


def personal_scopes(owner: str) -> tuple[Scope, ...]:
    """What a non-admin person's web session may do through the API."""
    ns = personal_namespace(owner)
    return tuple(Scope(db, action) for db in (ns, ns + "-*") for action in _PERSON_ACTIONS)


def refusal(owner: str, is_admin: bool, scopes: Sequence[Scope]) -> str | None:
    """Why ``owner`` may not mint ``scopes`` (None = allowed)."""
    if is_admin:
        return None
    ns = personal_namespace(owner)
    for scope in scopes:
        if scope.action in {"admin.token", "*"}:
            return f"{scope}: only administrators may mint {scope.action!r} scopes"
        rest = scope.db[len(ns) + 1:] if scope.db.startswith(ns + "-") else None
        below = rest is not None and rest != "" and (rest == "*" or not _GLOB.search(rest))
        inside = scope.db == ns or below
        if not inside:
            return f"{scope}: you may mint scopes only on {ns} and {ns}-*"
    return None

