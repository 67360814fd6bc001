"""Where skald reaches into hypercorn's trio worker and h11, each reach a named patch with its receipt.

STYLE habit 13: reaching into a dependency is a last resort. Each patch below
names the measured gain or the failing test that earns it its place, the
hypercorn/h11 code it relies on (checked by :func:`self_check` before anything
is replaced), and the change that would make it unnecessary upstream
(``docs/hypercorn.md``). hypercorn and h11 are pinned exactly in
``pyproject.toml``.

Figures: ``python bench/relay.py`` (skald with all patches against skald with all but one, same run,
server CPU time: the steadier figure on a shared machine); tests: fail with ``SKALD_HYPERCORN_PATCHES_SKIP``
naming the patch.

- ``large_reads``: read 1 MiB per ``recv()`` instead of hypercorn's 64 KiB (``MAX_RECV``). Relaying 512 MiB:
  1.52 s of server CPU per GB with it, 3.70 without.
- ``joined_chunks``: a chunked upload's back-to-back chunks reach the app as one event per read, and a
  sized body is handed out as the bytes read (:class:`~skald.server.h11_reads.JoiningConnection`): 1.52 s
  of CPU per GB with it, 2.62 without; ``tests/unit/server/test_hypercorn_patches.py`` for its framing.
- ``hang_ups``: a request that waits hears its client hang up (:mod:`skald.server.hang_ups`); without it
  ``tests/compat/test_legacy_streaming.py::test_producer_gone_*_before_pairing_leaves_nothing`` fail.
- ``shielded_close``: hypercorn's ``_close`` is not cancelled half-way; without it
  ``tests/integration/server/test_shutdown.py::test_shutdown_answers_every_request_it_took_*`` fails.
- ``keep_alive_timer``: one keep-alive task per connection; at shutdown a request already on its way
  is answered (a 503), not reset (:mod:`skald.server.keep_alive`); without it both shutdown tests marked
  with it fail. (No CPU gain measured: 2.86 vs 2.88 ms per small message.)
- ``close_at_shutdown``: responses sent once the server shuts down say ``Connection: close``; without it
  ``test_shutdown_answers_every_request_it_took_*`` fails.
- ``connection_limits``: ``max_connections`` and ``request_head_timeout``
  (:mod:`skald.server.connection_limits`); needs ``keep_alive_timer``; without it the four marked tests of
  ``tests/integration/server/test_slow_clients.py`` fail.
- ``joined_writes``: inside :func:`~skald.server.joined_writes.joined_writes` the ASGI messages a task
  sends leave in one socket write (the relay's small messages: five writes down to two per message);
  figures in ``docs/performance.md#relay``.
- ``queued_receive``: replaces nothing; :func:`queued_receive` reads what hypercorn's trio worker
  already queued for the app without a scheduler trip per message.

Removed: ``held_heads`` (the response head written with the first body piece, a copy of hypercorn's
``_send_h11_event``): 2.88 vs 2.61 ms of server CPU per small message with and without it, no gain.

Patches apply per server: :func:`apply` installs a hook once per process, and each hook does skald's
work only for a server whose config (:class:`~skald.server.connection_limits.SkaldConfig`) names the
patch; for any other server (``hypercorn_patches = false``, a plain hypercorn ``Config``) it runs
hypercorn's own code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import inspect
import textwrap
import types
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import h11
import structlog
import trio
from h11._readers import ContentLengthReader
from hypercorn.config import Config
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio import tcp_server
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.typing import H11SendableEvent

from skald.errors import SkaldError
from skald.server import hang_ups, joined_writes
from skald.server.connection_limits import TOO_MANY_ANSWER, limits_of, refuse
from skald.server.h11_reads import READ_SIZE, JoiningConnection
from skald.server.keep_alive import KeepAliveTimer, read_data

log = structlog.get_logger("skald.server.patches")


class HypercornPatchMismatch(SkaldError):
    """The installed hypercorn or h11 is not the code a patch was written for: skald refuses to start."""

    code = "hypercorn_patch_mismatch"
    title = "hypercorn patch does not fit"


Check = Callable[[], str | None]  # ``None``: as expected; else what differs, in a few words


def source_digest(function: object) -> str:
    """The first 16 hex digits of the SHA-256 of ``function``'s source (dedented)."""
    source = textwrap.dedent(inspect.getsource(function))  # type: ignore[arg-type]
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _qualname(owner: object, name: str) -> str:
    if isinstance(owner, types.ModuleType):
        return f"{owner.__name__}.{name}"
    return f"{getattr(owner, '__module__', '?')}.{getattr(owner, '__qualname__', owner)}.{name}"


