"""Send idempotency of SPEC 3.6: dedupe `message.send` by connectionId + requestId, in host-kept state.

Rules (exactly those of SPEC 3.6):
- first delivery: recorded `processing`, sent;
- completed duplicate: the original result with `duplicate: true`, nothing sent;
- processing and updated under 60 s ago: -32010 with `data.retryAfterSeconds = 5`;
- processing for 60 s or more: stale, sent again; failed (or cancelled): sent again.

Where the records live: in the connection's host state (SPEC 3.4), so they
survive plugin restarts and hot swaps and follow the connection to another host
(SPEC 10). A request id is hashed (crc32) to one of `slots` keys
(`sdk:send:<n>`, 256 by default); each key holds the records of its request
ids as one JSON object. So the records use at most `slots` of the 10,000 keys a
connection may have, whatever the send rate, and no index is needed to expire
them: a record last updated more than `retention` ago (1 h by default; host
retries come within minutes) counts as absent and is dropped whenever its key
is written. A key holds ~400 records within its 64 KiB, so 256 keys absorb
about 100,000 sends per connection per hour; beyond that the oldest finished
records of a key are dropped first.

Within one process a lock per key makes the read-then-write of `begin` atomic,
so concurrent duplicates cannot both send. Two processes (the old and the new
version during a hot swap) share the records but not the lock: a duplicate that
reaches both within the same few milliseconds may be sent twice.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any, Literal, Protocol

import msgspec

from ..clock import Clock, SystemClock
from ..errors import IN_PROGRESS, RpcError
from ..locks import KeyedLock
from ..protocol import STATE_VALUE_MAX_BYTES

PROCESSING_TIMEOUT = 60.0  # a record in progress this long is stale: send again
RETRY_AFTER_SECONDS = 5
RETENTION = 3600.0
SLOTS = 256
KEY_PREFIX = "sdk:send:"

Outcome = Literal["new", "retry", "stale", "duplicate"]
Status = Literal["processing", "completed", "failed"]

log = logging.getLogger(__name__)


class StateStore(Protocol):
    """What the store needs of host-kept state (`plugin_host.sdk.state.HostState`)."""

    async def get(self, key: str, *, connection_id: str | None = None, type: Any = Any) -> Any: ...

    async def put(self, key: str, value: Any, *, connection_id: str | None = None) -> None: ...


class Begin(msgspec.Struct, frozen=True):
    """What `begin` decided. `new`, `retry` (after a failure) and `stale` mean: send now."""

    outcome: Outcome
    attempts: int
    result: dict[str, Any] | None = None  # the original result of a completed duplicate

    @property
    def duplicate(self) -> bool:
        return self.outcome == "duplicate"

    @property
    def send(self) -> bool:
        return self.outcome != "duplicate"


class SendRecord(msgspec.Struct, rename="camel"):
    """One request's record, as stored."""

    status: Status
    attempts: int
    first_seen_at: float
    updated_at: float
    result: dict[str, Any] | None = None


Slot = dict[str, SendRecord]  # requestId -> record: the value of one `sdk:send:<n>` key


def record_key(request_id: str, slots: int = SLOTS) -> str:
    """The state key (`sdk:send:<n>`) holding the record of `request_id`; crc32 is stable across processes."""
    return f"{KEY_PREFIX}{zlib.crc32(request_id.encode()) % slots}"


