"""Leases with fencing tokens, kept in each document.

Every function here is an actor write op (``fn(conn, ...)``) or pure logic;
the actor's group commit runs ops one after another inside ``BEGIN IMMEDIATE``,
so two acquisitions of one resource can never interleave.

Fences: ``_skald_fences.last_fence`` grows by one on every *new* acquisition
of a resource and is never reset (release and expiry keep it; it is on disk,
so restarts keep it). Renewal keeps the fence.

Clock rules (:class:`LeaseClock`): times are Unix milliseconds, but inside one
server process they advance with the monotonic clock from the wall-clock
reading taken at start-up, so a wall-clock jump while the server runs neither
shortens nor lengthens any lease. Across a restart the new process starts
from the wall clock again, but never from before the newest lease time it
finds in a document (see :func:`clock_floor`): a backwards jump across a
restart would only make leases last longer (never two holders), and the floor
bounds even that. A forwards jump while the server is down can shorten leases;
the fence is what keeps a holder that has not noticed from writing.

Fence validation: :func:`check_fence` is called inside the same write op as
the guarded write (see docs/webhooks-leases.md for the ``/query`` contract).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import trio

from skald.db.connection import DocConnection
from skald.db.supervisor import Supervisor
from skald.errors import Conflict, Forbidden, ValidationFailed

if TYPE_CHECKING:
    from skald.db.actor import DocumentActor

MIN_TTL = 1.0
MAX_TTL = 3600.0
DEFAULT_TTL = 30.0
MAX_RESOURCE = 256


class LeaseHeld(Conflict):
    code = "lease_held"
    title = "Lease is held by another owner"


class LeaseExpired(Conflict):
    code = "lease_expired"
    title = "Lease has expired or is no longer held"


class LeaseTokenMismatch(Forbidden):
    code = "lease_token_mismatch"
    title = "Lease token does not match the current lease"


class StaleFence(Conflict):
    code = "stale_fence"
    title = "Fencing token is not the current one for the resource"


# ---- the clock ------------------------------------------------------------------------------------


class Clock(Protocol):
    def now_ms(self) -> int:
        """Current lease time in Unix milliseconds; never goes backwards."""
        ...

    def advance_to_at_least(self, ms: int) -> None:
        """Never report a time before ``ms`` from now on."""
        ...


class LeaseClock:
    """Wall time at start-up plus monotonic time since: immune to wall-clock jumps while running."""

    def __init__(self) -> None:
        self._wall0 = time.time()
        self._mono0 = time.monotonic()
        self._floor = 0
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        now = int((self._wall0 + (time.monotonic() - self._mono0)) * 1000)
        with self._lock:
            self._floor = max(self._floor, now)
            return self._floor

    def advance_to_at_least(self, ms: int) -> None:
        """Never report a time before ``ms`` (the newest lease time found on disk)."""
        with self._lock:
            if ms > self._floor:
                self._floor = ms
                self._wall0 += (ms - int((self._wall0 + (time.monotonic() - self._mono0)) * 1000)) / 1000


class ManualClock:
    """A clock tests move by hand (``advance``)."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.ms = start_ms

    def now_ms(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)

    def advance_to_at_least(self, ms: int) -> None:
        self.ms = max(self.ms, ms)


def clock_floor(conn: DocConnection) -> int:
    """The newest lease time recorded in this document (0 if none)."""
    row = conn.execute("SELECT max(renewed_at_ms) FROM _skald_leases").fetchone()
    return int(row[0] or 0)


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---- ops ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Lease:
    resource: str
    owner: str
    fence: int
    expires_at_ms: int
    ttl_seconds: float
    lease_token: str | None = None  # only in the answer to acquire

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "resource": self.resource,
            "owner": self.owner,
            "fence": self.fence,
            "ttl_seconds": self.ttl_seconds,
            "expires_at": iso_ms(self.expires_at_ms),
        }
        if self.lease_token is not None:
            body["lease_token"] = self.lease_token
        return body


def validate_request(resource: Any, owner: Any, ttl: Any) -> tuple[str, str, float]:
    """Check an acquire/renew body's fields; raise 400 ``validation_failed`` if wrong."""
    if not isinstance(resource, str) or not resource or len(resource) > MAX_RESOURCE:
        raise ValidationFailed(f"resource must be a string of 1-{MAX_RESOURCE} characters")
    if not isinstance(owner, str) or not owner or len(owner) > MAX_RESOURCE:
        raise ValidationFailed(f"owner must be a string of 1-{MAX_RESOURCE} characters")
    return resource, owner, validate_ttl(DEFAULT_TTL if ttl is None else ttl)