_originals: dict[tuple[object, str], Callable[..., Any]] = {}


def _original(owner: object, name: str) -> Any:
    """``owner.name`` as the library defines it (before a hook replaced it), or ``None`` if it has none."""
    return _originals.get((owner, name), getattr(owner, name, None))


def same_source(owner: object, name: str, digest: str) -> Check:
    """The patch copies or wraps ``owner.name`` and relies on its body: it must be the code it was written for."""

    def check() -> str | None:
        target = _original(owner, name)
        if target is None:
            return f"{_qualname(owner, name)} is gone"
        try:
            found = source_digest(target)
        except (OSError, TypeError):
            return f"the source of {_qualname(owner, name)} cannot be read"
        if found != digest:
            return f"{_qualname(owner, name)} changed (source sha256 {found}, the patch was written for {digest})"
        return None

    return check


def has_constant(module: object, name: str, kind: type) -> Check:
    def check() -> str | None:
        value = getattr(module, name, None)
        if not isinstance(value, kind):
            return f"{_qualname(module, name)} is not a {kind.__name__} any more"
        return None

    return check


@dataclasses.dataclass(frozen=True)
class Patch:
    name: str
    expects: tuple[Check, ...]
    hooks: tuple[str, ...]  # keys of _HOOKS this patch needs installed
    requires: tuple[str, ...] = ()


# What each patch relies on, as found in hypercorn 0.18.0 and h11 0.16.0. A bump that changes one of
# these refuses to start (tests/unit/server/test_patch_self_check.py); re-read the changed code, adapt
# the patch, then update its digest here.
_RUN = same_source(TCPServer, "run", "30e3a0c602fd1a3e")
_CLOSE = same_source(TCPServer, "_close", "544a46e0eb9f7c16")
_READ_DATA = same_source(TCPServer, "_read_data", "73588ef2e57091d4")
_SEND_H11 = same_source(H11Protocol, "_send_h11_event", "fdb5e069793a1d99")

PATCHES: tuple[Patch, ...] = (
    Patch("large_reads", (_READ_DATA, has_constant(tcp_server, "MAX_RECV", int)), ("read_data",)),
    Patch("joined_chunks", (
        same_source(H11Protocol, "__init__", "5acca53c7d41773d"),
        same_source(h11.Connection, "receive_data", "7e1cec9eaa8c108f"),
        same_source(h11.Connection, "_extract_next_receive_event", "5921ab5ba746f2fd"),
        same_source(h11.Connection, "next_event", "baec42c528ea2c72"),
        same_source(h11.Connection, "start_next_cycle", "f0391c57b6be22d0"),
        same_source(h11.Connection, "__init__", "70f5b1c64ac3b978"),  # _reader, _receive_buffer
        same_source(ContentLengthReader, "__init__", "5a137f9ce2d88dac"),  # _remaining
        same_source(ContentLengthReader, "__call__", "dc9b3202177faa92"),
    ), ("protocol_init",)),
    Patch("hang_ups", (_RUN, _CLOSE), ("run", "close")),
    Patch("shielded_close", (_CLOSE,), ("close",)),
    Patch("keep_alive_timer", (
        _READ_DATA,
        same_source(TCPServer, "__init__", "9a410c19165519ee"),
        same_source(TCPServer, "protocol_send", "22b51ba714d07580"),
        same_source(TCPServer, "_idle_timeout", "076077a62ad1c28f"),
        same_source(TaskGroup, "__init__", "90908dc0952f795d"),
        same_source(ProtocolWrapper, "__init__", "e978b0c0e9e8d22c"),
    ), ("server_init", "read_data")),
    Patch("close_at_shutdown", (
        _SEND_H11,
        same_source(H11Protocol, "stream_send", "c7ef437818f28b28"),
        same_source(H11Protocol, "_maybe_recycle", "dba7c077157520be"),
    ), ("send_h11_event",)),
    Patch("connection_limits", (_RUN, _READ_DATA), ("run", "read_data"), requires=("keep_alive_timer",)),
    Patch("queued_receive", (same_source(TaskGroup, "spawn_app", "487c35772c8bd89c"),), ()),
    Patch("joined_writes", (same_source(TCPServer, "protocol_send", "22b51ba714d07580"),), ("protocol_send",)),
)
NAMES = tuple(patch.name for patch in PATCHES)
_BY_NAME = {patch.name: patch for patch in PATCHES}


