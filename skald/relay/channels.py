"""Relay channels: blocking rendezvous queues and broadcast, held in memory (not durable).

A :class:`Transfer` is one message on its way from a producer to a consumer:
its status and headers, and a byte-bounded :class:`BodyPipe`, so the body
streams with backpressure and is never held whole. Waiters queue first come, first
served; a waiter cancelled before pairing leaves nothing behind, and a
channel nobody waits on is deleted. Once the server stops, a waiter not yet
paired is woken with :class:`~skald.errors.ShuttingDown` (a 503): nobody would
come for it in time, and it must not hold the shutdown until its grace runs out.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from collections.abc import Callable

import trio

from skald.server.shutdown import Shutdown

# Chunks smaller than this are joined when several wait; larger ones are written as they are.
JOIN_BELOW = 64 * 1024


class BodyPipe:
    """A message body on its way: chunks queue until ``limit`` bytes wait, then the producer waits.

    The consumer takes the small chunks waiting at once, so a fast producer's many
    small chunks leave as one write (per-chunk work is what a Python relay pays
    for). Memory per transfer stays under ``limit`` plus one chunk.
    """

    def __init__(self, limit: int = 1024 * 1024) -> None:
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._ended = False  # the producer sent its last chunk (or gave up)
        self._broken = False  # the consumer is gone
        self._readable = trio.lowlevel.ParkingLot()
        self._writable = trio.lowlevel.ParkingLot()

    async def put(self, chunk: bytes) -> None:
        """Queue ``chunk``; wait while too much waits. Raises ``trio.BrokenResourceError`` once the consumer left."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._broken:
            raise trio.BrokenResourceError
        self._chunks.append(chunk)
        self._size += len(chunk)
        self._readable.unpark_all()
        while self._size > self._limit and not self._broken:
            await self._writable.park()

    def end(self) -> None:
        self._ended = True
        self._readable.unpark_all()

    def abandon(self) -> None:
        """The consumer is gone: drop what waits, and fail the producer's next :meth:`put`."""
        self._broken = True
        self._chunks.clear()
        self._size = 0
        self._writable.unpark_all()

    @property
    def drained(self) -> bool:
        """The producer ended and everything is taken: the next :meth:`take` returns ``None``."""
        return self._ended and not self._chunks

    async def take(self) -> bytes | None:
        """The next piece to write; ``None`` once the producer ended and all is taken.

        Small chunks waiting side by side leave joined (one write for many); a large
        one leaves alone, uncopied (copying it would cost more than its write).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._chunks:
            if self._ended:
                return None
            await self._readable.park()
        chunks = self._chunks
        count = 1
        if len(chunks[0]) < JOIN_BELOW:
            while count < len(chunks) and len(chunks[count]) < JOIN_BELOW:
                count += 1
        if count == 1:
            data = chunks.popleft()
        else:
            data = b"".join(itertools.islice(chunks, count))
            for _ in range(count):
                chunks.popleft()
        self._size -= len(data)
        self._writable.unpark_all()
        return data


@dataclasses.dataclass(eq=False)
class Transfer:
    """One message in flight. The consumer calls :meth:`finish` once it has sent the whole body (or failed).

    ``length`` is the body's size as the producer's own framing gave it (``None``: chunked, unknown
    until its end). It alone frames the consumer's response: ``headers`` never hold a framing header.
    """

    status: int
    headers: list[tuple[bytes, bytes]]
    length: int | None = None
    body: BodyPipe = dataclasses.field(default_factory=BodyPipe)
    finished: trio.Event = dataclasses.field(default_factory=trio.Event)
    delivered: bool = False
    producer_aborted: bool = False

    def finish(self, delivered: bool) -> None:
        if not self.finished.is_set():
            self.delivered = delivered
            self.finished.set()
            self.body.abandon()  # a producer still sending gets BrokenResourceError


@dataclasses.dataclass(eq=False)
class _Waiter:
    event: trio.Event = dataclasses.field(default_factory=trio.Event)
    transfer: Transfer | None = None


@dataclasses.dataclass
class _Channel:
    consumers: deque[_Waiter] = dataclasses.field(default_factory=deque)
    producers: deque[_Waiter] = dataclasses.field(default_factory=deque)


class _Watched:
    """Lets a caller wait until the waiters look some way, woken on each change (tests, status).

    Waits for a partner end with :class:`~skald.errors.ShuttingDown` once ``shutdown`` begins.
    """

    def __init__(self, shutdown: Shutdown | None = None) -> None:
        self._changed = trio.lowlevel.ParkingLot()
        self._shutdown = shutdown

    async def _until_paired(self, paired: trio.Event) -> None:
        if self._shutdown is None:
            await paired.wait()
        else:
            await self._shutdown.unless_stopping(paired.wait)

    def _notify(self) -> None:
        self._changed.unpark_all()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.park()


class RelayHub(_Watched):
    """All relay channels of one server, keyed by ``(db_id, namespace, path)`` strings."""

    def __init__(self, shutdown: Shutdown | None = None) -> None:
        super().__init__(shutdown)
        self._channels: dict[str, _Channel] = {}

    @property
    def waiting(self) -> int:
        """Producers and consumers currently waiting to be paired."""
        return sum(len(c.consumers) + len(c.producers) for c in self._channels.values())

    def waiting_on(self, key: str) -> tuple[int, int]:
        """``(consumers, producers)`` waiting on ``key`` (for tests and status)."""
        channel = self._channels.get(key)
        return (len(channel.consumers), len(channel.producers)) if channel else (0, 0)

    def _channel(self, key: str) -> _Channel:
        return self._channels.setdefault(key, _Channel())

    def _forget_if_empty(self, key: str) -> None:
        self._notify()  # called after every change to a channel's waiters
        channel = self._channels.get(key)
        if channel is not None and not channel.consumers and not channel.producers:
            del self._channels[key]

    async def consume(self, key: str) -> Transfer:
        """Wait for the next message on ``key`` (FIFO among consumers)."""
        channel = self._channel(key)
        if channel.producers:
            waiter = channel.producers.popleft()
            self._forget_if_empty(key)
            waiter.event.set()
            assert waiter.transfer is not None
            return waiter.transfer
        waiter = _Waiter()
        channel.consumers.append(waiter)
        self._notify()
        try:
            await self._until_paired(waiter.event)
        except BaseException:
            if waiter.transfer is None:
                channel.consumers.remove(waiter)
                self._forget_if_empty(key)
            else:  # paired in the same instant we were cancelled: the producer must not wait forever
                waiter.transfer.finish(delivered=False)
            raise
        assert waiter.transfer is not None
        return waiter.transfer

    def try_produce(self, key: str, transfer: Transfer) -> bool:
        """Hand ``transfer`` to the first waiting consumer, if one waits (and no producer is ahead)."""
        channel = self._channels.get(key)
        if channel is None or not channel.consumers:
            return False
        waiter = channel.consumers.popleft()
        self._forget_if_empty(key)
        waiter.transfer = transfer
        waiter.event.set()
        return True

    async def produce(self, key: str, transfer: Transfer) -> None:
        """Wait until one consumer takes ``transfer`` (FIFO among producers)."""
        if self.try_produce(key, transfer):
            await trio.lowlevel.checkpoint()
            return
        channel = self._channel(key)
        waiter = _Waiter(transfer=transfer)
        channel.producers.append(waiter)
        self._notify()
        try:
            await self._until_paired(waiter.event)
        except BaseException:
            if not waiter.event.is_set():
                channel.producers.remove(waiter)
                self._forget_if_empty(key)
            raise

    def take_all_consumers(self, key: str) -> list[_Waiter]:
        """Every consumer waiting on ``key`` right now (broadcast); the caller hands each a transfer."""
        channel = self._channels.get(key)
        if channel is None:
            return []
        waiters = list(channel.consumers)
        channel.consumers.clear()
        self._forget_if_empty(key)
        return waiters

    @staticmethod
    def hand(waiter: _Waiter, transfer: Transfer) -> None:
        waiter.transfer = transfer
        waiter.event.set()


@dataclasses.dataclass(eq=False)
class Requester:
    """A request waiting on ``req/{id}``: its own message, and the answer it waits for."""

    request: Transfer
    unstripped_headers: list[tuple[bytes, bytes]] = dataclasses.field(default_factory=list)
    """The request's headers with ``Patch-H-*`` names kept, for a switch responder."""
    answered: trio.Event = dataclasses.field(default_factory=trio.Event)
    answer: Transfer | None = None
    paired: trio.Event = dataclasses.field(default_factory=trio.Event)
    responder: Responder | None = None

    def give(self, answer: Transfer) -> None:
        self.answer = answer
        self.answered.set()