class SendIdempotencyStore:
    """`await begin(...)` before sending, then `await complete(...)` with the result or `await fail(...)`."""

    def __init__(
        self,
        state: StateStore,
        *,
        clock: Clock | None = None,
        processing_timeout: float = PROCESSING_TIMEOUT,
        retention: float = RETENTION,
        slots: int = SLOTS,
    ) -> None:
        self.state = state
        self.clock: Clock = clock or SystemClock()
        self.processing_timeout = processing_timeout
        self.retention = retention
        self.slots = slots
        self._locks = KeyedLock()

    def key(self, request_id: str) -> str:
        """The state key holding the record of `request_id`."""
        return record_key(request_id, self.slots)

    async def begin(self, connection_id: str, request_id: str) -> Begin:
        """Decide whether this delivery is sent; raises -32010 while another attempt runs."""
        key = self.key(request_id)
        async with self._locks((connection_id, key)):
            now = self.clock.time()
            slot = await self._read(connection_id, key, now)
            record = slot.get(request_id)
            if record is None:
                slot[request_id] = SendRecord("processing", 1, now, now)
                await self._write(connection_id, key, slot, request_id)
                return Begin("new", 1)
            if record.status == "completed":
                return Begin("duplicate", record.attempts, record.result)
            if record.status == "processing" and now - record.updated_at < self.processing_timeout:
                raise RpcError(
                    IN_PROGRESS,
                    f"message {request_id} is already being sent; retry later",
                    {"retryAfterSeconds": RETRY_AFTER_SECONDS},
                )
            outcome: Outcome = "stale" if record.status == "processing" else "retry"
            slot[request_id] = SendRecord("processing", record.attempts + 1, record.first_seen_at, now)
            await self._write(connection_id, key, slot, request_id)
            return Begin(outcome, record.attempts + 1)

    async def complete(self, connection_id: str, request_id: str, result: dict[str, Any]) -> None:
        key = self.key(request_id)
        async with self._locks((connection_id, key)):
            now = self.clock.time()
            slot = await self._read(connection_id, key, now)
            record = slot.get(request_id)
            attempts, first_seen = (record.attempts, record.first_seen_at) if record else (1, now)
            slot[request_id] = SendRecord("completed", attempts, first_seen, now, result)
            await self._write(connection_id, key, slot, request_id)

    async def fail(self, connection_id: str, request_id: str) -> None:
        """The attempt did not complete: the next delivery of the same request sends again."""
        key = self.key(request_id)
        async with self._locks((connection_id, key)):
            now = self.clock.time()
            slot = await self._read(connection_id, key, now)
            record = slot.get(request_id)
            if record is None or record.status != "processing":
                return  # a late failure cannot undo a completion
            slot[request_id] = SendRecord("failed", record.attempts, record.first_seen_at, now)
            await self._write(connection_id, key, slot, request_id)

    async def get(self, connection_id: str, request_id: str) -> SendRecord | None:
        """The live record of a request, if any."""
        slot = await self._read(connection_id, self.key(request_id), self.clock.time())
        return slot.get(request_id)

    # ---------------------------------------------------------------- one key

    async def _read(self, connection_id: str, key: str, now: float) -> Slot:
        """The live records of a key: those updated within `retention`."""
        try:
            slot: Slot | None = await self.state.get(key, connection_id=connection_id, type=Slot)
        except msgspec.ValidationError:
            log.warning("send records %s of %s are unreadable; starting them afresh", key, connection_id)
            slot = None
        cutoff = now - self.retention
        return {rid: r for rid, r in (slot or {}).items() if r.updated_at >= cutoff}

    async def _write(self, connection_id: str, key: str, slot: Slot, keep: str) -> None:
        """Store a key's records; when over the value limit, the oldest finished ones go first."""
        encoded = msgspec.json.encode(slot)
        if len(encoded) > STATE_VALUE_MAX_BYTES:
            dropped = 0
            for rid, _ in sorted(slot.items(), key=lambda item: item[1].updated_at):
                if rid != keep and slot[rid].status != "processing":
                    del slot[rid]
                    dropped += 1
                    if len(msgspec.json.encode(slot)) <= STATE_VALUE_MAX_BYTES:
                        break
            if len(msgspec.json.encode(slot)) > STATE_VALUE_MAX_BYTES and slot[keep].result:
                slot[keep].result = {}  # a duplicate answer without the provider's id beats a second send
            log.warning("send records %s of %s are full: dropped the %d oldest", key, connection_id, dropped)
        await self.state.put(key, slot, connection_id=connection_id)
