"""Relay channels: blocking rendezvous queues and broadcast, held in memory (not durable).

A :class:`Transfer` is one message on its way from a producer to a consumer:
its status and headers, and a zero-buffer chunk channel, so the body streams
with backpressure and is never held whole. Waiters queue first come, first
served; a waiter cancelled before pairing leaves nothing behind, and a
channel nobody waits on is deleted.
"""

from __future__ import annotations

import dataclasses
from collections import deque

import trio


@dataclasses.dataclass(eq=False)
class Transfer:
    """One message in flight. The consumer calls :meth:`finish` once it has sent the whole body (or failed)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    send: trio.MemorySendChannel[bytes] = dataclasses.field(init=False)
    receive: trio.MemoryReceiveChannel[bytes] = dataclasses.field(init=False)
    finished: trio.Event = dataclasses.field(default_factory=trio.Event)
    delivered: bool = False
    producer_aborted: bool = False

    def __post_init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[bytes](0)

    def finish(self, delivered: bool) -> None:
        if not self.finished.is_set():
            self.delivered = delivered
            self.finished.set()
            self.receive.close()  # a producer still sending gets BrokenResourceError


@dataclasses.dataclass(eq=False)
class _Waiter:
    event: trio.Event = dataclasses.field(default_factory=trio.Event)
    transfer: Transfer | None = None


@dataclasses.dataclass
class _Channel:
    consumers: deque[_Waiter] = dataclasses.field(default_factory=deque)
    producers: deque[_Waiter] = dataclasses.field(default_factory=deque)


class RelayHub:
    """All relay channels of one server, keyed by ``(db_id, namespace, path)`` strings."""

    def __init__(self) -> None:
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
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.transfer is None:
                channel.consumers.remove(waiter)
                self._forget_if_empty(key)
            else:  # paired in the same instant we were cancelled: the producer must not wait forever
                waiter.transfer.finish(delivered=False)
            raise
        assert waiter.transfer is not None
        return waiter.transfer

    async def produce(self, key: str, transfer: Transfer) -> None:
        """Wait until one consumer takes ``transfer`` (FIFO among producers)."""
        channel = self._channel(key)
        if channel.consumers:
            waiter = channel.consumers.popleft()
            self._forget_if_empty(key)
            waiter.transfer = transfer
            waiter.event.set()
            return
        waiter = _Waiter(transfer=transfer)
        channel.producers.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if not waiter.event.is_set():
                channel.producers.remove(waiter)
                self._forget_if_empty(key)
            raise

    def take_all_consumers(self, key: str, make: type[Transfer] | None = None) -> list[_Waiter]:
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
