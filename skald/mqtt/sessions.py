"""MQTT sessions: subscriptions and per-document cursors that outlive a connection.

A session with an expiry (3.1.1 clean session false; 5.0 clean start false or a
session expiry interval above 0) is written to the service database
(``mqtt_sessions``) whenever its subscriptions change (before the SUBACK) and
when its connection ends (with the cursors), so it survives a restart. A clean
session lives in memory only and ends with its connection.

The cursor of a document is the id through which every message was delivered
(QoS 0) or acknowledged (QoS 1): a reconnecting client is sent, from the
durable log, every visible message after it, exactly what an SSE replay with
``since_id=<cursor>`` and the same filters returns.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

from skald.db.connection import DocConnection
from skald.db.supervisor import Supervisor


@dataclasses.dataclass
class SessionSubscription:
    """One subscription: ``filter`` is the full MQTT filter (``notes/sensors/+``)."""

    filter: str
    qos: int
    start: int | None  # messages with a larger id are delivered by replay; None: live only so far


@dataclasses.dataclass
class Session:
    client_id: str
    token_id: str
    expiry_seconds: float
    subscriptions: dict[str, SessionSubscription] = dataclasses.field(default_factory=dict)
    cursors: dict[str, int] = dataclasses.field(default_factory=dict)
    disconnected_at: float | None = None
    stored: bool = False  # a row exists in mqtt_sessions

    @property
    def persistent(self) -> bool:
        return self.expiry_seconds > 0

    def expired(self, now: float) -> bool:
        return self.disconnected_at is not None and now >= self.disconnected_at + self.expiry_seconds

    def state_json(self) -> str:
        subs = {k: {"qos": s.qos, "start": s.start} for k, s in self.subscriptions.items()}
        return json.dumps({"subscriptions": subs, "cursors": self.cursors}, sort_keys=True)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Session:
        state = json.loads(row[3])
        subs = {
            k: SessionSubscription(k, int(v["qos"]), None if v["start"] is None else int(v["start"]))
            for k, v in state.get("subscriptions", {}).items()
        }
        cursors = {str(k): int(v) for k, v in state.get("cursors", {}).items()}
        return cls(str(row[0]), str(row[1]), float(row[2]), subs, cursors, row[4])


class SessionStore:
    """Every session by client id; persistent ones mirrored in ``mqtt_sessions``."""

    def __init__(self, supervisor: Supervisor, clock: Callable[[], float] = time.time) -> None:
        self._supervisor = supervisor
        self._clock = clock
        self.sessions: dict[str, Session] = {}

    async def load(self) -> None:
        """Read the persistent sessions (at start-up); expired ones are deleted."""

        def read(conn: DocConnection) -> list[tuple[Any, ...]]:
            return list(conn.execute(
                "SELECT client_id, token_id, expiry_seconds, state_json, disconnected_at FROM mqtt_sessions"
            ))

        rows = await self._supervisor.service.read(read)
        now = self._clock()
        for row in rows:
            session = Session.from_row(row)
            if session.disconnected_at is None:
                session.disconnected_at = now  # the server stopped (or died) while it was connected
            session.stored = True
            self.sessions[session.client_id] = session
        await self.expire()

    def take(self, client_id: str, token_id: str, clean: bool, expiry_seconds: float) -> tuple[Session, bool]:
        """The session a CONNECT continues, and whether it existed (CONNACK's session present flag).

        ``clean``, an expired session or one another token created start a new session.
        """
        now = self._clock()
        old = self.sessions.get(client_id)
        if old is not None and not clean and old.token_id == token_id and not old.expired(now):
            old.expiry_seconds = expiry_seconds
            old.disconnected_at = None
            return old, True
        session = Session(client_id, token_id, expiry_seconds, stored=old is not None and old.stored)
        self.sessions[client_id] = session
        return session, False

    async def save(self, session: Session) -> None:
        """Persist ``session`` (or delete its row when it has no expiry); returns after the commit."""
        client_id = session.client_id
        if not session.persistent:
            if not session.stored:
                return
            session.stored = False
            await self._supervisor.service.write(
                lambda conn: conn.execute("DELETE FROM mqtt_sessions WHERE client_id = ?", (client_id,))
            )
            return
        values = (client_id, session.token_id, session.expiry_seconds, session.state_json(),
                  session.disconnected_at, self._clock())

        def upsert(conn: DocConnection) -> None:
            conn.execute(
                "INSERT INTO mqtt_sessions (client_id, token_id, expiry_seconds, state_json, disconnected_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (client_id) DO UPDATE SET"
                " token_id = excluded.token_id, expiry_seconds = excluded.expiry_seconds,"
                " state_json = excluded.state_json, disconnected_at = excluded.disconnected_at,"
                " updated_at = excluded.updated_at",
                values,
            )

        await self._supervisor.service.write(upsert)
        session.stored = True

    async def end(self, session: Session) -> None:
        """The connection of ``session`` ended: keep it (persisted) until it expires, or drop it."""
        session.disconnected_at = self._clock()
        if session.persistent:
            await self.save(session)
        else:
            if self.sessions.get(session.client_id) is session:
                del self.sessions[session.client_id]
            await self.save(session)

    async def expire(self) -> list[str]:
        """Delete every disconnected session past its expiry; return their client ids."""
        now = self._clock()
        gone = [s.client_id for s in self.sessions.values() if s.expired(now)]
        for client_id in gone:
            del self.sessions[client_id]
        if gone:
            marks = ",".join("?" * len(gone))
            await self._supervisor.service.write(
                lambda conn: conn.execute(f"DELETE FROM mqtt_sessions WHERE client_id IN ({marks})", gone)
            )
        return gone

    def next_expiry(self) -> float | None:
        """When the next disconnected session expires (epoch seconds), None if none will."""
        times = [s.disconnected_at + s.expiry_seconds for s in self.sessions.values() if s.disconnected_at is not None]
        return min(times, default=None)
