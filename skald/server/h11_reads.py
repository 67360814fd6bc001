"""The ``joined_chunks`` patch's run-time half: an ``h11.Connection`` that hands bodies out in fewer events."""

from __future__ import annotations

from typing import cast

import h11
from h11._readers import ContentLengthReader

# The most body bytes joined into one event (and the read size of the ``large_reads`` patch).
READ_SIZE = 1024 * 1024

Event = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]


class JoiningConnection(h11.Connection):
    """Hands back-to-back body chunks out as one ``Data`` event.

    A chunked upload (``... | curl -T -``) arrives in ~64 KiB chunks, and
    hypercorn passes each through its stream and the app's queue, one scheduler
    trip apiece; joined, a 1 MiB read makes one trip. The event that ends a run
    of chunks is held for the next call. A held ``EndOfMessage`` belongs to its
    request, so a new cycle drops it.

    A sized body (``Content-Length``) read into an empty buffer is handed out as
    the very bytes read: h11 would copy them three times on the way through its
    buffer (and hypercorn once more, from the ``bytearray`` h11 hands out).

    Uses h11's private ``_reader``, ``_receive_buffer`` and
    ``_extract_next_receive_event`` (0.16); the self-check holds them to that.
    """

    _held: Event | None = None
    _direct: bytes | None = None  # read while a sized body was due and nothing else waited

    def receive_data(self, data: bytes) -> None:
        reader = self._reader
        if (data and self._direct is None and type(reader) is ContentLengthReader and reader._remaining > 0
                and not self._receive_buffer):
            self._direct = bytes(data)
            return
        super().receive_data(data)

    def _extract_next_receive_event(self) -> Event:
        direct, self._direct = self._direct, None
        if direct is None:
            return super()._extract_next_receive_event()
        reader = cast(ContentLengthReader, self._reader)
        body, rest = direct[: reader._remaining], direct[reader._remaining :]
        reader._remaining -= len(body)
        if rest:  # the next (pipelined) request begins: it goes through the buffer
            super().receive_data(rest)
        return h11.Data(data=body)

    def next_event(self) -> Event:
        if self._held is not None:
            event, self._held = self._held, None
            return event
        event = super().next_event()
        if type(event) is not h11.Data:
            return event
        parts, size = [event.data], len(event.data)
        while size < READ_SIZE:
            following = super().next_event()
            if type(following) is h11.Data:
                parts.append(following.data)
                size += len(following.data)
                continue
            if following is not h11.NEED_DATA and following is not h11.PAUSED:  # those two hold no state
                self._held = following
            break
        return event if len(parts) == 1 else h11.Data(data=b"".join(parts))

    def start_next_cycle(self) -> None:
        super().start_next_cycle()
        self._held = None
