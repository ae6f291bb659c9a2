"""The store interface: one abstract class per area, records, and the `Store` facade.

Every method is async and speaks only Python values and the records below (no
SQL, no driver types), so a PostgreSQL backend can follow without touching
callers. Timestamps are float epoch seconds from the injected clock
(`Clock.time()`).

Queues (inbox, outbox) share one model:
- statuses `pending` -> `claimed` -> done (`ack`/`mark_sent`) or back to `pending`
  (`retry`, with a delay) or `dead` (`dead_letter`);
- a conversation (channel id + conversation key) is worked in order: only its
  earliest unfinished entry (its head) can be claimed, and only when that entry
  is due (`next_attempt_at <= now`) and not held by a live claim. Dead entries
  count as finished, so a dead letter does not block its conversation; different
  conversations are claimed in parallel, oldest head first;
- claims are leases: `claim_ready` sets `claimed_until = now + lease`. An entry
  whose holder crashed (or was closed without acking) is handed out again once
  its lease has run out, also by a new store opened on the same file. Leases,
  rather than resetting claims when a store opens, keep a second process that
  opens the same file (a CLI command) from stealing live work. A consumer must
  finish an entry within its lease; `attempts` counts the claims. An owner that
  knows it is the only consumer (the runtime, at start) may call
  `release_claims()` to hand every claim back at once instead of waiting;
- several hosts (SPEC 10) claim with their node id as `owner`: each renews its
  own claims while it lives (`renew_claims`), so a long handler keeps its entry
  and a dead host's entries come back once its short lease runs out; a host that
  stops cleanly hands its claims back at once (`release_claims(owner)`).
  `channels` limits a claim to the channels a host may serve (the outbox of a
  connection goes out only through the host that holds its lease).

Leases (SPEC 10) are the other shared-state primitive: a node's heartbeat row,
and one lease per connection (`LeaseStore`) whose `epoch` grows on every change
of owner; writes of per-connection state pass a `LeaseFence` and are refused
(`FencedError`) when the writer no longer holds that lease.
"""

from __future__ import annotations

import abc
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, Literal, get_args

import anyio
import msgspec

from plugin_host.protocol import BridgeEvent, SessionStatus
from plugin_host.redact import redact

from ..crypto import CredentialCipher
from ..messages import InboundMessage

DEDUPE_IN_PROGRESS_TTL = 60.0  # SPEC 6.3: processing and updated less than this ago -> 409
DEDUPE_RETENTION = 7 * 24 * 3600.0  # SPEC 6.3: completed records kept this long
RETRY_AFTER_SECONDS = 5  # SPEC 6.3: the 409 answer's retryAfterSeconds
DEFAULT_LEASE = 300.0  # seconds a claimed queue entry is held before it is handed out again

DedupeStatus = Literal["processing", "completed", "failed"]
BeginOutcome = Literal["new", "duplicate", "in_progress", "stale", "retry"]
QueueStatus = Literal["pending", "claimed", "dead"]
OutboxStatus = Literal["pending", "claimed", "sent", "dead"]
ConnectionState = Literal["pending", "pairing", "connected", "disconnected", "error", "revoked"]
CONNECTION_STATES: frozenset[str] = frozenset(get_args(ConnectionState))
SESSION_STATES: frozenset[str] = frozenset(get_args(SessionStatus))  # SPEC 3.5


class StoreError(Exception):
    """A store operation that cannot be done (bad URL, unknown record, invalid value)."""


class FencedError(StoreError):
    """A write of per-connection state by a node that no longer holds the connection's lease (SPEC 10)."""

    def __init__(self, message: str, epoch: int) -> None:
        super().__init__(message)
        self.epoch = epoch


