"""Durable state of the runtime behind one async interface (see `base`).

    store = await open_store("sqlite:///state/state.db", clock=clock, cipher=cipher)
    async with store:
        begin, entry = await store.pipeline.accept_event(connection_id, event_id, message)

URLs: `memory://` (an in-memory SQLite database: tests, throwaway runtimes), `sqlite:///PATH` (relative PATH) or
`sqlite:////abs/PATH` (the embedded default); `postgresql://` is reserved.
"""

from __future__ import annotations

from plugin_host.clock import Clock, SystemClock

from ..crypto import CredentialCipher
from .base import (
    DEDUPE_IN_PROGRESS_TTL,
    DEDUPE_RETENTION,
    DEFAULT_LEASE,
    RETRY_AFTER_SECONDS,
    BeginOutcome,
    BeginResult,
    BridgeDedupeStore,
    ConnectionRecord,
    ConnectionStore,
    ConnectorSessionRecord,
    ConnectorSessionStore,
    DedupeRecord,
    Delivery,
    ForwardEntry,
    ForwardQueueStore,
    InboxEntry,
    InboxStore,
    KeyValueStore,
    MessageDedupeStore,
    NotFoundError,
    OutboxEntry,
    OutboxStore,
    PipelineStore,
    PluginStateStore,
    SendBegin,
    SendDedupeStore,
    StateLimitError,
    Store,
    StoreError,
    dedupe_key,
    event_conversation,
    outbox_conversation,
    safe_url,
)


class UnsupportedStoreError(StoreError):
    """The store URL names a backend this version does not have."""


async def open_store(
    url: str,
    *,
    clock: Clock | None = None,
    cipher: CredentialCipher | None = None,
    dedupe_ttl: float = DEDUPE_IN_PROGRESS_TTL,
    retention: float = DEDUPE_RETENTION,
    lease: float = DEFAULT_LEASE,
) -> Store:
    """Open (and migrate) the store at `url`.

    `cipher` encrypts connection credentials (without one, credential calls fail);
    `dedupe_ttl` and `retention` are the bridge dedupe's in-progress window and the
    retention of completed dedupe records and seen message ids (SPEC 6.3); `lease`
    is how long a claimed inbox/outbox entry is held before it is handed out again.
    """
    clock = clock or SystemClock()
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if sep and scheme == "memory":
        # the same SQL as the embedded store, in memory: two backends cannot drift apart
        from .sqlite import open_sqlite_store

        return open_sqlite_store(
            "memory://", ":memory:", clock=clock, cipher=cipher, dedupe_ttl=dedupe_ttl, retention=retention, lease=lease
        )
    if sep and scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise StoreError(
                f"invalid SQLite store URL {safe_url(url)!r}: "
                "use sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        from .sqlite import open_sqlite_store

        return open_sqlite_store(
            url, rest[1:], clock=clock, cipher=cipher, dedupe_ttl=dedupe_ttl, retention=retention, lease=lease
        )
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        raise UnsupportedStoreError(
            f"PostgreSQL stores are not yet supported ({safe_url(url)!r}); use sqlite:///PATH or memory://"
        )
    raise UnsupportedStoreError(
        f"unknown store URL {safe_url(url)!r}: expected sqlite:///PATH, memory:// (postgresql:// is planned)"
    )


__all__ = [
    "DEDUPE_IN_PROGRESS_TTL",
    "DEDUPE_RETENTION",
    "DEFAULT_LEASE",
    "RETRY_AFTER_SECONDS",
    "BeginOutcome",
    "BeginResult",
    "BridgeDedupeStore",
    "ConnectionRecord",
    "ConnectionStore",
    "ConnectorSessionRecord",
    "ConnectorSessionStore",
    "DedupeRecord",
    "Delivery",
    "ForwardEntry",
    "ForwardQueueStore",
    "InboxEntry",
    "InboxStore",
    "KeyValueStore",
    "MessageDedupeStore",
    "NotFoundError",
    "OutboxEntry",
    "OutboxStore",
    "PipelineStore",
    "PluginStateStore",
    "SendBegin",
    "SendDedupeStore",
    "StateLimitError",
    "Store",
    "StoreError",
    "UnsupportedStoreError",
    "dedupe_key",
    "event_conversation",
    "open_store",
    "outbox_conversation",
]
