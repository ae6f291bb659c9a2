"""`memory://`: the store in process memory, for tests and throwaway runtimes.

Same semantics as the SQLite backend. No method awaits inside its critical
section, so each is atomic on the event loop without a lock; a method checks and
encodes everything that can fail before it changes anything. Queue payloads are
kept as JSON, as the durable backends keep them (what cannot be stored fails here too).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from plugin_host.clock import Clock

from ..crypto import CredentialCipher
from ..messages import InboundMessage
from .base import (
    DEDUPE_IN_PROGRESS_TTL,
    DEDUPE_RETENTION,
    DEFAULT_LEASE,
    BeginResult,
    BridgeDedupeStore,
    ConnectionRecord,
    ConnectionState,
    ConnectionStore,
    ConnectorSessionRecord,
    ConnectorSessionStore,
    DedupeRecord,
    Delivery,
    InboxEntry,
    InboxStore,
    KeyValueStore,
    MessageDedupeStore,
    NotFoundError,
    OutboxEntry,
    OutboxStore,
    PipelineStore,
    Store,
    StoreError,
    check_connection_status,
    check_session_status,
    clean_view,
    decide_begin,
    dedupe_key,
    error_text,
    new_connection_id,
    new_session_id,
    outbox_conversation,
    require_cipher,
)


class MemoryBridgeDedupe(BridgeDedupeStore):
    def __init__(
        self, clock: Clock, *, ttl: float = DEDUPE_IN_PROGRESS_TTL, retention: float = DEDUPE_RETENTION
    ) -> None:
        self._clock = clock
        self.ttl = ttl
        self.retention = retention
        self._records: dict[str, DedupeRecord] = {}

    async def begin(self, connection_id: str, event_id: str, message_id: str = "") -> BeginResult:
        key = dedupe_key(connection_id, event_id)
        outcome, record, changed = decide_begin(
            self._records.get(key),
            connection_id=connection_id,
            event_id=event_id,
            message_id=message_id,
            now=self._clock.time(),
            ttl=self.ttl,
        )
        if changed:
            self._records[key] = record
        return BeginResult(outcome=outcome, record=record)

    async def complete(self, key: str) -> bool:
        return self._set(key, status="completed", last_error=None)

    async def fail(self, key: str, error: str) -> bool:
        return self._set(key, status="failed", last_error=error)

    def _set(self, key: str, **changes: Any) -> bool:
        record = self._records.get(key)
        if record is None:
            return False
        self._records[key] = msgspec.structs.replace(record, updated_at=self._clock.time(), **changes)
        return True

    async def get(self, key: str) -> DedupeRecord | None:
        return self._records.get(key)

    async def prune(self, retention: float | None = None) -> int:
        cutoff = self._clock.time() - (self.retention if retention is None else retention)
        old = [k for k, r in self._records.items() if r.status == "completed" and r.updated_at <= cutoff]
        for key in old:
            del self._records[key]
        return len(old)


class MemoryMessageDedupe(MessageDedupeStore):
    def __init__(self, clock: Clock, *, retention: float = DEDUPE_RETENTION) -> None:
        self._clock = clock
        self.retention = retention
        self._seen: dict[tuple[str, str], float] = {}

    async def seen_or_mark(self, channel_id: str, message_id: str) -> bool:
        if self.seen(channel_id, message_id):
            return True
        self.mark(channel_id, message_id)
        return False

    def seen(self, channel_id: str, message_id: str) -> bool:
        return (channel_id, message_id) in self._seen

    def mark(self, channel_id: str, message_id: str) -> None:
        self._seen[(channel_id, message_id)] = self._clock.time()

    async def prune(self, retention: float | None = None) -> int:
        cutoff = self._clock.time() - (self.retention if retention is None else retention)
        old = [k for k, seen_at in self._seen.items() if seen_at <= cutoff]
        for key in old:
            del self._seen[key]
        return len(old)


@dataclass
class _Row:
    """One queue entry; inbox and outbox differ only in what they carry."""

    id: int
    channel_id: str
    conversation: str
    key: str  # message id (inbox) or request id (outbox)
    payload: bytes  # JSON
    created_at: float
    updated_at: float
    next_attempt_at: float
    status: str = "pending"
    attempts: int = 0
    claimed_until: float | None = None
    last_error: str | None = None
    result: dict[str, Any] | None = None


@dataclass
class _Queue:
    clock: Clock
    lease: float
    rows: dict[int, _Row] = field(default_factory=dict)  # insertion order = id order
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, channel_id: str, conversation: str, key: str, payload: bytes) -> _Row:
        now = self.clock.time()
        row = _Row(
            id=next(self.ids),
            channel_id=channel_id,
            conversation=conversation,
            key=key,
            payload=payload,
            created_at=now,
            updated_at=now,
            next_attempt_at=now,
        )
        self.rows[row.id] = row
        return row

    def claim(self, limit: int, lease: float | None) -> list[_Row]:
        now = self.clock.time()
        heads: dict[tuple[str, str], _Row] = {}
        for row in self.rows.values():
            if row.status in ("pending", "claimed"):
                heads.setdefault((row.channel_id, row.conversation), row)
        claimed: list[_Row] = []
        for row in sorted(heads.values(), key=lambda r: r.id):
            if len(claimed) >= limit:
                break
            due = (row.status == "pending" and row.next_attempt_at <= now) or (
                row.status == "claimed" and row.claimed_until is not None and row.claimed_until <= now
            )
            if due:
                row.status, row.claimed_until = "claimed", now + (self.lease if lease is None else lease)
                row.attempts += 1
                row.updated_at = now
                claimed.append(row)
        return claimed

    def release(self) -> int:
        claimed = [r for r in self.rows.values() if r.status == "claimed"]
        for row in claimed:
            row.status, row.claimed_until, row.updated_at = "pending", None, self.clock.time()
        return len(claimed)

    def live(self, entry_id: int) -> _Row | None:
        row = self.rows.get(entry_id)
        return row if row is not None and row.status in ("pending", "claimed") else None

    def retry(self, entry_id: int, error: str, delay: float) -> bool:
        row = self.live(entry_id)
        if row is None:
            return False
        now = self.clock.time()
        row.status, row.claimed_until, row.last_error = "pending", None, error
        row.next_attempt_at, row.updated_at = now + max(0.0, delay), now
        return True

    def dead_letter(self, entry_id: int, error: str) -> bool:
        row = self.live(entry_id)
        if row is None:
            return False
        row.status, row.claimed_until, row.last_error = "dead", None, error
        row.updated_at = self.clock.time()
        return True

    def dead(self, limit: int) -> list[_Row]:
        return [r for r in self.rows.values() if r.status == "dead"][:limit]

    def pending_count(self) -> int:
        return sum(1 for r in self.rows.values() if r.status in ("pending", "claimed"))


def _inbox_entry(row: _Row) -> InboxEntry:
    return InboxEntry(
        id=row.id,
        channel_id=row.channel_id,
        session_id=row.conversation,
        message=msgspec.json.decode(row.payload, type=InboundMessage),
        status=row.status,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,  # type: ignore[arg-type]
        claimed_until=row.claimed_until,
        last_error=row.last_error,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _outbox_entry(row: _Row) -> OutboxEntry:
    return OutboxEntry(
        id=row.id,
        channel_id=row.channel_id,
        request_id=row.key,
        conversation=row.conversation,
        payload=msgspec.json.decode(row.payload),
        status=row.status,
        attempts=row.attempts,  # type: ignore[arg-type]
        next_attempt_at=row.next_attempt_at,
        claimed_until=row.claimed_until,
        last_error=row.last_error,
        result=copy.deepcopy(row.result),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class MemoryInbox(InboxStore):
    def __init__(self, clock: Clock, message_dedupe: MemoryMessageDedupe, *, lease: float = DEFAULT_LEASE) -> None:
        self._queue = _Queue(clock, lease)
        self._dedupe = message_dedupe

    async def commit(self, message: InboundMessage) -> InboxEntry | None:
        return self.commit_now(message)

    def commit_now(self, message: InboundMessage) -> InboxEntry | None:
        if self._dedupe.seen(message.channel_id, message.message_id):
            return None
        payload = msgspec.json.encode(message)  # may fail: before any change
        self._dedupe.mark(message.channel_id, message.message_id)
        return _inbox_entry(self._queue.add(message.channel_id, message.session_id, message.message_id, payload))

    async def claim_ready(self, limit: int = 16, *, lease: float | None = None) -> list[InboxEntry]:
        return [_inbox_entry(r) for r in self._queue.claim(limit, lease)]

    async def release_claims(self) -> int:
        return self._queue.release()

    async def ack(self, entry_id: int) -> bool:
        if self._queue.live(entry_id) is None:
            return False
        del self._queue.rows[entry_id]
        return True

    async def retry(self, entry_id: int, error: str, delay: float) -> bool:
        return self._queue.retry(entry_id, error, delay)

    async def dead_letter(self, entry_id: int, error: str) -> bool:
        return self._queue.dead_letter(entry_id, error)

    async def get(self, entry_id: int) -> InboxEntry | None:
        row = self._queue.rows.get(entry_id)
        return None if row is None else _inbox_entry(row)

    async def list_dead(self, limit: int = 100) -> list[InboxEntry]:
        return [_inbox_entry(r) for r in self._queue.dead(limit)]

    async def pending_count(self) -> int:
        return self._queue.pending_count()


class MemoryOutbox(OutboxStore):
    def __init__(self, clock: Clock, *, lease: float = DEFAULT_LEASE) -> None:
        self._queue = _Queue(clock, lease)
        self._by_request: dict[str, int] = {}

    async def enqueue(
        self, channel_id: str, request_id: str, payload: dict[str, Any], *, conversation: str | None = None
    ) -> bool:
        if request_id in self._by_request:
            return False
        self.add(channel_id, request_id, msgspec.json.encode(payload), conversation)
        return True

    def add(self, channel_id: str, request_id: str, payload: bytes, conversation: str | None) -> None:
        row = self._queue.add(channel_id, conversation or outbox_conversation(request_id), request_id, payload)
        self._by_request[request_id] = row.id

    async def claim_ready(self, limit: int = 16, *, lease: float | None = None) -> list[OutboxEntry]:
        return [_outbox_entry(r) for r in self._queue.claim(limit, lease)]

    async def release_claims(self) -> int:
        return self._queue.release()

    async def mark_sent(self, entry_id: int, result: dict[str, Any] | None = None) -> bool:
        row = self._queue.live(entry_id)
        if row is None:
            return False
        row.status, row.claimed_until, row.result = "sent", None, copy.deepcopy(result)
        row.updated_at = self._queue.clock.time()
        return True

    async def retry(self, entry_id: int, error: str, delay: float) -> bool:
        return self._queue.retry(entry_id, error, delay)

    async def dead_letter(self, entry_id: int, error: str) -> bool:
        return self._queue.dead_letter(entry_id, error)

    async def get(self, entry_id: int) -> OutboxEntry | None:
        row = self._queue.rows.get(entry_id)
        return None if row is None else _outbox_entry(row)

    async def get_by_request_id(self, request_id: str) -> OutboxEntry | None:
        entry_id = self._by_request.get(request_id)
        return None if entry_id is None else await self.get(entry_id)

    async def list_dead(self, limit: int = 100) -> list[OutboxEntry]:
        return [_outbox_entry(r) for r in self._queue.dead(limit)]

    async def pending_count(self) -> int:
        return self._queue.pending_count()

    async def prune(self, retention: float = DEDUPE_RETENTION) -> int:
        cutoff = self._queue.clock.time() - retention
        old = [r for r in self._queue.rows.values() if r.status == "sent" and r.updated_at <= cutoff]
        for row in old:
            del self._queue.rows[row.id]
            del self._by_request[row.key]
        return len(old)


class MemoryPipeline(PipelineStore):
    def __init__(self, clock: Clock, dedupe: MemoryBridgeDedupe, inbox: MemoryInbox, outbox: MemoryOutbox) -> None:
        self._clock = clock
        self._dedupe = dedupe
        self._inbox = inbox
        self._outbox = outbox

    async def accept_event(
        self, connection_id: str, event_id: str, message: InboundMessage
    ) -> tuple[BeginResult, InboxEntry | None]:
        key = dedupe_key(connection_id, event_id)
        now = self._clock.time()
        outcome, record, _ = decide_begin(
            self._dedupe._records.get(key),
            connection_id=connection_id,
            event_id=event_id,
            message_id=message.message_id,
            now=now,
            ttl=self._dedupe.ttl,
        )
        if outcome in ("duplicate", "in_progress"):
            return BeginResult(outcome=outcome, record=record), None
        try:
            entry = self._inbox.commit_now(message)  # changes nothing when it fails
        except BaseException as exc:
            self._dedupe._records[key] = msgspec.structs.replace(
                record, status="failed", last_error=error_text(exc), updated_at=self._clock.time()
            )
            raise
        record = msgspec.structs.replace(record, status="completed", last_error=None)
        self._dedupe._records[key] = record
        return BeginResult(outcome=outcome, record=record), entry

    async def finish_inbound(self, entry_id: int, deliveries: Sequence[Delivery]) -> list[bool] | None:
        if self._inbox._queue.live(entry_id) is None:
            return None
        payloads = [msgspec.json.encode(d.payload) for d in deliveries]  # may fail: before any change
        del self._inbox._queue.rows[entry_id]
        new: list[bool] = []
        for delivery, payload in zip(deliveries, payloads, strict=False):
            known = delivery.request_id in self._outbox._by_request
            if not known:
                self._outbox.add(delivery.channel_id, delivery.request_id, payload, delivery.conversation)
            new.append(not known)
        return new


class MemoryConnections(ConnectionStore):
    def __init__(self, clock: Clock, cipher: CredentialCipher | None, sessions: MemorySessions) -> None:
        self._clock = clock
        self._cipher = cipher
        self._sessions = sessions
        self._records: dict[str, ConnectionRecord] = {}
        self._credentials: dict[str, bytes] = {}

    async def create(
        self,
        *,
        kind: str,
        plugin_id: str,
        channel_id: str | None = None,
        account_id: str = "",
        display_name: str = "",
        options: dict[str, Any] | None = None,
        status: ConnectionState = "pending",
        connection_id: str | None = None,
    ) -> ConnectionRecord:
        check_connection_status(status)
        connection_id = connection_id or new_connection_id()
        if connection_id in self._records:
            raise StoreError(f"connection {connection_id} already exists")
        now = self._clock.time()
        record = ConnectionRecord(
            connection_id=connection_id,
            kind=kind,
            plugin_id=plugin_id,
            channel_id=channel_id or connection_id,
            account_id=account_id,
            display_name=display_name,
            options=copy.deepcopy(options or {}),
            status=status,
            error=None,
            has_credentials=False,
            created_at=now,
            updated_at=now,
        )
        self._records[connection_id] = record
        return copy.deepcopy(record)

    async def get(self, connection_id: str) -> ConnectionRecord | None:
        return copy.deepcopy(self._records.get(connection_id))

    async def list(
        self, *, status: str | None = None, kind: str | None = None, plugin_id: str | None = None
    ) -> list[ConnectionRecord]:
        return [
            copy.deepcopy(r)
            for r in self._records.values()
            if (status is None or r.status == status)
            and (kind is None or r.kind == kind)
            and (plugin_id is None or r.plugin_id == plugin_id)
        ]

    def _replace(self, connection_id: str, **changes: Any) -> ConnectionRecord:
        record = self._records.get(connection_id)
        if record is None:
            raise NotFoundError(f"unknown connection {connection_id}")
        record = msgspec.structs.replace(record, updated_at=self._clock.time(), **changes)
        self._records[connection_id] = record
        return copy.deepcopy(record)

    async def update(
        self,
        connection_id: str,
        *,
        channel_id: str | None = None,
        account_id: str | None = None,
        display_name: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> ConnectionRecord:
        changes = {
            k: v
            for k, v in (("channel_id", channel_id), ("account_id", account_id), ("display_name", display_name))
            if v is not None
        }
        if options is not None:
            changes["options"] = copy.deepcopy(options)
        return self._replace(connection_id, **changes)

    async def update_status(
        self, connection_id: str, status: ConnectionState, error: str | None = None
    ) -> ConnectionRecord:
        check_connection_status(status)
        return self._replace(connection_id, status=status, error=error)

    async def set_credentials(self, connection_id: str, credentials: dict[str, Any]) -> None:
        if not credentials:  # empty credentials clear them
            self._replace(connection_id, has_credentials=False)
            self._credentials.pop(connection_id, None)
            return
        token = require_cipher(self._cipher).encrypt(credentials)
        self._replace(connection_id, has_credentials=True)
        self._credentials[connection_id] = token

    async def get_credentials(self, connection_id: str) -> dict[str, Any]:
        if connection_id not in self._records:
            raise NotFoundError(f"unknown connection {connection_id}")
        token = self._credentials.get(connection_id)
        return {} if token is None else require_cipher(self._cipher).decrypt(token)

    async def delete(self, connection_id: str) -> bool:
        if self._records.pop(connection_id, None) is None:
            return False
        self._credentials.pop(connection_id, None)
        self._sessions._drop_connection(connection_id)
        return True


class MemorySessions(ConnectorSessionStore):
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._records: dict[str, ConnectorSessionRecord] = {}
        self.connections: MemoryConnections | None = None

    async def create(
        self,
        *,
        connection_id: str,
        kind: str,
        plugin_id: str,
        status: str = "pending",
        view: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> ConnectorSessionRecord:
        assert self.connections is not None
        check_session_status(status)
        if await self.connections.get(connection_id) is None:
            raise NotFoundError(f"unknown connection {connection_id}")
        session_id = session_id or new_session_id()
        if session_id in self._records:
            raise StoreError(f"connector session {session_id} already exists")
        now = self._clock.time()
        record = ConnectorSessionRecord(
            session_id=session_id,
            connection_id=connection_id,
            kind=kind,
            plugin_id=plugin_id,
            status=status,
            view=copy.deepcopy(clean_view(view)),
            created_at=now,
            updated_at=now,
        )
        self._records[session_id] = record
        return copy.deepcopy(record)

    async def get(self, session_id: str) -> ConnectorSessionRecord | None:
        return copy.deepcopy(self._records.get(session_id))

    async def list(
        self, *, connection_id: str | None = None, status: str | None = None
    ) -> list[ConnectorSessionRecord]:
        return [
            copy.deepcopy(r)
            for r in self._records.values()
            if (connection_id is None or r.connection_id == connection_id) and (status is None or r.status == status)
        ]

    async def update(
        self, session_id: str, *, status: str | None = None, view: dict[str, Any] | None = None
    ) -> ConnectorSessionRecord:
        record = self._records.get(session_id)
        if record is None:
            raise NotFoundError(f"unknown connector session {session_id}")
        changes: dict[str, Any] = {"updated_at": self._clock.time()}
        if status is not None:
            check_session_status(status)
            changes["status"] = status
        if view is not None:
            changes["view"] = copy.deepcopy(clean_view(view))
        record = msgspec.structs.replace(record, **changes)
        self._records[session_id] = record
        return copy.deepcopy(record)

    def _drop_connection(self, connection_id: str) -> None:
        for key in [k for k, r in self._records.items() if r.connection_id == connection_id]:
            del self._records[key]


class MemoryKeyValue(KeyValueStore):
    def __init__(self) -> None:
        self._values: dict[str, bytes] = {}

    async def get(self, key: str, default: Any = None) -> Any:
        raw = self._values.get(key)
        return default if raw is None else msgspec.json.decode(raw)

    async def set(self, key: str, value: Any) -> None:
        self._values[key] = msgspec.json.encode(value)  # JSON, as the durable backends keep it

    async def delete(self, key: str) -> bool:
        return self._values.pop(key, None) is not None


def open_memory_store(
    *,
    clock: Clock,
    cipher: CredentialCipher | None,
    dedupe_ttl: float = DEDUPE_IN_PROGRESS_TTL,
    retention: float = DEDUPE_RETENTION,
    lease: float = DEFAULT_LEASE,
) -> Store:
    message_dedupe = MemoryMessageDedupe(clock, retention=retention)
    bridge_dedupe = MemoryBridgeDedupe(clock, ttl=dedupe_ttl, retention=retention)
    inbox = MemoryInbox(clock, message_dedupe, lease=lease)
    outbox = MemoryOutbox(clock, lease=lease)
    sessions = MemorySessions(clock)
    connections = MemoryConnections(clock, cipher, sessions)
    sessions.connections = connections

    async def close() -> None:
        pass

    return Store(
        url="memory://",
        bridge_dedupe=bridge_dedupe,
        message_dedupe=message_dedupe,
        inbox=inbox,
        outbox=outbox,
        connections=connections,
        sessions=sessions,
        kv=MemoryKeyValue(),
        pipeline=MemoryPipeline(clock, bridge_dedupe, inbox, outbox),
        close=close,
    )