def validate_ttl(ttl: Any) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not MIN_TTL <= ttl <= MAX_TTL:
        raise ValidationFailed(f"ttl_seconds must be a number from {MIN_TTL:g} to {MAX_TTL:g}")
    return float(ttl)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _token_fence(token: str) -> int | None:
    head, _, _ = token.partition(".")
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses (that was a 500)
    return int(head) if head.isascii() and head.isdigit() else None


def acquire(conn: DocConnection, clock: Clock, resource: str, owner: str, ttl: float) -> Lease:
    """Take ``resource`` for ``owner`` for ``ttl`` seconds with the next fence.

    Raises :class:`LeaseHeld` (409, with ``holder`` and ``expires_at``) while
    another unexpired lease exists, even one of the same owner (renew instead).
    """
    now = clock.now_ms()
    row = conn.execute(
        "SELECT owner, expires_at_ms FROM _skald_leases WHERE resource = ?", (resource,)
    ).fetchone()
    if row is not None and int(row[1]) > now:
        raise LeaseHeld(
            f"{resource} is held by {row[0]} until {iso_ms(int(row[1]))}",
            resource=resource,
            holder=row[0],
            expires_at=iso_ms(int(row[1])),
        )
    fence = int(
        conn.execute(
            "INSERT INTO _skald_fences (resource, last_fence) VALUES (?, 1)"
            " ON CONFLICT(resource) DO UPDATE SET last_fence = last_fence + 1 RETURNING last_fence",
            (resource,),
        ).fetchone()[0]
    )
    token = f"{fence}.{secrets.token_urlsafe(24)}"
    expires = now + int(ttl * 1000)
    conn.execute(
        "INSERT OR REPLACE INTO _skald_leases (resource, owner, fence, token_hash, ttl_seconds,"
        " acquired_at_ms, renewed_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (resource, owner, fence, _hash(token), ttl, now, now, expires),
    )
    return Lease(resource, owner, fence, expires, ttl, token)


def _current(conn: DocConnection, clock: Clock, resource: str, token: str) -> tuple[Lease, int]:
    """The caller's unexpired lease, or the error that says why it is not theirs."""
    if not isinstance(token, str) or not token:
        raise ValidationFailed("lease_token is required")
    now = clock.now_ms()
    row = conn.execute(
        "SELECT owner, fence, token_hash, ttl_seconds, expires_at_ms FROM _skald_leases WHERE resource = ?",
        (resource,),
    ).fetchone()
    if row is None or not hmac.compare_digest(str(row[2]), _hash(token)):
        presented = _token_fence(token)
        last = conn.execute("SELECT last_fence FROM _skald_fences WHERE resource = ?", (resource,)).fetchone()
        # A well-formed token of an earlier acquisition means the caller's lease ended
        # (expired and taken over, or released); anything else is simply the wrong token.
        ended = presented is not None and (
            presented < int(row[1]) if row is not None else last is not None and presented <= int(last[0])
        )
        if ended:
            raise LeaseExpired(
                f"the lease with fence {presented} on {resource} is no longer held", resource=resource
            )
        raise LeaseTokenMismatch(f"lease_token does not match the lease on {resource}", resource=resource)
    lease = Lease(resource, str(row[0]), int(row[1]), int(row[4]), float(row[3]))
    if lease.expires_at_ms <= now:
        raise LeaseExpired(
            f"the lease on {resource} expired at {iso_ms(lease.expires_at_ms)}",
            resource=resource,
            expires_at=iso_ms(lease.expires_at_ms),
        )
    return lease, now


def renew(conn: DocConnection, clock: Clock, resource: str, token: str, ttl: float | None) -> Lease:
    """Extend the caller's unexpired lease to ``now + ttl`` (default: its ttl); the fence stays."""
    lease, now = _current(conn, clock, resource, token)
    new_ttl = lease.ttl_seconds if ttl is None else ttl
    expires = now + int(new_ttl * 1000)
    conn.execute(
        "UPDATE _skald_leases SET renewed_at_ms = ?, expires_at_ms = ?, ttl_seconds = ? WHERE resource = ?",
        (now, expires, new_ttl, resource),
    )
    return dataclasses.replace(lease, expires_at_ms=expires, ttl_seconds=new_ttl)