class NotFoundError(StoreError, KeyError):
    """No record with that id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


def error_text(exc: BaseException) -> str:
    """A failure as stored (`lastError`) and logged: redacted, at most 500 characters."""
    return redact(str(exc) or type(exc).__name__)[:500]


def check_connection_status(status: str) -> None:
    if status not in CONNECTION_STATES:
        raise StoreError(f"unknown connection status {status!r}; expected one of {sorted(CONNECTION_STATES)}")


def require_cipher(cipher: CredentialCipher | None) -> CredentialCipher:
    if cipher is None:
        raise StoreError("this store was opened without a CredentialCipher; credentials cannot be stored or read")
    return cipher


def check_session_status(status: str) -> None:
    if status not in SESSION_STATES:
        raise StoreError(f"unknown connector session status {status!r}; expected one of {sorted(SESSION_STATES)}")


class _Record(msgspec.Struct, rename="camel", kw_only=True, frozen=True):
    pass


# ---------------------------------------------------------------- bridge dedupe (SPEC 6.3)


def dedupe_key(connection_id: str, event_id: str) -> str:
    """The bridge dedupe key `{connectionId}:{eventId}` (connection ids hold no colon)."""
    return f"{connection_id}:{event_id}"


class DedupeRecord(_Record, frozen=True):
    dedupe_key: str
    connection_id: str
    event_id: str
    status: DedupeStatus
    first_seen_at: float
    updated_at: float
    delivery_attempts: int
    message_id: str = ""
    last_error: str | None = None


class BeginResult(_Record, frozen=True):
    """What to do with a delivery: `should_process` for new/stale/retry."""

    outcome: BeginOutcome
    record: DedupeRecord

    @property
    def should_process(self) -> bool:
        return self.outcome in ("new", "stale", "retry")

    @property
    def dedupe_key(self) -> str:
        return self.record.dedupe_key


def decide_begin(
    existing: DedupeRecord | None,
    *,
    connection_id: str,
    event_id: str,
    message_id: str,
    now: float,
    ttl: float,
) -> tuple[BeginOutcome, DedupeRecord, bool]:
    """SPEC 6.3 as a pure function: (outcome, record after, whether the record changed).

    Every backend calls this inside its own atomic section, so the rules live once.
    """
    if existing is None:
        record = DedupeRecord(
            dedupe_key=dedupe_key(connection_id, event_id),
            connection_id=connection_id,
            event_id=event_id,
            status="processing",
            first_seen_at=now,
            updated_at=now,
            delivery_attempts=1,
            message_id=message_id,
        )
        return "new", record, True
    if existing.status == "completed":
        return "duplicate", existing, False
    if existing.status == "processing" and now - existing.updated_at < ttl:
        return "in_progress", existing, False
    outcome: BeginOutcome = "stale" if existing.status == "processing" else "retry"
    record = msgspec.structs.replace(
        existing,
        status="processing",
        updated_at=now,
        delivery_attempts=existing.delivery_attempts + 1,
        message_id=message_id or existing.message_id,
        last_error=None,
    )
    return outcome, record, True


class BridgeDedupeStore(abc.ABC):
    """Bridge dedupe by `connectionId + eventId` (SPEC 6.3)."""

    ttl: float
    retention: float

    @abc.abstractmethod
    async def begin(self, connection_id: str, event_id: str, message_id: str = "") -> BeginResult:
        """Record a delivery and say what to do with it (atomic: one caller gets `new`)."""

    @abc.abstractmethod
    async def complete(self, key: str) -> bool:
        """Mark processed; False when there is no such record."""

    @abc.abstractmethod
    async def fail(self, key: str, error: str) -> bool:
        """Mark failed with `error` (the next delivery processes again); False when unknown."""

    @abc.abstractmethod
    async def get(self, key: str) -> DedupeRecord | None: ...

    @abc.abstractmethod
    async def prune(self, retention: float | None = None) -> int:
        """Remove completed records not updated for `retention` seconds (default: the store's); count."""


# ---------------------------------------------------------------- runtime message dedupe


class MessageDedupeStore(abc.ABC):
    """Runtime dedupe by `channelId + messageId` (SPEC 6.3)."""

    retention: float

    @abc.abstractmethod
    async def seen_or_mark(self, channel_id: str, message_id: str) -> bool:
        """True when already seen; otherwise remember it now and return False."""

    @abc.abstractmethod
    async def prune(self, retention: float | None = None) -> int:
        """Forget ids seen `retention` seconds ago or more; count."""


# ---------------------------------------------------------------- inbox


class InboxEntry(_Record, frozen=True):
    id: int
    channel_id: str
    session_id: str
    message: InboundMessage
    status: QueueStatus
    attempts: int
    next_attempt_at: float
    claimed_until: float | None
    last_error: str | None
    created_at: float
    updated_at: float


class InboxStore(abc.ABC):
    """Durable inbox; conversation = channel id + `message.session_id`."""

    @abc.abstractmethod
    async def commit(self, message: InboundMessage) -> InboxEntry | None:
        """Mark `channelId + messageId` seen and enqueue, atomically; None when the id was seen."""

    @abc.abstractmethod
    async def claim_ready(
        self, limit: int = 16, *, lease: float | None = None, owner: str | None = None
    ) -> list[InboxEntry]:
        """Claim up to `limit` due conversation heads (see the module doc), for `owner` when given."""

    @abc.abstractmethod
    async def release_claims(self, owner: str | None = None) -> int:
        """Make claimed entries claimable now: every one (the sole consumer, at its start) or `owner`'s; count."""

    @abc.abstractmethod
    async def renew_claims(self, owner: str, lease: float) -> int:
        """Extend `owner`'s live claims to `now + lease` (a host renews its claims while it lives); count."""

    @abc.abstractmethod
    async def ack(self, entry_id: int) -> bool:
        """Done: remove the entry; False when unknown."""

    @abc.abstractmethod
    async def retry(self, entry_id: int, error: str, delay: float) -> bool:
        """Back to pending, due `delay` seconds from now; its conversation waits for it."""

    @abc.abstractmethod
    async def dead_letter(self, entry_id: int, error: str) -> bool:
        """Give up: keep it visible in `list_dead`; its conversation moves on."""

    @abc.abstractmethod
    async def get(self, entry_id: int) -> InboxEntry | None: ...

    @abc.abstractmethod
    async def list_dead(self, limit: int = 100) -> list[InboxEntry]:
        """Dead letters, oldest first."""

    @abc.abstractmethod
    async def pending_count(self) -> int:
        """Entries not yet finished (pending or claimed)."""


# ---------------------------------------------------------------- outbox


def outbox_conversation(request_id: str) -> str:
    """Default conversation key of a request id: it minus its last `:` part.

    For SPEC 6.4 ids (`out_{channel}:{session_id}:{suffix}`) this is
    `out_{channel}:{session_id}`, one key per conversation.
    """
    head, sep, _ = request_id.rpartition(":")
    return head if sep else request_id


class OutboxEntry(_Record, frozen=True):
    id: int
    channel_id: str
    request_id: str
    conversation: str
    payload: dict[str, Any]
    status: OutboxStatus
    attempts: int
    next_attempt_at: float
    claimed_until: float | None
    last_error: str | None
    result: dict[str, Any] | None
    created_at: float
    updated_at: float


class OutboxStore(abc.ABC):
    """Durable outbox, idempotent by `request_id`; ordered per conversation."""

    @abc.abstractmethod
    async def enqueue(
        self, channel_id: str, request_id: str, payload: dict[str, Any], *, conversation: str | None = None
    ) -> bool:
        """Add a delivery; False (and nothing changes) when `request_id` is already known.

        `conversation` defaults to `outbox_conversation(request_id)`.
        """

    @abc.abstractmethod
    async def claim_ready(
        self,
        limit: int = 16,
        *,
        lease: float | None = None,
        owner: str | None = None,
        channels: Collection[str] | None = None,
    ) -> list[OutboxEntry]:
        """Claim due conversation heads; only of `channels` when given (None: any channel)."""

    @abc.abstractmethod
    async def release_claims(self, owner: str | None = None) -> int:
        """Make claimed entries claimable now: every one (the sole consumer, at its start) or `owner`'s; count."""

    @abc.abstractmethod
    async def renew_claims(self, owner: str, lease: float) -> int:
        """Extend `owner`'s live claims to `now + lease`; count."""

    @abc.abstractmethod
    async def mark_sent(self, entry_id: int, result: dict[str, Any] | None = None) -> bool:
        """Delivered: kept as `sent` (so the request id stays known) until `prune`."""

    @abc.abstractmethod
    async def retry(self, entry_id: int, error: str, delay: float) -> bool: ...

    @abc.abstractmethod
    async def dead_letter(self, entry_id: int, error: str) -> bool: ...

    @abc.abstractmethod
    async def get(self, entry_id: int) -> OutboxEntry | None: ...

    @abc.abstractmethod
    async def get_by_request_id(self, request_id: str) -> OutboxEntry | None: ...

    @abc.abstractmethod
    async def list_dead(self, limit: int = 100) -> list[OutboxEntry]:
        """Dead letters, oldest first."""

    @abc.abstractmethod
    async def pending_count(self) -> int: ...

    @abc.abstractmethod
    async def prune(self, retention: float = DEDUPE_RETENTION) -> int:
        """Remove `sent` entries last updated `retention` seconds ago or more; count."""


# ---------------------------------------------------------------- pipeline: steps that span areas


class Delivery(msgspec.Struct, frozen=True):
    """One outbox delivery to enqueue (the arguments of `OutboxStore.enqueue`)."""

    channel_id: str
    request_id: str
    payload: dict[str, Any]
    conversation: str | None = None  # default: `outbox_conversation(request_id)`


class PipelineStore(abc.ABC):
    """The message pipeline's durable steps that touch several areas, each one transaction.

    They exist so that a crash never leaves a step half done. A backend runs each
    call as one atomic unit: SQLite a savepoint in a `BEGIN IMMEDIATE` transaction
    that concurrent calls share (group commit); PostgreSQL would use one
    `BEGIN ... COMMIT` per call (or a savepoint per call in a shared one), reading
    the dedupe row `FOR UPDATE`.
    """

    @abc.abstractmethod
    async def accept_event(
        self, connection_id: str, event_id: str, message: InboundMessage
    ) -> tuple[BeginResult, InboxEntry | None]:
        """Bridge dedupe, runtime dedupe and inbox commit of one delivery, atomically (SPEC 6.3).

        `decide_begin` on `connectionId + eventId` with `message.message_id`:
        `duplicate` and `in_progress` change nothing and give no entry. Otherwise,
        together: the message is committed as by `InboxStore.commit` (entry None
        when its `channelId + messageId` was seen) and the dedupe record ends
        `completed` (`record` in the result). When that fails nothing of it
        remains; the record is then written `failed` with `error_text(exc)`, its
        attempt counted (after the rollback: in the same transaction, or in one
        of its own when the whole transaction failed; not when another delivery
        changed the record meanwhile), and the error is raised. A backend that
        awaits I/O writes it shielded from cancellation.
        """

    @abc.abstractmethod
    async def finish_inbound(self, entry_id: int, deliveries: Sequence[Delivery]) -> list[bool] | None:
        """A handler finished: ack the inbox entry and enqueue its replies, atomically.

        The transactional outbox: either the entry is gone and every reply is in
        the outbox, or nothing changed. Returns, per delivery, whether it was new
        (as `OutboxStore.enqueue`); None, changing nothing, when the entry is no
        longer live (another consumer finished it after this one's lease ran out).
        """


# ---------------------------------------------------------------- connections


def new_connection_id() -> str:
    return "conn_" + secrets.token_urlsafe(18)  # 24 url-safe characters


def new_session_id() -> str:
    return "cs_" + secrets.token_urlsafe(18)


class ConnectionRecord(_Record, frozen=True):
    """A connection as stored; never carries credentials (see `ConnectionStore.get_credentials`)."""

    connection_id: str
    kind: str
    plugin_id: str
    channel_id: str
    account_id: str
    display_name: str
    options: dict[str, Any]
    status: ConnectionState
    error: str | None
    has_credentials: bool
    created_at: float
    updated_at: float


_Connections = list[ConnectionRecord]


class ConnectionStore(abc.ABC):
    @abc.abstractmethod
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
        """A new connection (`conn_...` id unless given); `channel_id` defaults to the connection id."""

    @abc.abstractmethod
    async def get(self, connection_id: str) -> ConnectionRecord | None: ...

    @abc.abstractmethod
    async def list(
        self, *, status: str | None = None, kind: str | None = None, plugin_id: str | None = None
    ) -> _Connections:
        """Connections, oldest first, filtered by the given fields."""

    @abc.abstractmethod
    async def update(
        self,
        connection_id: str,
        *,
        channel_id: str | None = None,
        account_id: str | None = None,
        display_name: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> ConnectionRecord:
        """Change the given fields; NotFoundError when unknown."""

    @abc.abstractmethod
    async def update_status(
        self, connection_id: str, status: ConnectionState, error: str | None = None
    ) -> ConnectionRecord:
        """Set the status and error (None clears it); NotFoundError when unknown."""

    @abc.abstractmethod
    async def set_credentials(
        self, connection_id: str, credentials: dict[str, Any], *, fence: LeaseFence | None = None
    ) -> None:
        """Store credentials encrypted with the store's `CredentialCipher`; `{}` clears them.

        With a `fence`, only while its node holds the connection's lease (FencedError otherwise).
        """

    @abc.abstractmethod
    async def get_credentials(self, connection_id: str) -> dict[str, Any]:
        """Decrypted credentials, `{}` when none; CredentialDecryptError on a wrong key."""

    @abc.abstractmethod
    async def delete(self, connection_id: str) -> bool:
        """Remove the connection and its sessions; False when unknown."""


# ---------------------------------------------------------------- connector sessions


class ConnectorSessionRecord(_Record, frozen=True):
    session_id: str
    connection_id: str
    kind: str
    plugin_id: str
    status: str
    view: dict[str, Any]
    created_at: float
    updated_at: float


_Sessions = list[ConnectorSessionRecord]


def clean_view(view: dict[str, Any] | None) -> dict[str, Any]:
    """A session view as stored: never credentials (a `session.update` may carry them)."""
    return {k: v for k, v in (view or {}).items() if k != "credentials"}


class ConnectorSessionStore(abc.ABC):
    @abc.abstractmethod
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
        """A new session (`cs_...` id unless given) of an existing connection (NotFoundError otherwise)."""

    @abc.abstractmethod
    async def get(self, session_id: str) -> ConnectorSessionRecord | None: ...

    @abc.abstractmethod
    async def list(self, *, connection_id: str | None = None, status: str | None = None) -> _Sessions: ...

    @abc.abstractmethod
    async def update(
        self, session_id: str, *, status: str | None = None, view: dict[str, Any] | None = None
    ) -> ConnectorSessionRecord:
        """Set status and/or the last view (camelCase `ConnectorSessionView` builtins); NotFoundError when unknown."""


# ---------------------------------------------------------------- key/value


class KeyValueStore(abc.ABC):
    """Small JSON values by key (settings, cursors)."""

    @abc.abstractmethod
    async def get(self, key: str, default: Any = None) -> Any: ...

    @abc.abstractmethod
    async def set(self, key: str, value: Any) -> None: ...

    @abc.abstractmethod
    async def delete(self, key: str) -> bool: ...


# ---------------------------------------------------------------- host-kept plugin state (SPEC 3.4)


class StateLimitError(StoreError):
    """A `state.put` beyond SPEC 3.4's limits (value size, keys per scope); `limit` is the bound."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class PluginStateStore(abc.ABC):
    """JSON values a plugin keeps in the host, by plugin, scope and key.

    The scope is a connection id, or None for plugin-wide values. Keyed by plugin
    id (not version), so state follows a plugin across restarts and hot swaps.
    """

    value_max_bytes: int
    keys_per_scope: int

    @abc.abstractmethod
    async def get(self, plugin_id: str, connection_id: str | None, key: str) -> Any:
        """The value, or None when unset."""

    @abc.abstractmethod
    async def put(
        self, plugin_id: str, connection_id: str | None, key: str, value: Any, *, fence: LeaseFence | None = None
    ) -> None:
        """Set (None deletes); StateLimitError beyond the limits, changing nothing.

        With a `fence` (per-connection values only), only while its node holds the
        connection's lease at an epoch not newer than the fence's (FencedError otherwise).
        """

    @abc.abstractmethod
    async def drop(self, plugin_id: str, connection_id: str | None = None) -> int:
        """Forget every value of one scope (or of the whole plugin when `connection_id` is None); count."""


# ---------------------------------------------------------------- nodes and connection leases (SPEC 10)


class NodeRecord(_Record, frozen=True):
    """A host's heartbeat row: live while `expires_at` is in the future."""

    node_id: str
    started_at: float
    heartbeat_at: float
    expires_at: float
    info: dict[str, Any]


class Lease(_Record, frozen=True):
    """Who serves a connection. `node_id` None: nobody (released); `epoch` grows on every change of owner."""

    connection_id: str
    node_id: str | None
    epoch: int
    expires_at: float


class LeaseFence(msgspec.Struct, frozen=True):
    """A per-connection write's claim to be made by the lease holder (`epoch` None: any epoch of that holder)."""

    node_id: str
    epoch: int | None = None


def check_fence(lease: Lease | None, fence: LeaseFence, connection_id: str) -> None:
    """SPEC 10 fencing as one rule for every backend: the writer holds the lease, at no older epoch."""
    if lease is None or lease.node_id != fence.node_id:
        epoch = lease.epoch if lease is not None else 0
        raise FencedError(f"this host no longer holds connection {connection_id} (epoch {epoch})", epoch)
    if fence.epoch is not None and fence.epoch < lease.epoch:
        raise FencedError(
            f"connection {connection_id} moved on (epoch {lease.epoch}, this write carries {fence.epoch})", lease.epoch
        )


class LeaseStore(abc.ABC):
    """Nodes (heartbeats) and connection leases, shared by every host of one database."""

    @abc.abstractmethod
    async def heartbeat(self, node_id: str, ttl: float, info: dict[str, Any] | None = None) -> NodeRecord:
        """Create or refresh `node_id`'s row, live for `ttl` seconds from now."""

    @abc.abstractmethod
    async def nodes(self) -> list[NodeRecord]:
        """Every node row (live or not yet pruned), by node id."""

    @abc.abstractmethod
    async def leave(self, node_id: str) -> int:
        """A clean stop: release the node's leases and remove its row, at once; the leases released."""

    @abc.abstractmethod
    async def prune_nodes(self, older_than: float) -> int:
        """Remove rows of nodes whose heartbeat ran out `older_than` seconds ago or more; count."""

    @abc.abstractmethod
    async def leases(self, node_id: str | None = None) -> list[Lease]:
        """Every lease row (or `node_id`'s), by connection id."""

    @abc.abstractmethod
    async def get(self, connection_id: str) -> Lease | None: ...

    @abc.abstractmethod
    async def acquire(self, node_id: str, connection_ids: Sequence[str], ttl: float) -> list[Lease]:
        """Take each lease that is free, expired or already `node_id`'s; the ones now held (epoch + 1 on a new owner)."""

    @abc.abstractmethod
    async def take(self, node_id: str, connection_id: str, ttl: float) -> Lease:
        """Take the lease whoever holds it (a fresh login on this host); epoch + 1 unless it was already ours."""

    @abc.abstractmethod
    async def renew(self, node_id: str, ttl: float) -> list[Lease]:
        """Extend every lease `node_id` still holds to `now + ttl`; those leases."""

    @abc.abstractmethod
    async def release(self, node_id: str, connection_ids: Sequence[str]) -> int:
        """Give up those of `node_id`'s leases (others may take them at once); count."""


class Listener(abc.ABC):
    """Wake-ups for one topic (`leases`, `registry`): another host changed something worth looking at."""

    @abc.abstractmethod
    async def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a notice; True when one came."""


class LocalNotices:
    """Notices within one process (the embedded stores: one host, so no one else to hear)."""

    def __init__(self) -> None:
        self._listeners: dict[str, set[_LocalListener]] = {}

    def publish(self, topic: str) -> None:
        for listener in self._listeners.get(topic, ()):
            listener.notify()

    @asynccontextmanager
    async def listen(self, topic: str) -> AsyncIterator[Listener]:
        listener = _LocalListener()
        self._listeners.setdefault(topic, set()).add(listener)
        try:
            yield listener
        finally:
            self._listeners[topic].discard(listener)


class _LocalListener(Listener):
    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            await self._event.wait()
        came = self._event.is_set()
        if came:
            self._event = anyio.Event()
        return came


# ---------------------------------------------------------------- sidecar mode (SPEC 11)


def event_conversation(event: BridgeEvent) -> str:
    """The conversation of an event, for ordering: `{connectionId}:{peerType}:{peerId}` (+ `:{threadId}`)."""
    base = f"{event.connection_id}:{event.peer_type}:{event.peer_id}"
    return f"{base}:{event.thread_id}" if event.thread_id else base


class ForwardEntry(_Record, frozen=True):
    """One event a sidecar forwards to its application's bridge; `attempts` counts the deliveries tried."""

    id: int
    connection_id: str
    conversation: str
    event: BridgeEvent
    status: OutboxStatus
    attempts: int
    next_attempt_at: float
    claimed_until: float | None
    last_error: str | None
    created_at: float
    updated_at: float


class ForwardQueueStore(abc.ABC):
    """Durable queue of inbound events on their way to the application (a sidecar's, SPEC 11).

    Unique by `connectionId + eventId` (a plugin's repeated event is not queued
    twice), ordered per `event_conversation`, with the queue model of this module:
    claims are leases, `attempts` counts the claims. Delivered entries stay `sent`
    (so a late repeat is still known) until `prune`.
    """

    @abc.abstractmethod
    async def enqueue(self, event: BridgeEvent) -> bool:
        """Queue the event as received; False (nothing changes) when its `connectionId + eventId` is known."""

    @abc.abstractmethod
    async def claim_ready(self, limit: int = 16, *, lease: float | None = None) -> list[ForwardEntry]: ...

    @abc.abstractmethod
    async def release_claims(self) -> int:
        """Make every claimed entry claimable now (only for the sole consumer, at its start); count."""

    @abc.abstractmethod
    async def mark_sent(self, entry_id: int) -> bool:
        """The application accepted it; False when the entry is no longer live."""

    @abc.abstractmethod
    async def retry(self, entry_id: int, error: str, delay: float) -> bool:
        """Back to pending, due `delay` seconds from now; its conversation waits for it."""

    @abc.abstractmethod
    async def dead_letter(self, entry_id: int, error: str) -> bool:
        """Give up (the application refuses it for good): kept visible; its conversation moves on."""

    @abc.abstractmethod
    async def get(self, entry_id: int) -> ForwardEntry | None: ...

    @abc.abstractmethod
    async def list_dead(self, limit: int = 100) -> list[ForwardEntry]: ...

    @abc.abstractmethod
    async def pending_count(self) -> int:
        """Entries not yet delivered (pending or claimed): the backlog."""

    @abc.abstractmethod
    async def dead_count(self) -> int: ...

    @abc.abstractmethod
    async def prune(self, retention: float = DEDUPE_RETENTION) -> int:
        """Remove `sent` entries last updated `retention` seconds ago or more; count."""


class SendBegin(_Record, frozen=True):
    """What a sidecar does with a `/send`: `should_send` for new/stale/retry; `result` of a completed one."""

    outcome: BeginOutcome
    record: DedupeRecord
    result: dict[str, Any] | None = None

    @property
    def should_send(self) -> bool:
        return self.outcome in ("new", "stale", "retry")


class SendDedupeStore(abc.ABC):
    """A sidecar's `/send` dedupe by `connectionId + requestId` (SPEC 11): the rules of `decide_begin`
    (the request id in `event_id`), keeping each completed send's result for its duplicates."""

    ttl: float
    retention: float

    @abc.abstractmethod
    async def begin(self, connection_id: str, request_id: str) -> SendBegin:
        """Record a send and say what to do with it (atomic: one caller gets `new`)."""

    @abc.abstractmethod
    async def complete(self, key: str, result: dict[str, Any]) -> bool: ...

    @abc.abstractmethod
    async def fail(self, key: str, error: str) -> bool:
        """The send did not complete: the next delivery of the request sends again."""

    @abc.abstractmethod
    async def prune(self, retention: float | None = None) -> int:
        """Remove completed records not updated for `retention` seconds (default: the store's); count."""


# ---------------------------------------------------------------- facade


class Store:
    """All areas of one store; `await store.aclose()` (or `async with`) when done.

    `shared` tells whether several hosts may use it at once (PostgreSQL); the
    embedded stores (`memory://`, `sqlite:///`) are single-host (SPEC 10).
    """

    def __init__(
        self,
        *,
        url: str,
        bridge_dedupe: BridgeDedupeStore,
        message_dedupe: MessageDedupeStore,
        inbox: InboxStore,
        outbox: OutboxStore,
        connections: ConnectionStore,
        sessions: ConnectorSessionStore,
        kv: KeyValueStore,
        pipeline: PipelineStore,
        plugin_state: PluginStateStore,
        leases: LeaseStore,
        listen: Callable[[str], AbstractAsyncContextManager[Listener]],
        close: Callable[[], Awaitable[None]],
        shared: bool = False,
        forward: ForwardQueueStore | None = None,
        send_dedupe: SendDedupeStore | None = None,
    ) -> None:
        self.url = url
        self.bridge_dedupe = bridge_dedupe
        self.message_dedupe = message_dedupe
        self.inbox = inbox
        self.outbox = outbox
        self.connections = connections
        self.sessions = sessions
        self.kv = kv
        self.pipeline = pipeline
        self.plugin_state = plugin_state
        self.leases = leases
        # `async with store.listen("leases") as listener: await listener.wait(3.0)`
        self.listen = listen
        # True: several hosts share this store (SPEC 10: leases, owned claims, a shared registry)
        self.shared = shared
        # sidecar mode's areas (SPEC 11): a backend without them cannot be a sidecar's store
        self._forward = forward
        self._send_dedupe = send_dedupe
        self._close = close
        self._closed = False

    @property
    def forward(self) -> ForwardQueueStore:
        if self._forward is None:
            raise StoreError(f"{safe_url(self.url)} has no sidecar forward queue; use sqlite:/// or memory://")
        return self._forward

    @property
    def send_dedupe(self) -> SendDedupeStore:
        if self._send_dedupe is None:
            raise StoreError(f"{safe_url(self.url)} has no sidecar send dedupe; use sqlite:/// or memory://")
        return self._send_dedupe

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"Store({safe_url(self.url)!r})"


def safe_url(url: str) -> str:
    """`url` with any password masked, for logs and reprs."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"
