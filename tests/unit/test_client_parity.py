"""The blocking and the async client are one API: same methods, same parameters.

Only the sync/async split may differ (``close``/``aclose``, ``__enter__``/``__aenter__``, a
coroutine or async iterator where the blocking one returns a value or a generator).
"""

from __future__ import annotations

import inspect
from typing import Any

from skald.client import AsyncClient, Client

# blocking name -> async name: the only names allowed to differ
RENAMED = {"close": "aclose", "__enter__": "__aenter__", "__exit__": "__aexit__"}


def public_methods(cls: type) -> dict[str, Any]:
    names = {n for n in dir(cls) if not n.startswith("_")} | {"__init__"}
    names |= {n for n in ("__enter__", "__exit__", "__aenter__", "__aexit__") if hasattr(cls, n)}
    return {n: getattr(cls, n) for n in names if callable(getattr(cls, n))}


def shape(fn: Any) -> list[tuple[str, str, Any]]:
    """Each parameter's name, kind and default (annotations differ by design: sync vs async types)."""
    return [
        (p.name, p.kind.name, p.default) for p in inspect.signature(fn).parameters.values()
    ]


def test_same_methods() -> None:
    blocking = {RENAMED.get(n, n) for n in public_methods(Client)}
    asynchronous = set(public_methods(AsyncClient))
    assert sorted(blocking - asynchronous) == [], "only in Client"
    assert sorted(asynchronous - blocking) == [], "only in AsyncClient"


def test_same_parameters() -> None:
    a = public_methods(AsyncClient)
    differences = {
        name: (shape(fn), shape(a[RENAMED.get(name, name)]))
        for name, fn in public_methods(Client).items()
        if RENAMED.get(name, name) in a and shape(fn) != shape(a[RENAMED.get(name, name)])
    }
    assert differences == {}


def test_async_methods_are_async() -> None:
    """Every async method that does I/O is a coroutine function, or returns an async iterator
    (the streams) or an async context manager (``lease``); none is a blocking call in disguise."""
    streams = {"watch", "subscribe", "follow_changes", "lease"}
    for name, fn in public_methods(AsyncClient).items():
        if name == "__init__" or name in streams:
            continue
        assert inspect.iscoroutinefunction(fn), name