def versions() -> str:
    return f"hypercorn {importlib.metadata.version('hypercorn')}, h11 {importlib.metadata.version('h11')}"


def self_check(names: Collection[str]) -> None:
    """Raise :class:`HypercornPatchMismatch` (one line) if the code a patch in ``names`` relies on differs."""
    for patch in PATCHES:
        if patch.name not in names:
            continue
        for check in patch.expects:
            problem = check()
            if problem is not None:
                raise HypercornPatchMismatch(
                    f"hypercorn patch {patch.name!r} does not fit the installed {versions()}: {problem}; "
                    "refusing to start (set hypercorn_patches = false, or SKALD_HYPERCORN_PATCHES=false, "
                    "to run on stock hypercorn)"
                )


def enabled(on: bool, skip: str = "") -> frozenset[str]:
    """The patches a server runs with: none when ``on`` is false, else all but those named in ``skip``
    (comma-separated). Unknown names and a patch without one it requires raise :class:`ValueError`."""
    if not on:
        return frozenset()
    skipped = {name.strip() for name in skip.split(",") if name.strip()}
    unknown = skipped - set(NAMES)
    if unknown:
        raise ValueError(f"unknown hypercorn patch {', '.join(sorted(unknown))} (known: {', '.join(NAMES)})")
    names = frozenset(NAMES) - skipped
    for name in names:
        missing = set(_BY_NAME[name].requires) - names
        if missing:
            raise ValueError(f"hypercorn patch {name!r} needs {', '.join(sorted(missing))}")
    return names


def apply(names: Collection[str]) -> None:
    """Check, then install, the hooks the patches in ``names`` need. Idempotent; raises
    :class:`HypercornPatchMismatch` (nothing installed) when a check fails."""
    unchecked = [name for name in NAMES if name in names and name not in _checked]
    if unchecked:
        self_check(unchecked)  # against the originals: _original() sees through hooks installed already
        _checked.update(unchecked)
    for name in NAMES:
        if name in names:
            for key in _BY_NAME[name].hooks:
                if key not in _installed:
                    _HOOKS[key]()
                    _installed.add(key)


_checked: set[str] = set()
_installed: set[str] = set()


def _on(config: Config, name: str) -> bool:
    patches: frozenset[str] = getattr(config, "skald_patches", frozenset())
    return name in patches


def _replace(owner: type, name: str, hook: Callable[..., Any]) -> Callable[..., Any]:
    original: Callable[..., Any] = getattr(owner, name)
    _originals[(owner, name)] = original
    setattr(owner, name, hook)
    return original


