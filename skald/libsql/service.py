"""The libSQL service: opens Hrana streams on documents and keeps HTTP streams between requests.

A stream holds its document open (the supervisor does not reap it) until the stream closes.
Over WebSocket a stream lives as long as its connection says; over HTTP it is parked under a
fresh random baton after every pipeline request and closed (its transaction rolled back) when
no request takes it back within ``libsql_stream_idle_seconds``. Open streams are bounded by
``libsql_max_streams`` (:class:`TooManyStreams`, 503).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import secrets
from typing import TYPE_CHECKING

import structlog
import trio

from skald.auth.guard import check_scope
from skald.auth.scopes import Principal
from skald.config import Settings
from skald.db.supervisor import Supervisor
from skald.libsql.errors import TooManyStreams, UnknownBaton
from skald.libsql.stream import Authorize, HranaStream, SqlStore
from skald.query.service import Limits

if TYPE_CHECKING:
    from skald.http.state import AppState

log = structlog.get_logger("skald.libsql")


@dataclasses.dataclass
class _Parked:
    stream: HranaStream
    db_id: str
    expires: float


class LibsqlService:
    def __init__(self, supervisor: Supervisor, settings: Settings) -> None:
        self._supervisor = supervisor
        self._settings = settings
        self._exits: dict[HranaStream, contextlib.AsyncExitStack] = {}
        self._parked: dict[str, _Parked] = {}
        self._wake = trio.Event()

    @property
    def open_streams(self) -> int:
        return len(self._exits)

    def limits(self) -> Limits:
        return Limits.from_request(self._settings, None)

    async def open_stream(
        self, db_id: str, principal: Principal, authorize: Authorize, sqls: SqlStore | None = None
    ) -> HranaStream:
        """A new stream on ``db_id`` (held open until :meth:`close_stream`)."""
        if len(self._exits) >= self._settings.libsql_max_streams:
            raise TooManyStreams(f"{len(self._exits)} libSQL streams are open; close some or retry")
        exits = contextlib.AsyncExitStack()
        actor = await exits.enter_async_context(self._supervisor.open_document(db_id))
        stream = HranaStream(
            actor, principal, authorize, self.limits(), self._settings.libsql_transaction_timeout_seconds, sqls,
            on_read_transaction=self.wake,
        )
        self._exits[stream] = exits
        return stream

    async def close_stream(self, stream: HranaStream) -> None:
        """Roll back the stream's transaction and let its document go. Idempotent."""
        exits = self._exits.pop(stream, None)
        with trio.CancelScope(shield=True):
            await stream.aclose()
            if exits is not None:
                await exits.aclose()

    # ---- HTTP batons ---------------------------------------------------------------------------

    def park(self, db_id: str, stream: HranaStream) -> str:
        """Keep ``stream`` for its next pipeline request; the baton that names it."""
        baton = secrets.token_urlsafe(24)
        idle = self._settings.libsql_stream_idle_seconds
        self._parked[baton] = _Parked(stream, db_id, trio.current_time() + idle)
        self._wake.set()
        return baton

    def take(self, baton: str, db_id: str, principal: Principal) -> HranaStream:
        """The stream parked under ``baton``; :class:`UnknownBaton` if expired, used, or another's."""
        parked = self._parked.get(baton)
        if parked is None:
            raise UnknownBaton("unknown or expired baton: the stream was closed (open a new one)")
        if parked.db_id != db_id or parked.stream.principal.id != principal.id:
            # Not removed: a baton someone else presents must not close its owner's stream.
            raise UnknownBaton("this baton belongs to another document or token")
        del self._parked[baton]
        return parked.stream

    # ---- lifecycle -----------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Close idle HTTP streams and end read transactions past their deadline, until cancelled."""
        task_status.started()
        try:
            while True:
                now = trio.current_time()
                for baton, parked in list(self._parked.items()):
                    if parked.expires <= now:
                        del self._parked[baton]
                        await self.close_stream(parked.stream)
                next_due = min((p.expires for p in self._parked.values()), default=math.inf)
                for stream in list(self._exits):
                    await stream.expire_reader(now)
                    next_due = min(next_due, stream.reader_deadline)
                self._wake = trio.Event()
                with trio.move_on_at(next_due):
                    await self._wake.wait()
        finally:
            with trio.CancelScope(shield=True):
                await self.aclose()

    def wake(self) -> None:
        """A read transaction started: its deadline may be the next one due."""
        self._wake.set()

    async def aclose(self) -> None:
        """Close every stream (their transactions roll back), e.g. at shutdown."""
        self._parked.clear()
        for stream in list(self._exits):
            await self.close_stream(stream)


def authorizer(state: AppState, principal: Principal, db_id: str, path: str, ip: str) -> Authorize:
    """The per-statement scope check of a stream (audited like every denial)."""
    return functools.partial(_check, state, principal, db_id, path, ip)


async def _check(state: AppState, principal: Principal, db_id: str, path: str, ip: str, action: str) -> None:
    await check_scope(state, principal, db_id, action, None, path=path, ip=ip)
