"""Durable state of the runtime behind one async interface (see `base`).

    store = await open_store("sqlite:///state/state.db", clock=clock, cipher=cipher)
    async with store:
        begin, entry = await store.pipeline.accept_event(connection_id, event_id, message)

URLs: `memory://` (an in-memory SQLite database: tests, throwaway runtimes), `sqlite:///PATH` (relative PATH) or
`sqlite:////abs/PATH` (the embedded default), both single-host; `postgresql://user:password@host:port/db`
(also `postgres://`; libpq's query parameters pass through) for several hosts on one database (SPEC 10).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
    FencedError,
    ForwardEntry,
    ForwardQueueStore,
    InboxEntry,
    InboxStore,
    KeyValueStore,
    Lease,
    LeaseFence,
    LeaseStore,
    Listener,
    MessageDedupeStore,
    NodeRecord,
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


async def open_application_store(
    url: str, *, clock: Clock | None = None, home: Path | None = None, secret_key: str | None = None, **options: Any
) -> Store:
    """The store of a runtime or sidecar at `url`, with its credentials cipher.

    The key comes from `secret_key`, else `CHANNEL_RUNTIME_SECRET_KEY`, else `<home>/secret-key`
    (created when missing; `home` defaults to the SQLite file's folder). Only a store with
    neither a key nor a place for one (`memory://` without a home) gets a throwaway key:
    its credentials live as long as the process anyway.
    """
    from ..crypto import SECRET_KEY_ENV, CredentialCipher, load_cipher

    env = dict(os.environ)
    if secret_key:
        env[SECRET_KEY_ENV] = secret_key
    key_home = home or (Path(url.removeprefix("sqlite:///")).parent if url.startswith("sqlite:///") else None)
    if key_home is None and SECRET_KEY_ENV not in env:
        cipher = CredentialCipher.ephemeral()
    else:
        cipher = load_cipher(key_home or Path("."), env)
    store = await open_store(url, clock=clock, cipher=cipher, **options)
    if store.shared:
        try:
            await _check_shared_key(store, cipher)
        except BaseException:
            await store.aclose()
            raise
    return store


_KEY_CHECK = "channel_runtime.secret_key_check"  # the kv key other hosts wrote: keep its name


async def _check_shared_key(store: Store, cipher: CredentialCipher) -> None:
    """Several hosts decrypt each other's credentials: refuse to start with a key that differs from theirs."""
    from ..crypto import SECRET_KEY_ENV, CredentialDecryptError

    token = await store.kv.get(_KEY_CHECK)
    if token is None:
        await store.kv.set(_KEY_CHECK, cipher.encrypt({"check": "channel-runtime"}).decode("ascii"))
        return
    try:
        cipher.decrypt(str(token).encode("ascii"))
    except CredentialDecryptError:
        raise StoreError(
            f"this host's credentials key differs from the other hosts' of {store!r}: "
            f"set {SECRET_KEY_ENV} to the same key on every host"
        ) from None


def is_shared_url(url: str) -> bool:
    """True for the store several hosts share (`postgresql://`, SPEC 10); the embedded ones are single-host."""
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.lower() in ("postgresql", "postgres")


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
    if sep and scheme in ("postgresql", "postgres"):
        try:
            from .postgres import open_postgres_store
        except ImportError as exc:  # the driver is the `postgresql` extra
            raise UnsupportedStoreError(
                f"{safe_url(url)!r} needs the PostgreSQL driver: pip install 'channel-runtime[postgresql]' ({exc})"
            ) from None
        return await open_postgres_store(
            url, clock=clock, cipher=cipher, dedupe_ttl=dedupe_ttl, retention=retention, lease=lease
        )
    if scheme.startswith(("postgresql+", "postgres+")):
        raise UnsupportedStoreError(
            f"unknown store URL {safe_url(url)!r}: write postgresql://... (the driver is psycopg, built in)"
        )
    raise UnsupportedStoreError(
        f"unknown store URL {safe_url(url)!r}: expected sqlite:///PATH, memory:// or postgresql://..."
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
    "FencedError",
    "ForwardEntry",
    "ForwardQueueStore",
    "InboxEntry",
    "InboxStore",
    "KeyValueStore",
    "Lease",
    "LeaseFence",
    "LeaseStore",
    "Listener",
    "MessageDedupeStore",
    "NodeRecord",
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
    "is_shared_url",
    "event_conversation",
    "open_application_store",
    "open_store",
    "outbox_conversation",
]