def release(conn: DocConnection, clock: Clock, resource: str, token: str) -> Lease:
    """End the caller's unexpired lease now; the fence counter is kept for the next holder."""
    lease, _ = _current(conn, clock, resource, token)
    conn.execute("DELETE FROM _skald_leases WHERE resource = ?", (resource,))
    return lease


def check_fence(conn: DocConnection, resource: str, token: int | str, *, clock: Clock | None = None) -> None:
    """Raise :class:`StaleFence` (409 ``stale_fence``) unless ``token`` is the live fence of ``resource``.

    Call it inside the same write op as the write it guards: the actor runs
    ops one at a time in one ``BEGIN IMMEDIATE`` transaction, so no
    acquisition can slip in between the check and the write. A fence is live
    when it is the resource's newest fence *and* its lease is held and
    unexpired (a released or expired lease's fence no longer writes).
    ``token`` is the fence number (an int or a decimal string).
    """
    if isinstance(token, bool):
        raise ValidationFailed("fence.token must be the fence number")
    try:
        fence = int(token)
    except (TypeError, ValueError):
        raise ValidationFailed("fence.token must be the fence number") from None
    now = (clock or DEFAULT_CLOCK).now_ms()
    row = conn.execute(
        "SELECT fence, expires_at_ms FROM _skald_leases WHERE resource = ?", (resource,)
    ).fetchone()
    if row is None or int(row[0]) != fence or int(row[1]) <= now:
        current = int(row[0]) if row is not None and int(row[1]) > now else None
        raise StaleFence(
            f"fence {fence} is not the current fence of {resource}",
            resource=resource,
            fence=fence,
            current_fence=current,
        )


DEFAULT_CLOCK: Clock = LeaseClock()
"""The process-wide lease clock; the leases service and :func:`check_fence` share it."""


class LeaseService:
    """The app's lease operations on documents (``state.leases``).

    Each call opens its document and is one actor write op; unexpired leases keep the document open
    (:meth:`DocumentActor.keep_alive_until`) so idle reaping never drops them.
    """

    def __init__(self, supervisor: Supervisor, clock: Clock | None = None) -> None:
        self.supervisor = supervisor
        self.clock: Clock = clock or DEFAULT_CLOCK

    def _prepare(self, conn: DocConnection) -> None:
        # The clock never runs behind this document's newest lease time (see the module's clock rules).
        self.clock.advance_to_at_least(clock_floor(conn))

    def _keep_alive(self, actor: DocumentActor, lease: Lease) -> None:
        remaining = max(0.0, (lease.expires_at_ms - self.clock.now_ms()) / 1000)
        actor.keep_alive_until(trio.current_time() + remaining)

    async def _write(self, db_id: str, change: Callable[[DocConnection], Lease], *, keep_alive: bool) -> Lease:
        """One write op on ``db_id``'s document: the clock brought up to the document's, then ``change``."""

        def op(conn: DocConnection) -> Lease:
            self._prepare(conn)
            return change(conn)

        async with self.supervisor.open_document(db_id) as actor:
            lease = await actor.write(op)
            if keep_alive:  # an unexpired lease keeps its document open
                self._keep_alive(actor, lease)
        return lease

    async def acquire(self, db_id: str, resource: str, owner: str, ttl: float) -> Lease:
        return await self._write(db_id, lambda conn: acquire(conn, self.clock, resource, owner, ttl), keep_alive=True)

    async def renew(self, db_id: str, resource: str, token: str, ttl: float | None) -> Lease:
        return await self._write(db_id, lambda conn: renew(conn, self.clock, resource, token, ttl), keep_alive=True)

    async def release(self, db_id: str, resource: str, token: str) -> Lease:
        return await self._write(db_id, lambda conn: release(conn, self.clock, resource, token), keep_alive=False)

    def check_fence(self, conn: DocConnection, resource: str, token: int | str) -> None:
        """:func:`check_fence` with this service's clock (use inside the guarded write op)."""
        check_fence(conn, resource, token, clock=self.clock)
