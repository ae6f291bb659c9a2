"""Host changes as a stream of events (`GET /api/events`, SPEC 7.3): a bounded ring and bounded subscribers.

`publish` never waits: it appends to a ring of the last `ring_size` events and
hands the event to every subscriber's own bounded buffer; a subscriber whose
buffer is full (a slow reader) is dropped, never waited for. A subscriber that
comes back with the id of the last event it saw gets what it missed from the
ring, or a `reset` event when the ring no longer holds it (or the id is from
another run of the host: ids are `{run}-{sequence}`).

Event types and their `data`:
- `plugin.state` `{pluginId, state, previous}`
- `connection.status` `{connectionId, channelId, status, error}`
- `channel.state` `{channelId, state, lastError}`
- `delivery.deferred` `{id, requestId, channelId, peerId, reason, nextAttemptAt}` (when a delivery starts waiting,
  or waits for another reason)
- `delivery.dead` `{id, direction, channelId, peerId, reason, lastError}` (outbound or inbound dead letter)
- `delivery.retried`, `delivery.discarded` `{id, direction, channelId, peerId}` (admin actions)
- `reset` `{reason}`: only in a subscription, first, when it cannot resume where it asked to
"""

from __future__ import annotations

import collections
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from plugin_host.clock import Clock, SystemClock
from plugin_host.errors import Refusal

RING_SIZE = 1000
MAX_SUBSCRIBERS = 32
SUBSCRIBER_BUFFER = 256


class Event(msgspec.Struct, frozen=True):
    id: str
    type: str
    time: float
    data: dict[str, Any]


class TooManySubscribers(Refusal):
    """The hub already serves its maximum number of subscribers."""


class EventHub:
    def __init__(
        self,
        *,
        clock: Clock | None = None,
        ring_size: int = RING_SIZE,
        max_subscribers: int = MAX_SUBSCRIBERS,
        subscriber_buffer: int = SUBSCRIBER_BUFFER,
    ) -> None:
        self._clock = clock or SystemClock()
        self.run = secrets.token_hex(4)  # ids of another run of the host cannot be resumed
        self._seq = 0
        self._ring: collections.deque[Event] = collections.deque(maxlen=ring_size)
        self.max_subscribers = max_subscribers
        self._buffer = subscriber_buffer
        self._subscribers: set[MemoryObjectSendStream[Event]] = set()
        self.dropped = 0  # slow subscribers dropped so far

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, type: str, data: dict[str, Any]) -> Event:
        """Record an event and offer it to every subscriber; never blocks."""
        self._seq += 1
        event = Event(f"{self.run}-{self._seq}", type, self._clock.time(), data)
        self._ring.append(event)
        for stream in list(self._subscribers):
            try:
                stream.send_nowait(event)
            except anyio.WouldBlock:
                self._drop(stream)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.discard(stream)
        return event

    def since(self, last_event_id: str | None) -> list[Event] | None:
        """Events after `last_event_id` still in the ring ([] when none); None when it cannot resume there."""
        if not last_event_id:
            return []
        run, _, seq_text = last_event_id.strip().partition("-")
        if run != self.run or not seq_text.isdigit():
            return None
        seq = int(seq_text)
        if seq > self._seq:
            return None  # an id this run never issued
        oldest = self._seq - len(self._ring) + 1  # the sequence number of the oldest event the ring holds
        if seq + 1 < oldest:
            return None  # the ring moved past it: events were lost for this reader
        return list(self._ring)[seq + 1 - oldest :]

    @contextlib.asynccontextmanager
    async def subscribe(self, last_event_id: str | None = None) -> AsyncIterator[MemoryObjectReceiveStream[Event]]:
        """A stream of events: first what was missed since `last_event_id` (or `reset`), then live ones.

        The stream ends when the subscriber falls `subscriber_buffer` events behind
        (dropped) or the hub closes. Raises TooManySubscribers (503) at the limit.
        """
        self.check_capacity()
        missed = self.since(last_event_id)
        backlog = (
            [Event(f"{self.run}-{self._seq}", "reset", self._clock.time(), {"reason": "cannot_resume"})]
            if missed is None
            else missed
        )
        send, receive = anyio.create_memory_object_stream[Event](self._buffer + len(backlog))
        for event in backlog:  # the buffer was sized for them: never blocks
            send.send_nowait(event)
        self._subscribers.add(send)
        try:
            yield receive
        finally:
            self._subscribers.discard(send)
            send.close()
            receive.close()

    def check_capacity(self) -> None:
        """TooManySubscribers (503) when every place is taken."""
        if len(self._subscribers) >= self.max_subscribers:
            raise TooManySubscribers(
                "too_many_subscribers",
                f"the host already streams events to {self.max_subscribers} subscribers; try again later",
                status=503,
                headers={"Retry-After": "5"},
            )

    def _drop(self, stream: MemoryObjectSendStream[Event]) -> None:
        self._subscribers.discard(stream)
        stream.close()  # its reader drains what it has, then sees the end
        self.dropped += 1

    def close(self) -> None:
        for stream in list(self._subscribers):
            stream.close()
        self._subscribers.clear()