def _hook_server_init() -> None:
    original = _replace(TCPServer, "__init__", lambda *args: None)

    def init(self: TCPServer, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if _on(self.config, "keep_alive_timer"):
            self.idle_task = KeepAliveTimer()  # type: ignore[assignment]  # the same two methods

    setattr(TCPServer, "__init__", init)  # noqa: B010 - mypy refuses assigning to a method


def _hook_run() -> None:
    original: Callable[[TCPServer], Awaitable[None]] = _replace(TCPServer, "run", lambda self: None)

    async def run(self: TCPServer) -> None:
        limits = limits_of(self.config) if _on(self.config, "connection_limits") else None
        if limits is not None and not limits.admit():
            await refuse(self.stream, TOO_MANY_ANSWER, limits)
            return
        try:
            if _on(self.config, "hang_ups"):
                sock = hang_ups.socket_of(self.stream)
                if sock is None:
                    log.error("hang_ups: hypercorn's connection stream has no socket", stream=type(self.stream))
                hang_ups.connection_socket.set(sock)
            await original(self)
        finally:
            if limits is not None:
                limits.release()

    setattr(TCPServer, "run", run)  # noqa: B010


def _hook_close() -> None:
    original: Callable[[TCPServer], Awaitable[None]] = _replace(TCPServer, "_close", lambda self: None)

    async def close(self: TCPServer) -> None:
        if _on(self.config, "hang_ups"):
            # hypercorn may read a client's EOF and close the socket before the epoll set reports it;
            # the socket then leaves the set unreported. Whoever watches it hears of the close here.
            hang_ups.connection_closing(hang_ups.socket_of(self.stream))
        if not _on(self.config, "shielded_close"):
            await original(self)
            return
        # Shielded: after a response with ``Connection: close`` hypercorn closes from the app's task,
        # which quart-trio cancels as the request ends (its message reader returns on the disconnect
        # hypercorn sends first). Cancelled at ``send_eof``'s checkpoint, the socket stayed open until
        # the client closed it, and held a shutdown for its whole grace.
        with trio.CancelScope(shield=True):
            await original(self)

    setattr(TCPServer, "_close", close)  # noqa: B010


def _hook_read_data() -> None:
    original: Callable[[TCPServer], Awaitable[None]] = _replace(TCPServer, "_read_data", lambda self: None)

    async def _read_data(self: TCPServer) -> None:
        large, timer = _on(self.config, "large_reads"), _on(self.config, "keep_alive_timer")
        if not (large or timer):
            await original(self)
            return
        await read_data(self, READ_SIZE if large else tcp_server.MAX_RECV, _on(self.config, "connection_limits"))

    setattr(TCPServer, "_read_data", _read_data)  # noqa: B010


def _hook_protocol_init() -> None:
    original = _replace(H11Protocol, "__init__", lambda *args: None)

    def init(self: H11Protocol, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if _on(self.config, "joined_chunks") and type(self.connection) is h11.Connection:
            self.connection.__class__ = JoiningConnection  # same state, two methods more

    setattr(H11Protocol, "__init__", init)  # noqa: B010


def _hook_send_h11_event() -> None:
    original: Callable[[H11Protocol, H11SendableEvent], Awaitable[None]] = _replace(
        H11Protocol, "_send_h11_event", lambda self, event: None
    )

    async def send_h11_event(self: H11Protocol, event: H11SendableEvent) -> None:
        if (_on(self.config, "close_at_shutdown") and type(event) is h11.Response
                and self.context.terminated.is_set() and not _says_close(event)):
            # hypercorn closes the connection after this response anyway (``_maybe_recycle``); a client
            # not told so may send its next request on it meanwhile, to be left without an answer.
            event = h11.Response(status_code=event.status_code, reason=event.reason,
                                 headers=[*event.headers.raw_items(), (b"connection", b"close")])
        await original(self, event)

    setattr(H11Protocol, "_send_h11_event", send_h11_event)  # noqa: B010


def _hook_protocol_send() -> None:
    original = _replace(TCPServer, "protocol_send", lambda self, event: None)
    hooked = joined_writes.hook(original, lambda config: _on(config, "joined_writes"))
    setattr(TCPServer, "protocol_send", hooked)  # noqa: B010


def queued_receive(receive: Callable[[], Awaitable[Any]]) -> Callable[[], Any] | None:
    """The non-blocking twin of an ASGI ``receive``, where hypercorn's trio worker made it.

    hypercorn (0.18, ``TaskGroup.spawn_app``) hands the app a trio memory channel's bound ``receive``:
    what it queued already can be taken with ``receive_nowait`` (raising :class:`trio.WouldBlock` when
    nothing is), without a trip through the scheduler per body chunk. ``None`` for any other
    ``receive``: the caller awaits ``receive()`` as usual.
    """
    channel = getattr(receive, "__self__", None)
    if isinstance(channel, trio.MemoryReceiveChannel) and getattr(receive, "__func__", None) is (
        trio.MemoryReceiveChannel.receive
    ):
        nowait: Callable[[], Any] = channel.receive_nowait
        return nowait
    return None


def _says_close(response: h11.Response) -> bool:
    return any(name == b"connection" and b"close" in value.lower() for name, value in response.headers)


_HOOKS: dict[str, Callable[[], None]] = {
    "server_init": _hook_server_init,
    "run": _hook_run,
    "close": _hook_close,
    "read_data": _hook_read_data,
    "protocol_init": _hook_protocol_init,
    "send_h11_event": _hook_send_h11_event,
    "protocol_send": _hook_protocol_send,
}