@dataclasses.dataclass(eq=False)
class Responder:
    """A responder waiting on ``res/{id}``: ``answer`` is set for POST/PUT responders (a ready answer)."""

    answer: Transfer | None
    switch_to: str | None = None
    paired: trio.Event = dataclasses.field(default_factory=trio.Event)
    requester: Requester | None = None


class RequestChannels(_Watched):
    """Request/responder pairing per ``req``/``res`` id, and switched requests waiting for an answer."""

    def __init__(self, shutdown: Shutdown | None = None) -> None:
        super().__init__(shutdown)
        self._requesters: dict[str, deque[Requester]] = {}
        self._responders: dict[str, deque[Responder]] = {}
        self._switched: dict[str, Requester] = {}

    @property
    def waiting(self) -> int:
        return (
            sum(map(len, self._requesters.values()))
            + sum(map(len, self._responders.values()))
            + len(self._switched)
        )

    def waiting_on(self, key: str) -> tuple[int, int]:
        """``(requesters, responders)`` waiting on ``key``."""
        return len(self._requesters.get(key, ())), len(self._responders.get(key, ()))

    async def request(self, key: str, requester: Requester) -> Responder:
        """Wait for a responder on ``key``; return it (paired). FIFO on both sides."""
        responders = self._responders.get(key)
        if responders:
            responder = responders.popleft()
            if not responders:
                del self._responders[key]
            self._notify()
            _pair(requester, responder)
            return responder
        queue = self._requesters.setdefault(key, deque())
        queue.append(requester)
        self._notify()
        try:
            await self._until_paired(requester.paired)
        except BaseException:
            if not requester.paired.is_set():
                queue.remove(requester)
                if not queue:
                    self._requesters.pop(key, None)
                self._notify()
            raise
        assert requester.responder is not None
        return requester.responder

    async def respond(self, key: str, responder: Responder) -> Requester:
        """Wait for a requester on ``key``; return it (paired)."""
        requesters = self._requesters.get(key)
        if requesters:
            requester = requesters.popleft()
            if not requesters:
                del self._requesters[key]
            self._notify()
            _pair(requester, responder)
            return requester
        queue = self._responders.setdefault(key, deque())
        queue.append(responder)
        self._notify()
        try:
            await self._until_paired(responder.paired)
        except BaseException:
            if not responder.paired.is_set():
                queue.remove(responder)
                if not queue:
                    self._responders.pop(key, None)
                self._notify()
            raise
        assert responder.requester is not None
        return responder.requester

    def park_switched(self, key: str, requester: Requester) -> None:
        """A switched request waits for whoever posts to ``key`` next."""
        self._switched[key] = requester
        self._notify()

    def unpark_switched(self, key: str, requester: Requester) -> None:
        if self._switched.get(key) is requester:
            del self._switched[key]
            self._notify()

    def take_switched(self, key: str) -> Requester | None:
        requester = self._switched.pop(key, None)
        if requester is not None:
            self._notify()
        return requester


def _pair(requester: Requester, responder: Responder) -> None:
    requester.responder = responder
    responder.requester = requester
    requester.paired.set()
    responder.paired.set()
