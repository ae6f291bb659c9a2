"""`postgresql://`: the store that several hosts share (SPEC 10), through psycopg 3.

One connection pool per store (`psycopg_pool.AsyncConnectionPool`, autocommit
connections, dict rows); each method is one transaction on one pooled
connection, shielded from cancellation (a write is done or not, never cut in
half by a cancelled caller), bounded by `OPERATION_TIMEOUT` and the server's
`statement_timeout`.

What is shared with the SQLite store, so the backends cannot drift: the record
types and every rule that is a decision (`base.decide_begin`, `base.check_fence`),
the row-to-record functions (`rows`), the queue model (the `head` flag marking the
earliest live entry of a conversation) and the contract suite, which runs every
store test on memory, SQLite and PostgreSQL. What is PostgreSQL's own:

- queues: claims take conversation heads `FOR UPDATE SKIP LOCKED`, so hosts never
  wait for each other nor take the same entry; every write that can move a
  conversation's head (enqueue, ack, dead letter, sent) first takes a
  transaction-scoped advisory lock on that conversation, so the "earliest live
  entry" each of them reads is the committed truth (READ COMMITTED: a statement
  after the lock sees every commit before it);
- bridge dedupe: a new event is one `INSERT ... ON CONFLICT DO NOTHING` chain
  (dedupe record, message id, inbox entry in one statement); an existing record
  is read `FOR UPDATE` and decided by `decide_begin`, so two hosts never both
  process one delivery;
- group commit: a commit is an fsync, so the per-message writes (`accept_event`,
  `finish_inbound`, `mark_sent`) share transactions (`Database.grouped`): while
  one group's transaction is in flight, the calls arriving meanwhile gather into
  the next. A group takes every conversation lock its calls need in one
  statement, in one global order (the locks' keys sorted), before any of its
  work, so two hosts' groups never wait for each other in a cycle; every
  transaction that takes more than one conversation lock goes that way. Nobody
  returns before its own commit; when a group fails, nothing of it was
  committed and each call runs again alone, so only a call that fails by itself
  fails its caller;
- notices: `LISTEN`/`NOTIFY` wake other hosts when leases or the plugin registry
  change (they also poll, so a lost notice only delays).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import msgspec
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from plugin_host.clock import Clock
from plugin_host.protocol import STATE_KEYS_PER_CONNECTION, STATE_VALUE_MAX_BYTES, BridgeEvent

from ..budget import DeferReason, PeerWindow
from ..crypto import CredentialCipher
from ..messages import InboundMessage
from . import rows
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
    DeadReason,
    DedupeRecord,
    Delivery,
    DeliveryState,
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
    Page,
    PeerCall,
    PipelineStore,
    PluginStateStore,
    SendBegin,
    SendDedupeStore,
    StateLimitError,
    Store,
    StoreError,
    check_connection_status,
    check_defer_reason,
    check_fence,
    check_session_status,
    clean_view,
    decide_begin,
    dedupe_key,
    error_text,
    event_conversation,
    new_connection_id,
    new_session_id,
    outbox_conversation,
    payload_peer_id,
    require_cipher,
    safe_url,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
Conn = psycopg.AsyncConnection[dict[str, Any]]

POOL_MAX = 8
POOL_TIMEOUT = 30.0  # seconds to wait for a free pooled connection
CONNECT_TIMEOUT = 10  # seconds for the first connection (libpq's connect_timeout)
OPERATION_TIMEOUT = 60.0  # one store call, end to end
STATEMENT_TIMEOUT_MS = 30_000
NOTICE_PREFIX = "channel_runtime_"
MIGRATION_LOCK = 0x43524D49  # advisory lock key: hosts starting together migrate one at a time
GROUP_MAX = 64  # calls sharing one transaction at most (bounds its locks and its length)

# MIGRATIONS[n] takes the schema from version n to n + 1; append, never edit a released one.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE bridge_dedupe (
            dedupe_key text PRIMARY KEY,
            connection_id text NOT NULL,
            event_id text NOT NULL,
            status text NOT NULL CHECK (status IN ('processing', 'completed', 'failed')),
            first_seen_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            delivery_attempts integer NOT NULL,
            message_id text NOT NULL DEFAULT '',
            last_error text
        )""",
        "CREATE INDEX bridge_dedupe_by_status ON bridge_dedupe (status, updated_at)",
        """CREATE TABLE message_dedupe (
            channel_id text NOT NULL,
            message_id text NOT NULL,
            seen_at double precision NOT NULL,
            PRIMARY KEY (channel_id, message_id)
        )""",
        "CREATE INDEX message_dedupe_by_seen ON message_dedupe (seen_at)",
        *(
            statement
            for table, key in (("inbox", "item_key text NOT NULL"), ("outbox", "item_key text NOT NULL UNIQUE"))
            for statement in (
                # identity ids are never reused, so a late ack cannot hit a newer entry
                f"""CREATE TABLE {table} (
                    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    channel_id text NOT NULL,
                    conversation text NOT NULL,
                    {key},
                    payload text NOT NULL,
                    status text NOT NULL CHECK (status IN ({"'pending', 'claimed', 'dead'" if table == "inbox" else "'pending', 'claimed', 'sent', 'dead'"})),
                    attempts integer NOT NULL DEFAULT 0,
                    next_attempt_at double precision NOT NULL,
                    claimed_until double precision,
                    claimed_by text,
                    last_error text,
                    result text,
                    created_at double precision NOT NULL,
                    updated_at double precision NOT NULL,
                    head boolean NOT NULL DEFAULT false
                )""",
                f"CREATE INDEX {table}_live ON {table} (channel_id, conversation, id)"
                " WHERE status IN ('pending', 'claimed')",
                f"CREATE INDEX {table}_dead ON {table} (id) WHERE status = 'dead'",
                f"CREATE INDEX {table}_heads ON {table} (id) WHERE head",
                f"CREATE INDEX {table}_claims ON {table} (claimed_by) WHERE status = 'claimed'",
            )
        ),
        "CREATE INDEX outbox_sent ON outbox (updated_at) WHERE status = 'sent'",
        """CREATE TABLE connections (
            connection_id text PRIMARY KEY,
            kind text NOT NULL,
            plugin_id text NOT NULL,
            channel_id text NOT NULL,
            account_id text NOT NULL DEFAULT '',
            display_name text NOT NULL DEFAULT '',
            options text NOT NULL DEFAULT '{}',
            status text NOT NULL,
            error text,
            credentials bytea,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            seq bigint GENERATED ALWAYS AS IDENTITY
        )""",
        """CREATE TABLE connector_sessions (
            session_id text PRIMARY KEY,
            connection_id text NOT NULL REFERENCES connections (connection_id) ON DELETE CASCADE,
            kind text NOT NULL,
            plugin_id text NOT NULL,
            status text NOT NULL,
            view text NOT NULL DEFAULT '{}',
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            seq bigint GENERATED ALWAYS AS IDENTITY
        )""",
        "CREATE INDEX connector_sessions_by_connection ON connector_sessions (connection_id)",
        """CREATE TABLE kv (
            key text PRIMARY KEY,
            value text NOT NULL,
            updated_at double precision NOT NULL
        )""",
        """CREATE TABLE plugin_state (
            plugin_id text NOT NULL,
            scope text NOT NULL,
            key text NOT NULL,
            value text NOT NULL,
            updated_at double precision NOT NULL,
            PRIMARY KEY (plugin_id, scope, key)
        )""",
        """CREATE TABLE plugin_state_counts (
            plugin_id text NOT NULL,
            scope text NOT NULL,
            keys integer NOT NULL,
            PRIMARY KEY (plugin_id, scope)
        )""",
        """CREATE TABLE nodes (
            node_id text PRIMARY KEY,
            started_at double precision NOT NULL,
            heartbeat_at double precision NOT NULL,
            expires_at double precision NOT NULL,
            info text NOT NULL DEFAULT '{}'
        )""",
        """CREATE TABLE connection_leases (
            connection_id text PRIMARY KEY,
            node_id text,
            epoch bigint NOT NULL,
            expires_at double precision NOT NULL,
            updated_at double precision NOT NULL
        )""",
        "CREATE INDEX connection_leases_by_node ON connection_leases (node_id)",
        # the plugin registry and the plugin archives (SPEC 10: all state in the database)
        """CREATE TABLE plugins (
            id text PRIMARY KEY,
            enabled boolean NOT NULL DEFAULT false,
            active_version text,
            config text NOT NULL DEFAULT '{}',
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL
        )""",
        """CREATE TABLE plugin_versions (
            plugin_id text NOT NULL REFERENCES plugins (id) ON DELETE CASCADE,
            version text NOT NULL,
            sha256 text NOT NULL,
            source text NOT NULL,
            installed_at double precision NOT NULL,
            manifest text NOT NULL,
            archive bytea,
            PRIMARY KEY (plugin_id, version)
        )""",
        # one row: bumped by every registry change, so a host polls one number
        "CREATE TABLE registry_revision (id integer PRIMARY KEY CHECK (id = 1), revision bigint NOT NULL)",
        "INSERT INTO registry_revision (id, revision) VALUES (1, 0)",
    ),
    # sidecar mode (SPEC 11): events on their way to the application (the outbox's layout, `channel_id`
    # holds the connection id), and `/send` dedupe with each completed result
    (
        """CREATE TABLE forward_queue (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            channel_id text NOT NULL,
            conversation text NOT NULL,
            item_key text NOT NULL UNIQUE,
            payload text NOT NULL,
            status text NOT NULL CHECK (status IN ('pending', 'claimed', 'sent', 'dead')),
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_at double precision NOT NULL,
            claimed_until double precision,
            claimed_by text,
            last_error text,
            result text,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            head boolean NOT NULL DEFAULT false
        )""",
        "CREATE INDEX forward_queue_live ON forward_queue (channel_id, conversation, id)"
        " WHERE status IN ('pending', 'claimed')",
        "CREATE INDEX forward_queue_heads ON forward_queue (id) WHERE head",
        "CREATE INDEX forward_queue_dead ON forward_queue (id) WHERE status = 'dead'",
        "CREATE INDEX forward_queue_sent ON forward_queue (updated_at) WHERE status = 'sent'",
        """CREATE TABLE send_dedupe (
            dedupe_key text PRIMARY KEY,
            connection_id text NOT NULL,
            event_id text NOT NULL,
            status text NOT NULL CHECK (status IN ('processing', 'completed', 'failed')),
            first_seen_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            delivery_attempts integer NOT NULL,
            message_id text NOT NULL DEFAULT '',
            last_error text,
            result text
        )""",
        "CREATE INDEX send_dedupe_by_status ON send_dedupe (status, updated_at)",
    ),
    # deliveries tell the truth (SPEC 6.4): deferral, reasons, attempts and sent times; the peers'
    # reply windows; claims walk an index of pending heads by due time (the SQLite migration's twin)
    (
        *(
            f"ALTER TABLE {table} ADD COLUMN {column}"
            for table in ("inbox", "outbox", "forward_queue")
            for column in ("peer_id text NOT NULL DEFAULT ''", "reason text")
        ),
        *(
            f"ALTER TABLE outbox ADD COLUMN {column}"
            for column in (
                "defer_reason text",
                "deferred_at double precision",
                "provider_message_id text",
                "sent_at double precision",
                "first_attempt_at double precision",
                "last_attempt_at double precision",
            )
        ),
        "UPDATE outbox SET peer_id = COALESCE(payload::jsonb #>> '{target,peerId}', '')",
        "UPDATE inbox SET peer_id = COALESCE(payload::jsonb ->> 'peerId', '')",
        "UPDATE forward_queue SET peer_id = COALESCE(payload::jsonb ->> 'peerId', '')",
        "UPDATE outbox SET provider_message_id = result::jsonb ->> 'providerMessageId', sent_at = updated_at"
        " WHERE status = 'sent'",
        *(
            f"UPDATE {table} SET reason = 'failed' WHERE status = 'dead'"
            for table in ("inbox", "outbox", "forward_queue")
        ),
        *(
            statement
            for table in ("inbox", "outbox", "forward_queue")
            for statement in (
                f"CREATE INDEX {table}_due ON {table} (next_attempt_at, id) WHERE head AND status = 'pending'",
                f"CREATE INDEX {table}_lapsing ON {table} (claimed_until) WHERE status = 'claimed'",
            )
        ),
        "CREATE INDEX outbox_created ON outbox (created_at, id)",
        "CREATE INDEX outbox_deferred ON outbox (channel_id, defer_reason, peer_id) WHERE defer_reason IS NOT NULL",
        """CREATE TABLE peers (
            channel_id text NOT NULL,
            peer_id text NOT NULL,
            last_inbound_at double precision,
            replies integer NOT NULL DEFAULT 0,
            closed boolean NOT NULL DEFAULT false,
            PRIMARY KEY (channel_id, peer_id)
        )""",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode("utf-8")


def _unjson(text: str | None) -> Any:
    return None if text is None else msgspec.json.decode(text)


def notify_sql(topic: str) -> str:
    return f"NOTIFY {NOTICE_PREFIX}{topic}"


# ---------------------------------------------------------------- the database


class Locks(msgspec.Struct, frozen=True):
    """The conversation locks one grouped call needs (see `_LOCKS_SQL`)."""

    names: tuple[str, ...] = ()  # `table<US>channel<US>conversation` (the text `_CONVERSATION_KEY` hashes)
    # or `peers<US>channel<US>peer`
    inbox: tuple[int, ...] = ()  # inbox entries whose conversation is locked
    outbox: tuple[int, ...] = ()  # outbox entries whose conversation and peer are locked


def lock_name(table: str, channel_id: str, conversation: str) -> str:
    return f"{table}\x1f{channel_id}\x1f{conversation}"


# every lock of a group (or of one multi-lock call) in one statement, in the keys' order: PostgreSQL
# evaluates the volatile lock function above the sort, so the locks are taken in that order. Besides the
# conversations, a group writing `peers` rows (accepts, sends) locks each peer first: the rows of two
# groups are then never taken in crossing orders
_LOCKS_SQL = (
    "SELECT pg_advisory_xact_lock(k) FROM (SELECT hashtextextended(x, 0) AS k FROM unnest(%(names)s::text[]) AS x"
    " UNION SELECT hashtextextended('inbox' || chr(31) || channel_id || chr(31) || conversation, 0)"
    " FROM inbox WHERE id = ANY(%(inbox)s::bigint[])"
    " UNION SELECT hashtextextended('outbox' || chr(31) || channel_id || chr(31) || conversation, 0)"
    " FROM outbox WHERE id = ANY(%(outbox)s::bigint[])"
    " UNION SELECT hashtextextended('peers' || chr(31) || channel_id || chr(31) || peer_id, 0)"
    " FROM outbox WHERE id = ANY(%(outbox)s::bigint[])) AS keys ORDER BY k"
)


async def take_locks(conn: Conn, locks: Sequence[Locks]) -> None:
    await conn.execute(
        _LOCKS_SQL,
        {
            "names": sorted({n for lock in locks for n in lock.names}),
            "inbox": sorted({i for lock in locks for i in lock.inbox}),
            "outbox": sorted({i for lock in locks for i in lock.outbox}),
        },
    )


class _Call:
    """One `Database.grouped` call waiting for (or leading) its shared transaction."""

    def __init__(
        self,
        work: Callable[[Conn], Awaitable[Any]],
        locks: Locks,
        recover: Callable[[Conn, Exception], Awaitable[None]] | None,
    ) -> None:
        self.work = work
        self.locks = locks
        self.recover = recover
        self.result: Any = None
        self.error: BaseException | None = None
        self.lead = False  # this caller runs the next group
        self.wake = anyio.Event()  # finished, or asked to lead


class Group:
    """The calls of one kind gathering for a shared transaction; one such transaction runs at a time."""

    def __init__(self) -> None:
        self.waiting: list[_Call] = []
        self.busy = False
        self.sizes: list[int] = []  # how many calls each transaction carried (the last few, for tests and benches)
        self.failures = 0  # shared transactions that failed (their calls then ran alone)


class Database:
    """A connection pool with the migrations, transactions and group commit of one PostgreSQL database."""

    def __init__(self, url: str, *, max_size: int = POOL_MAX) -> None:
        self.url = url
        self.pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            _conninfo(url),
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True, "row_factory": dict_row},
            configure=self._configure,
            timeout=POOL_TIMEOUT,
            open=False,
            name="channel-runtime",
        )

    @staticmethod
    async def _configure(conn: Conn) -> None:
        await conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")

    async def open(self) -> None:
        """Connect, migrate, then fill the pool; a server that cannot be reached fails at once, clearly."""
        try:
            conn = await psycopg.AsyncConnection.connect(
                _conninfo(self.url), autocommit=True, row_factory=dict_row, connect_timeout=CONNECT_TIMEOUT
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {safe_url(self.url)}: {_first_line(exc)}") from None
        try:
            await self._migrate(conn)
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()
        try:
            await self.pool.open(wait=True, timeout=POOL_TIMEOUT)
        except BaseException:
            await self.pool.close()
            raise

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        """A pooled connection (autocommit) for the length of the block, shielded and time-bounded."""
        with anyio.CancelScope(shield=True), anyio.fail_after(OPERATION_TIMEOUT):
            async with self.pool.connection() as conn:
                yield conn

    async def run(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """`work(conn)` in one transaction of its own."""
        async with self.connection() as conn, conn.transaction():
            return await work(conn)

    async def run_pipelined(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """`run` in pipeline mode: statements whose results `work` does not read yet (BEGIN, locks, ...)
        travel with the next one it reads, so the transaction costs fewer round trips (and wake-ups)."""
        async with self.connection() as conn, conn.pipeline(), conn.transaction():
            return await work(conn)

    async def run_or_recover(
        self, work: Callable[[Conn], Awaitable[T]], recover: Callable[[Conn, Exception], Awaitable[None]]
    ) -> T:
        """`work(conn)` in one transaction; when it fails, `recover(conn, exc)` in one of its own, then the error."""
        try:
            return await self.run(work)
        except Exception as exc:
            await self._record_failure(recover, exc)
            raise

    async def _record_failure(self, recover: Callable[[Conn, Exception], Awaitable[None]], exc: Exception) -> None:
        try:
            await self.run(functools.partial(_recover_alone, recover, error=exc))
        except Exception:
            log.exception("recording a failed store operation failed")

    async def grouped(
        self,
        group: Group,
        work: Callable[[Conn], Awaitable[T]],
        locks: Locks,
        recover: Callable[[Conn, Exception], Awaitable[None]] | None = None,
    ) -> T:
        """`work(conn)` after `locks`, in a transaction shared with the calls of `group` gathered meanwhile.

        Group commit: the first caller runs a transaction at once; the calls that
        arrive while it is in flight wait and then share the next one (led by the
        first of them), so under load one fsync carries many calls. `work` must
        not take conversation locks itself: the group takes all of them first,
        in one order. A caller returns only after the commit that carries its
        work. When a shared transaction fails, it committed nothing, and each of
        its calls runs again alone (`run_or_recover`): only a call that fails by
        itself fails its caller, and `recover` records that failure.
        """
        call = _Call(work, locks, recover)
        with anyio.CancelScope(shield=True):  # a cancelled caller must not leave its group without a leader
            group.waiting.append(call)
            if group.busy:
                await call.wake.wait()
            else:
                group.busy = True
                call.lead = True
                await anyio.sleep(0)  # one loop turn: the callers woken with this one (the last group's) join
            if call.lead:
                batch, group.waiting = group.waiting[:GROUP_MAX], group.waiting[GROUP_MAX:]
                try:
                    await self._run_group(group, batch)
                finally:
                    for other in batch:
                        other.wake.set()
                    if group.waiting:  # hand over: the first caller waiting leads the next transaction
                        group.waiting[0].lead = True
                        group.waiting[0].wake.set()
                    else:
                        group.busy = False
        if call.error is not None:
            raise call.error
        result: T = call.result
        return result

    async def _run_group(self, group: Group, batch: list[_Call]) -> None:
        group.sizes = [*group.sizes[-99:], len(batch)]
        if len(batch) > 1:
            try:
                async with self.connection() as conn, conn.pipeline(), conn.transaction():
                    await take_locks(conn, [call.locks for call in batch])
                    results = [await call.work(conn) for call in batch]
            except Exception as exc:
                group.failures += 1
                log.debug("a group of %d store calls failed (%s); each runs again alone", len(batch), exc)
            except BaseException as exc:
                for call in batch:
                    call.error = exc
                raise
            else:
                for call, result in zip(batch, results, strict=True):
                    call.result = result
                return
        for call in batch:  # nothing of the group was committed
            try:
                call.result = await self._alone(call)
            except Exception as exc:
                call.error = exc

    async def _alone(self, call: _Call) -> Any:
        async def work(conn: Conn) -> Any:
            await take_locks(conn, [call.locks])
            return await call.work(conn)

        if call.recover is None:
            return await self.run_pipelined(work)
        try:
            return await self.run_pipelined(work)
        except Exception as exc:
            await self._record_failure(call.recover, exc)
            raise

    async def one(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> dict[str, Any] | None:
        async with self.connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchone()

    async def all(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        async with self.connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

    async def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        """One statement as its own transaction; the rows it changed."""
        async with self.connection() as conn:
            cur = await conn.execute(sql, params)
            return cur.rowcount

    @staticmethod
    async def _migrate(conn: Conn) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
            cur = await conn.execute("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
            row = await cur.fetchone()
            current = int(row["v"]) if row else 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"the store's schema version {current} is newer than this channel-runtime "
                    f"understands ({SCHEMA_VERSION}); upgrade channel-runtime"
                )
            for version in range(current, SCHEMA_VERSION):
                for statement in MIGRATIONS[version]:
                    await conn.execute(statement)  # our literals, not input
                await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version + 1,))

    @asynccontextmanager
    async def listen(self, topic: str) -> AsyncIterator[Listener]:
        """`LISTEN` on a connection of its own (not from the pool) for as long as the block runs."""
        conn = await psycopg.AsyncConnection.connect(_conninfo(self.url), autocommit=True)
        try:
            await conn.execute(f"LISTEN {NOTICE_PREFIX}{topic}")  # our topic names
            yield _PgListener(conn)
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()


async def _recover_alone(
    recover: Callable[[Conn, Exception], Awaitable[None]], conn: Conn, *, error: Exception
) -> None:
    await recover(conn, error)


class _PgListener(Listener):
    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def wait(self, timeout: float) -> bool:
        if self._conn.closed:
            await anyio.sleep(timeout)  # the caller polls anyway
            return False
        came = False
        try:
            async for _ in self._conn.notifies(timeout=max(timeout, 0.001)):
                came = True
                break
            if came:
                # several notices in a burst count as one wake-up
                async for _ in self._conn.notifies(timeout=0.001):
                    pass
        except psycopg.Error as exc:
            log.warning("listening for store notices failed (%s); polling instead", exc)
            await self._conn.close()
        return came


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _conninfo(url: str) -> str:
    """psycopg takes `postgresql://` URLs; `postgres://` is the same scheme spelled short."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql://{rest}" if sep and scheme.lower() in ("postgres", "postgresql") else url


# ---------------------------------------------------------------- dedupe


async def _get_dedupe(
    conn: Conn, key: str, *, for_update: bool = False, table: str = "bridge_dedupe"
) -> DedupeRecord | None:
    sql = f"SELECT * FROM {table} WHERE dedupe_key = %s" + (" FOR UPDATE" if for_update else "")
    cur = await conn.execute(sql, (key,))
    row = await cur.fetchone()
    return None if row is None else rows.dedupe_record(row)


_DEDUPE_VALUES = (
    "%(dedupe_key)s, %(connection_id)s, %(event_id)s, %(status)s, %(first_seen_at)s, %(updated_at)s,"
    " %(delivery_attempts)s, %(message_id)s, %(last_error)s"
)
_DEDUPE_COLUMNS = (
    "dedupe_key, connection_id, event_id, status, first_seen_at, updated_at, delivery_attempts, message_id, last_error"
)


def _dedupe_params(record: DedupeRecord) -> dict[str, Any]:
    return {
        "dedupe_key": record.dedupe_key,
        "connection_id": record.connection_id,
        "event_id": record.event_id,
        "status": record.status,
        "first_seen_at": record.first_seen_at,
        "updated_at": record.updated_at,
        "delivery_attempts": record.delivery_attempts,
        "message_id": record.message_id,
        "last_error": record.last_error,
    }


async def _put_dedupe(conn: Conn, record: DedupeRecord, table: str = "bridge_dedupe") -> None:
    # a send record processing again forgets its old result
    forget = ", result = NULL" if table == "send_dedupe" else ""
    await conn.execute(
        f"INSERT INTO {table} ({_DEDUPE_COLUMNS}) VALUES ({_DEDUPE_VALUES})"
        " ON CONFLICT (dedupe_key) DO UPDATE SET status = excluded.status, first_seen_at = excluded.first_seen_at,"
        " updated_at = excluded.updated_at, delivery_attempts = excluded.delivery_attempts,"
        f" message_id = excluded.message_id, last_error = excluded.last_error{forget}",
        _dedupe_params(record),
    )


class PgBridgeDedupe(BridgeDedupeStore):
    def __init__(
        self, db: Database, clock: Clock, *, ttl: float = DEDUPE_IN_PROGRESS_TTL, retention: float = DEDUPE_RETENTION
    ) -> None:
        self._db = db
        self._clock = clock
        self.ttl = ttl
        self.retention = retention

    async def begin(self, connection_id: str, event_id: str, message_id: str = "") -> BeginResult:
        key = dedupe_key(connection_id, event_id)

        async def begin(conn: Conn) -> BeginResult:
            now = self._clock.time()
            _, fresh, _ = decide_begin(
                None, connection_id=connection_id, event_id=event_id, message_id=message_id, now=now, ttl=self.ttl
            )
            cur = await conn.execute(
                f"INSERT INTO bridge_dedupe ({_DEDUPE_COLUMNS}) VALUES ({_DEDUPE_VALUES})"
                " ON CONFLICT (dedupe_key) DO NOTHING",
                _dedupe_params(fresh),
            )
            if cur.rowcount:
                return BeginResult(outcome="new", record=fresh)
            outcome, record, changed = decide_begin(
                await _get_dedupe(conn, key, for_update=True),
                connection_id=connection_id,
                event_id=event_id,
                message_id=message_id,
                now=now,
                ttl=self.ttl,
            )
            if changed:
                await _put_dedupe(conn, record)
            return BeginResult(outcome=outcome, record=record)

        return await self._db.run(begin)

    async def complete(self, key: str) -> bool:
        return (
            await self._db.execute(
                "UPDATE bridge_dedupe SET status = 'completed', last_error = NULL, updated_at = %s"
                " WHERE dedupe_key = %s",
                (self._clock.time(), key),
            )
            > 0
        )

    async def fail(self, key: str, error: str) -> bool:
        return (
            await self._db.execute(
                "UPDATE bridge_dedupe SET status = 'failed', last_error = %s, updated_at = %s WHERE dedupe_key = %s",
                (error, self._clock.time(), key),
            )
            > 0
        )

    async def get(self, key: str) -> DedupeRecord | None:
        row = await self._db.one("SELECT * FROM bridge_dedupe WHERE dedupe_key = %s", (key,))
        return None if row is None else rows.dedupe_record(row)

    async def prune(self, retention: float | None = None) -> int:
        cutoff = self._clock.time() - (self.retention if retention is None else retention)
        return await self._db.execute(
            "DELETE FROM bridge_dedupe WHERE status = 'completed' AND updated_at <= %s", (cutoff,)
        )


class PgMessageDedupe(MessageDedupeStore):
    def __init__(self, db: Database, clock: Clock, *, retention: float = DEDUPE_RETENTION) -> None:
        self._db = db
        self._clock = clock
        self.retention = retention

    async def seen_or_mark(self, channel_id: str, message_id: str) -> bool:
        inserted = await self._db.execute(
            "INSERT INTO message_dedupe (channel_id, message_id, seen_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (channel_id, message_id) DO NOTHING",
            (channel_id, message_id, self._clock.time()),
        )
        return inserted == 0

    async def prune(self, retention: float | None = None) -> int:
        cutoff = self._clock.time() - (self.retention if retention is None else retention)
        return await self._db.execute("DELETE FROM message_dedupe WHERE seen_at <= %s", (cutoff,))


# ---------------------------------------------------------------- queues

_LIVE = "status IN ('pending', 'claimed')"  # spelled as in the partial indexes, so the planner uses them
# one conversation's lock key (inbox and outbox apart); collisions only serialise two conversations
_CONVERSATION_KEY = "hashtextextended({table} || chr(31) || {channel} || chr(31) || {conversation}, 0)"


class _Queue:
    """The inbox and the outbox: one table layout, one claim/retry/dead-letter logic (see the module doc).

    Invariant: `head` on exactly the earliest live entry of each conversation;
    every statement that can change which entry that is runs after
    `lock_sql`/`lock_entry_sql` in its transaction.
    """

    def __init__(self, db: Database, clock: Clock, table: str, lease: float) -> None:
        self.db = db
        self.clock = clock
        self.table = table
        self.lease = lease
        self._idle = True  # the last claim found nothing
        t = table
        self.lock_sql = "SELECT pg_advisory_xact_lock({})".format(
            _CONVERSATION_KEY.format(table=f"'{t}'", channel="%(channel)s", conversation="%(conversation)s")
        )
        self.lock_entry_sql = "SELECT pg_advisory_xact_lock({}) FROM {} WHERE id = %s".format(
            _CONVERSATION_KEY.format(table=f"'{t}'", channel="channel_id", conversation="conversation"), t
        )
        self.insert_values = (
            "%(channel)s, %(conversation)s, %(key)s, %(payload)s, %(peer)s, 'pending', 0, %(now)s, %(now)s, %(now)s,"
            f" NOT EXISTS (SELECT 1 FROM {t} WHERE channel_id = %(channel)s AND conversation = %(conversation)s"
            f" AND {_LIVE})"
        )
        self.insert_columns = (
            "channel_id, conversation, item_key, payload, peer_id, status, attempts, next_attempt_at, created_at,"
            " updated_at, head"
        )
        claim = (
            f"UPDATE {t} SET status = 'claimed', claimed_until = %(until)s, claimed_by = %(owner)s,"
            " attempts = attempts + 1, updated_at = %(now)s"
        )
        self.of_channels = "(%(channels)s::text[] IS NULL OR channel_id = ANY(%(channels)s::text[]))"
        # one statement, two index walks: claims whose holder vanished (rare), then due heads, earliest
        # first, as many as the first left room for (the two walk disjoint rows: claimed, pending)
        self._claim = (
            f"WITH lapsed AS ({claim} WHERE id IN (SELECT id FROM {t} WHERE status = 'claimed'"
            f" AND claimed_until <= %(now)s AND {self.of_channels} ORDER BY claimed_until LIMIT %(limit)s"
            " FOR UPDATE SKIP LOCKED) RETURNING *),"
            f" due AS ({claim} WHERE id IN (SELECT id FROM {t} WHERE head AND status = 'pending'"
            f" AND next_attempt_at <= %(now)s AND {self.of_channels} ORDER BY next_attempt_at, id"
            " LIMIT greatest(%(limit)s - (SELECT count(*) FROM lapsed), 0) FOR UPDATE SKIP LOCKED) RETURNING *)"
            " SELECT * FROM lapsed UNION ALL SELECT * FROM due"
        )
        # after the entry's own change: the next live entry of its conversation becomes the head
        self._promote = (
            f"promoted AS (UPDATE {t} SET head = true WHERE id = (SELECT x.id FROM {t} x JOIN done"
            " ON x.channel_id = done.channel_id AND x.conversation = done.conversation"
            f" WHERE x.status IN ('pending', 'claimed') AND x.id <> %(id)s ORDER BY x.id LIMIT 1) AND NOT head"
            " RETURNING 1)"
        )

    async def add(
        self,
        conn: Conn,
        channel_id: str,
        conversation: str,
        key: str,
        payload: str,
        peer_id: str,
        now: float,
        *,
        unique: bool,
        locked: bool = False,
    ) -> int | None:
        """Insert a pending entry; its id, or None when `unique` and `key` is already known.
        `locked`: the caller holds the conversation's lock already."""
        params = {
            "channel": channel_id,
            "conversation": conversation,
            "key": key,
            "payload": payload,
            "peer": peer_id,
            "now": now,
        }
        if not locked:
            await conn.execute(self.lock_sql, params)
        conflict = " ON CONFLICT (item_key) DO NOTHING" if unique else ""
        cur = await conn.execute(
            f"INSERT INTO {self.table} ({self.insert_columns}) VALUES ({self.insert_values}){conflict} RETURNING id",
            params,
        )
        row = await cur.fetchone()
        return None if row is None else int(row["id"])

    async def claim(
        self, limit: int, lease: float | None, owner: str | None, channels: Collection[str] | None = None
    ) -> list[dict[str, Any]]:
        now = self.clock.time()
        params = {
            "until": now + (self.lease if lease is None else lease),
            "now": now,
            "owner": owner,
            "limit": limit,
            "channels": None if channels is None else sorted(channels),
        }
        if self._idle:  # after an empty claim: index reads instead of a write when nothing is due
            due = await self.next_due(channels)
            if due is None or due > now:
                return []
        claimed = await self.db.all(self._claim, params)
        self._idle = not claimed
        return sorted(claimed, key=lambda r: r["id"])

    async def next_due(self, channels: Collection[str] | None = None) -> float | None:
        """When the earliest pending head is due or a claim lapses (None: nothing waits)."""
        wanted = {"channels": None if channels is None else sorted(channels)}
        row = await self.db.one(
            f"SELECT (SELECT min(next_attempt_at) FROM {self.table} WHERE head AND status = 'pending'"
            f" AND {self.of_channels}) AS due, (SELECT min(claimed_until) FROM {self.table}"
            f" WHERE status = 'claimed' AND {self.of_channels}) AS lapse",
            wanted,
        )
        times = [float(row[k]) for k in ("due", "lapse") if row is not None and row[k] is not None]
        return min(times) if times else None

    async def release(self, owner: str | None) -> int:
        return await self.db.execute(
            f"UPDATE {self.table} SET status = 'pending', claimed_until = NULL, claimed_by = NULL, updated_at = %s"
            " WHERE status = 'claimed' AND (%s::text IS NULL OR claimed_by = %s)",
            (self.clock.time(), owner, owner),
        )

    async def renew(self, owner: str, lease: float) -> int:
        return await self.db.execute(
            f"UPDATE {self.table} SET claimed_until = %s WHERE status = 'claimed' AND claimed_by = %s",
            (self.clock.time() + lease, owner),
        )

    async def finish_in(
        self, conn: Conn, entry_id: int, change: str, params: dict[str, Any], *, locked: bool = False, also: str = ""
    ) -> bool:
        """End a live entry (`change`: a DELETE or an UPDATE ... of `%(id)s` RETURNING its conversation)
        and hand its conversation's head on; False when it is unknown or already finished.
        `locked`: the caller holds the conversation's lock; `also`: more CTEs of the same statement,
        reading `done` (so they act only when the entry was live)."""
        if not locked:
            await conn.execute(self.lock_entry_sql, (entry_id,))
        cur = await conn.execute(
            f"WITH done AS ({change}), {self._promote}{also} SELECT count(*) AS n FROM done",
            {**params, "id": entry_id},
        )
        row = await cur.fetchone()
        return bool(row and row["n"])

    async def end(self, entry_id: int, assignments: str, params: dict[str, Any]) -> bool:
        """Finish with an UPDATE (dead letter, sent): not live any more, no longer the head."""
        change = (
            f"UPDATE {self.table} SET {assignments}, head = false, claimed_until = NULL, claimed_by = NULL,"
            f" updated_at = %(now)s WHERE id = %(id)s AND {_LIVE} RETURNING channel_id, conversation"
        )
        params = {**params, "now": self.clock.time()}
        return await self.db.run(lambda conn: self.finish_in(conn, entry_id, change, params))

    async def retry(
        self, entry_id: int, error: str, delay: float, attempt: str = "", params: dict[str, Any] | None = None
    ) -> bool:
        # stays live and stays the head: no conversation lock needed
        now = self.clock.time()
        return (
            await self.db.execute(
                f"UPDATE {self.table} SET status = 'pending', claimed_until = NULL, claimed_by = NULL,"
                f" last_error = %(error)s, next_attempt_at = %(due)s, updated_at = %(now)s{attempt}"
                f" WHERE id = %(id)s AND {_LIVE}",
                {**(params or {}), "error": error, "due": now + max(0.0, delay), "now": now, "id": entry_id},
            )
            > 0
        )

    async def dead_letter(
        self,
        entry_id: int,
        error: str,
        reason: DeadReason = "failed",
        attempt: str = "",
        params: dict[str, Any] | None = None,
    ) -> bool:
        return await self.end(
            entry_id,
            f"status = 'dead', last_error = %(error)s, reason = %(reason)s{attempt}",
            {**(params or {}), "error": error, "reason": reason},
        )

    async def revive(self, entry_id: int, extra: str = "") -> dict[str, Any] | None:
        """A dead entry back to pending; the head of its conversation only when nothing else is live there."""
        t = self.table

        async def work(conn: Conn) -> dict[str, Any] | None:
            await conn.execute(self.lock_entry_sql, (entry_id,))
            cur = await conn.execute(
                f"UPDATE {t} SET status = 'pending', attempts = 0, next_attempt_at = %(now)s, claimed_until = NULL,"
                f" claimed_by = NULL, reason = NULL, updated_at = %(now)s{extra},"
                f" head = NOT EXISTS (SELECT 1 FROM {t} other WHERE other.channel_id = {t}.channel_id"
                f" AND other.conversation = {t}.conversation AND other.status IN ('pending', 'claimed'))"
                " WHERE id = %(id)s AND status = 'dead' RETURNING *",
                {"now": self.clock.time(), "id": entry_id},
            )
            row: dict[str, Any] | None = await cur.fetchone()
            return row

        return await self.db.run(work)

    async def discard(self, entry_id: int) -> bool:
        return await self.db.execute(f"DELETE FROM {self.table} WHERE id = %s AND status = 'dead'", (entry_id,)) > 0

    async def listing(
        self, where: list[str], params: dict[str, Any], limit: int, before: Page | None
    ) -> list[dict[str, Any]]:
        """Rows matching every `where` fragment (ours, never input), newest first, from `before` on."""
        if before is not None:
            where = [*where, "(created_at, id) < (%(before_at)s, %(before_id)s)"]
            params = {**params, "before_at": before.created_at, "before_id": before.id}
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return await self.db.all(
            f"SELECT * FROM {self.table}{clause} ORDER BY created_at DESC, id DESC LIMIT %(limit)s",
            {**params, "limit": max(0, limit)},
        )

    async def get(self, entry_id: int) -> dict[str, Any] | None:
        return await self.db.one(f"SELECT * FROM {self.table} WHERE id = %s", (entry_id,))

    async def dead(self, limit: int) -> list[dict[str, Any]]:
        return await self.db.all(
            f"SELECT * FROM {self.table} WHERE status = 'dead' ORDER BY id LIMIT %s",
            (limit,),
        )

    async def pending_count(self) -> int:
        row = await self.db.one(f"SELECT count(*) AS n FROM {self.table} WHERE {_LIVE}")
        return int(row["n"]) if row is not None else 0


class PgInbox(InboxStore):
    def __init__(self, db: Database, clock: Clock, *, lease: float = DEFAULT_LEASE) -> None:
        self._queue = _Queue(db, clock, "inbox", lease)
        q = self._queue
        # runtime dedupe, the entry and `record_inbound` in one statement: nothing when the message id was seen
        self.commit_sql = (
            "WITH seen AS (INSERT INTO message_dedupe (channel_id, message_id, seen_at)"
            " VALUES (%(channel)s, %(key)s, %(now)s) ON CONFLICT DO NOTHING RETURNING 1),"
            f" i AS (INSERT INTO inbox ({q.insert_columns}) SELECT {q.insert_values} FROM seen RETURNING id)"
            f"{INBOUND_CTES} SELECT id FROM i"
        )

    @staticmethod
    def entry(message: InboundMessage, entry_id: int, now: float) -> InboxEntry:
        """The entry as written: no read-back, no second decode."""
        return InboxEntry(
            id=entry_id,
            channel_id=message.channel_id,
            session_id=message.session_id,
            message=message,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            claimed_until=None,
            last_error=None,
            created_at=now,
            updated_at=now,
        )

    def params(self, message: InboundMessage, payload: str, now: float, window: bool = True) -> dict[str, Any]:
        return {
            "channel": message.channel_id,
            "conversation": message.session_id,
            "key": message.message_id,
            "payload": payload,
            "peer": message.peer_id,
            "now": now,
            "window": window,
        }

    async def commit_in(
        self,
        conn: Conn,
        message: InboundMessage,
        payload: str,
        now: float,
        window: bool = True,
        *,
        locked: bool = False,
    ) -> InboxEntry | None:
        """`commit` inside the caller's transaction (`locked`: holding the conversation's lock already)."""
        params = self.params(message, payload, now, window)
        if not locked:
            await conn.execute(self._queue.lock_sql, params)
        cur = await conn.execute(self.commit_sql, params)
        row = await cur.fetchone()
        return None if row is None else self.entry(message, int(row["id"]), now)

    async def ack_in(self, conn: Conn, entry_id: int, *, locked: bool = False) -> bool:
        """`ack` inside the caller's transaction."""
        change = f"DELETE FROM inbox WHERE id = %(id)s AND {_LIVE} RETURNING channel_id, conversation"
        return await self._queue.finish_in(conn, entry_id, change, {}, locked=locked)

    async def commit(self, message: InboundMessage, *, window: bool = True) -> InboxEntry | None:
        q = self._queue
        now = q.clock.time()
        payload = _json(message)
        return await q.db.run(lambda conn: self.commit_in(conn, message, payload, now, window))

    async def claim_ready(
        self, limit: int = 16, *, lease: float | None = None, owner: str | None = None
    ) -> list[InboxEntry]:
        return [rows.inbox_entry(r) for r in await self._queue.claim(limit, lease, owner)]

    async def release_claims(self, owner: str | None = None) -> int:
        return await self._queue.release(owner)

    async def renew_claims(self, owner: str, lease: float) -> int:
        return await self._queue.renew(owner, lease)

    async def next_due(self) -> float | None:
        return await self._queue.next_due()

    async def ack(self, entry_id: int) -> bool:
        return await self._queue.db.run(lambda conn: self.ack_in(conn, entry_id))

    async def retry(self, entry_id: int, error: str, delay: float) -> bool:
        return await self._queue.retry(entry_id, error, delay)

    async def dead_letter(self, entry_id: int, error: str, *, reason: DeadReason = "failed") -> bool:
        return await self._queue.dead_letter(entry_id, error, reason)

    async def get(self, entry_id: int) -> InboxEntry | None:
        row = await self._queue.get(entry_id)
        return None if row is None else rows.inbox_entry(row)

    async def list_dead(
        self,
        limit: int = 100,
        *,
        channel_id: str | None = None,
        peer_id: str | None = None,
        before: Page | None = None,
    ) -> list[InboxEntry]:
        where, params = _filters(channel_id, peer_id)
        found = await self._queue.listing(["status = 'dead'", *where], params, limit, before)
        return [rows.inbox_entry(r) for r in found]

    async def dead_count(self) -> int:
        row = await self._queue.db.one("SELECT count(*) AS n FROM inbox WHERE status = 'dead'")
        return int(row["n"]) if row is not None else 0

    async def revive(self, entry_id: int) -> InboxEntry | None:
        row = await self._queue.revive(entry_id)
        return None if row is None else rows.inbox_entry(row)

    async def discard(self, entry_id: int) -> bool:
        return await self._queue.discard(entry_id)

    async def pending_count(self) -> int:
        return await self._queue.pending_count()


def _filters(channel_id: str | None, peer_id: str | None) -> tuple[list[str], dict[str, Any]]:
    where: list[str] = []
    params: dict[str, Any] = {}
    for column, value in (("channel_id", channel_id), ("peer_id", peer_id)):
        if value is not None:
            where.append(f"{column} = %({column})s")
            params[column] = value
    return where, params


# `record_inbound` as CTEs after `i` (the inbox insert, RETURNING id): when an entry was written, the peer
# wrote, so its deliveries deferred for it are due now, and (`%(window)s`) its reply window opens afresh
# (a channel without a reply window never reads it: no write on its hot path)
INBOUND_CTES = (
    ", p AS (INSERT INTO peers (channel_id, peer_id, last_inbound_at, replies, closed)"
    " SELECT %(channel)s, %(peer)s, %(now)s, 0, false FROM i WHERE %(window)s ON CONFLICT (channel_id, peer_id)"
    " DO UPDATE SET last_inbound_at = excluded.last_inbound_at, replies = 0, closed = false)"
    ", o AS (UPDATE outbox SET defer_reason = NULL, next_attempt_at = %(now)s, updated_at = %(now)s"
    " WHERE EXISTS (SELECT 1 FROM i) AND channel_id = %(channel)s AND defer_reason = 'reply_window'"
    " AND peer_id = %(peer)s AND status = 'pending')"
)


# the public states of SPEC 6.4 over the stored columns (as in the SQLite backend)
_STATE_WHERE: dict[str, str] = {
    "queued": "status = 'pending' AND defer_reason IS NULL",
    "deferred": "status = 'pending' AND defer_reason IS NOT NULL",
    "sending": "status = 'claimed'",
    "sent": "status = 'sent'",
    "dead": "status = 'dead'",
}
# an attempt's times: the first one stays, the last one moves
_ATTEMPT = (
    ", first_attempt_at = COALESCE(first_attempt_at, %(attempted)s::double precision),"
    " last_attempt_at = COALESCE(%(attempted)s::double precision, last_attempt_at)"
)
_PeerCalls = list[PeerCall]  # named before the class whose `list` method shadows the builtin


class PgOutbox(OutboxStore):
    def __init__(self, db: Database, clock: Clock, *, lease: float = DEFAULT_LEASE) -> None:
        self._queue = _Queue(db, clock, "outbox", lease)
        self._sent = Group()

    async def enqueue_in(
        self,
        conn: Conn,
        channel_id: str,
        request_id: str,
        payload: dict[str, Any],
        conversation: str | None,
        peer_id: str | None,
        now: float,
        *,
        locked: bool = False,
    ) -> int | None:
        """`enqueue` inside the caller's transaction (`locked`: holding the conversation's lock already)."""
        return await self._queue.add(
            conn,
            channel_id,
            conversation or outbox_conversation(request_id),
            request_id,
            _json(payload),
            payload_peer_id(payload) if peer_id is None else peer_id,
            now,
            unique=True,
            locked=locked,
        )

    async def enqueue(
        self,
        channel_id: str,
        request_id: str,
        payload: dict[str, Any],
        *,
        conversation: str | None = None,
        peer_id: str | None = None,
    ) -> int | None:
        q = self._queue
        now = q.clock.time()
        return await q.db.run(
            lambda conn: self.enqueue_in(conn, channel_id, request_id, payload, conversation, peer_id, now)
        )

    async def claim_ready(
        self,
        limit: int = 16,
        *,
        lease: float | None = None,
        owner: str | None = None,
        channels: Collection[str] | None = None,
    ) -> list[OutboxEntry]:
        return [rows.outbox_entry(r) for r in await self._queue.claim(limit, lease, owner, channels)]

    async def release_claims(self, owner: str | None = None) -> int:
        return await self._queue.release(owner)

    async def renew_claims(self, owner: str, lease: float) -> int:
        return await self._queue.renew(owner, lease)

    async def next_due(self, *, channels: Collection[str] | None = None) -> float | None:
        return await self._queue.next_due(channels)

    async def mark_sent(
        self, entry_id: int, result: dict[str, Any] | None = None, *, attempted_at: float | None = None
    ) -> bool:
        q = self._queue
        provider_id = result.get("providerMessageId") if isinstance(result, dict) else None
        params = {
            "result": None if result is None else _json(result),
            "provider": provider_id if isinstance(provider_id, str) else None,
            "now": q.clock.time(),
            "attempted": attempted_at,
        }
        change = (
            "UPDATE outbox SET status = 'sent', result = %(result)s, provider_message_id = %(provider)s,"
            " sent_at = %(now)s, defer_reason = NULL, head = false, claimed_until = NULL, claimed_by = NULL,"
            f" updated_at = %(now)s{_ATTEMPT} WHERE id = %(id)s AND {_LIVE} RETURNING channel_id, conversation, peer_id"
        )
        # one more reply in the peer's window (maxRepliesPerInbound), in the same statement
        replies = (
            ", replied AS (UPDATE peers SET replies = replies + 1 FROM done"
            " WHERE peers.channel_id = done.channel_id AND peers.peer_id = done.peer_id)"
        )

        async def sent(conn: Conn) -> bool:
            return await q.finish_in(conn, entry_id, change, params, locked=True, also=replies)

        # the dispatcher's deliveries finish together: they share a commit
        return await q.db.grouped(self._sent, sent, Locks(outbox=(entry_id,)))

    async def retry(self, entry_id: int, error: str, delay: float, *, attempted_at: float | None = None) -> bool:
        return await self._queue.retry(entry_id, error, delay, _ATTEMPT, {"attempted": attempted_at})

    async def defer(
        self,
        entry_id: int,
        reason: DeferReason,
        due: float,
        *,
        since: float,
        error: str | None = None,
        counted: bool = False,
        attempted_at: float | None = None,
    ) -> bool:
        check_defer_reason(reason)
        q = self._queue
        now = q.clock.time()

        async def work(conn: Conn) -> bool:
            cur = await conn.execute(
                f"SELECT channel_id, peer_id FROM outbox WHERE id = %s AND {_LIVE} FOR UPDATE", (entry_id,)
            )
            row = await cur.fetchone()
            if row is None:
                return False
            missed = False
            if reason == "reply_window":
                cur = await conn.execute(
                    "SELECT last_inbound_at FROM peers WHERE channel_id = %s AND peer_id = %s FOR UPDATE",
                    (row["channel_id"], row["peer_id"]),
                )
                peer = await cur.fetchone()
                missed = peer is not None and peer["last_inbound_at"] is not None and peer["last_inbound_at"] > since
                if attempted_at is not None and not missed:
                    # the platform closed the window (-32016): it stays closed until the peer writes again
                    await conn.execute(
                        "INSERT INTO peers (channel_id, peer_id, last_inbound_at, replies, closed)"
                        " VALUES (%s, %s, NULL, 0, true) ON CONFLICT (channel_id, peer_id) DO UPDATE SET closed = true",
                        (row["channel_id"], row["peer_id"]),
                    )
            cur = await conn.execute(
                "UPDATE outbox SET status = 'pending', claimed_until = NULL, claimed_by = NULL,"
                " defer_reason = %(reason)s, next_attempt_at = %(due)s, deferred_at = COALESCE(deferred_at, %(now)s),"
                " last_error = COALESCE(%(error)s, last_error), attempts = attempts - %(uncount)s,"
                f" updated_at = %(now)s{_ATTEMPT} WHERE id = %(id)s AND {_LIVE}",
                {
                    "reason": None if missed else reason,
                    "due": now if missed else due,
                    "now": now,
                    "error": error,
                    "uncount": 0 if counted else 1,
                    "attempted": attempted_at,
                    "id": entry_id,
                },
            )
            return cur.rowcount > 0

        return await q.db.run(work)

    async def release(self, reason: DeferReason, *, channel_id: str | None = None, peer_id: str | None = None) -> int:
        check_defer_reason(reason)
        where, params = _filters(channel_id, peer_id)
        now = self._queue.clock.time()
        return await self._queue.db.execute(
            "UPDATE outbox SET defer_reason = NULL, next_attempt_at = %(now)s, updated_at = %(now)s"
            f" WHERE {' AND '.join([*where, 'defer_reason = %(reason)s'])} AND status = 'pending'",
            {**params, "now": now, "reason": reason},
        )

    async def release_entries(self, entry_ids: Sequence[int]) -> int:
        if not entry_ids:
            return 0
        now = self._queue.clock.time()
        return await self._queue.db.execute(
            "UPDATE outbox SET defer_reason = NULL, next_attempt_at = %s, updated_at = %s"
            " WHERE id = ANY(%s) AND defer_reason IS NOT NULL AND status = 'pending'",
            (now, now, list(entry_ids)),
        )

    async def dead_letter(
        self, entry_id: int, error: str, *, reason: DeadReason = "failed", attempted_at: float | None = None
    ) -> bool:
        return await self._queue.dead_letter(
            entry_id, error, reason, ", defer_reason = NULL" + _ATTEMPT, {"attempted": attempted_at}
        )

    async def revive(self, entry_id: int) -> OutboxEntry | None:
        row = await self._queue.revive(entry_id, ", defer_reason = NULL, deferred_at = NULL")
        return None if row is None else rows.outbox_entry(row)

    async def discard(self, entry_id: int) -> bool:
        return await self._queue.discard(entry_id)

    async def get(self, entry_id: int) -> OutboxEntry | None:
        row = await self._queue.get(entry_id)
        return None if row is None else rows.outbox_entry(row)

    async def get_by_request_id(self, request_id: str) -> OutboxEntry | None:
        row = await self._queue.db.one("SELECT * FROM outbox WHERE item_key = %s", (request_id,))
        return None if row is None else rows.outbox_entry(row)

    async def list(
        self,
        *,
        state: DeliveryState | None = None,
        channel_id: str | None = None,
        peer_id: str | None = None,
        limit: int = 100,
        before: Page | None = None,
    ) -> list[OutboxEntry]:
        where, params = _filters(channel_id, peer_id)
        if state is not None:
            if state not in _STATE_WHERE:
                raise StoreError(f"unknown delivery state {state!r}; expected one of {sorted(_STATE_WHERE)}")
            where.insert(0, _STATE_WHERE[state])
        return [rows.outbox_entry(r) for r in await self._queue.listing(where, params, limit, before)]

    async def counts(self) -> dict[DeliveryState, int]:
        counts: dict[DeliveryState, int] = {"queued": 0, "sending": 0, "deferred": 0, "dead": 0}
        for row in await self._queue.db.all(
            "SELECT CASE WHEN status = 'claimed' THEN 'sending' WHEN defer_reason IS NULL THEN 'queued'"
            f" ELSE 'deferred' END AS state, count(*) AS n FROM outbox WHERE {_LIVE} GROUP BY 1"
        ):
            counts[row["state"]] = int(row["n"])
        dead = await self._queue.db.one("SELECT count(*) AS n FROM outbox WHERE status = 'dead'")
        counts["dead"] = int(dead["n"]) if dead is not None else 0
        return counts

    async def pending_count(self) -> int:
        return await self._queue.pending_count()

    async def peer_window(self, channel_id: str, peer_id: str) -> PeerWindow | None:
        row = await self._queue.db.one(
            "SELECT last_inbound_at, replies, closed FROM peers WHERE channel_id = %s AND peer_id = %s",
            (channel_id, peer_id),
        )
        if row is None:
            return None
        return PeerWindow(rows.float_or_none(row["last_inbound_at"]), int(row["replies"]), bool(row["closed"]))

    async def recent_calls(self, since: float) -> _PeerCalls:
        found = await self._queue.db.all(
            "SELECT channel_id, peer_id, last_attempt_at FROM outbox"
            " WHERE status = 'sent' AND updated_at >= %(since)s AND last_attempt_at >= %(since)s"
            f" UNION ALL SELECT channel_id, peer_id, last_attempt_at FROM outbox WHERE {_LIVE}"
            " AND last_attempt_at >= %(since)s"
            " UNION ALL SELECT channel_id, peer_id, last_attempt_at FROM outbox WHERE status = 'dead'"
            " AND last_attempt_at >= %(since)s",
            {"since": since},
        )
        calls = [PeerCall(r["channel_id"], r["peer_id"], float(r["last_attempt_at"])) for r in found]
        return sorted(calls, key=lambda c: c.at)

    async def prune(self, retention: float = DEDUPE_RETENTION) -> int:
        cutoff = self._queue.clock.time() - retention
        await self._queue.db.execute(
            "DELETE FROM peers WHERE last_inbound_at IS NULL OR last_inbound_at <= %s", (cutoff,)
        )
        return await self._queue.db.execute("DELETE FROM outbox WHERE status = 'sent' AND updated_at <= %s", (cutoff,))


# ---------------------------------------------------------------- pipeline


class PgPipeline(PipelineStore):
    """Each call all or nothing in one transaction, shared with concurrent calls of its kind (group commit,
    see the module doc); when `accept_event` fails, its failure is recorded in one of its own."""

    def __init__(self, db: Database, clock: Clock, dedupe: PgBridgeDedupe, inbox: PgInbox, outbox: PgOutbox) -> None:
        self._db = db
        self._clock = clock
        self._dedupe = dedupe
        self._inbox = inbox
        self._outbox = outbox
        self._accepts = Group()
        self._finishes = Group()
        q = inbox._queue
        # a new event: its dedupe record (already `completed`), its message id, its entry and
        # `record_inbound` in one statement
        self._accept_new = (
            f"WITH d AS (INSERT INTO bridge_dedupe ({_DEDUPE_COLUMNS}) VALUES ({_DEDUPE_VALUES})"
            " ON CONFLICT (dedupe_key) DO NOTHING RETURNING 1),"
            " seen AS (INSERT INTO message_dedupe (channel_id, message_id, seen_at)"
            " SELECT %(channel)s, %(key)s, %(now)s FROM d ON CONFLICT DO NOTHING RETURNING 1),"
            f" i AS (INSERT INTO inbox ({q.insert_columns}) SELECT {q.insert_values} FROM seen RETURNING id)"
            f"{INBOUND_CTES} SELECT (SELECT count(*) FROM d) AS inserted, (SELECT id FROM i) AS entry_id"
        )

    async def accept_event(
        self, connection_id: str, event_id: str, message: InboundMessage, *, window: bool = True
    ) -> tuple[BeginResult, InboxEntry | None]:
        key = dedupe_key(connection_id, event_id)
        existing: DedupeRecord | None = None
        begun: DedupeRecord | None = None

        async def accept(conn: Conn) -> tuple[BeginResult, InboxEntry | None]:
            nonlocal existing, begun
            existing = begun = None  # each attempt (in a group, then alone) decides afresh
            now = self._clock.time()
            try:
                payload: str | None = _json(message)
                encode_error: Exception | None = None
            except (TypeError, ValueError, msgspec.EncodeError) as exc:
                payload, encode_error = None, exc  # raised where the inbox insert would fail
            params = self._inbox.params(message, payload or "", now, window)
            if payload is not None:
                _, fresh, _ = decide_begin(
                    None,
                    connection_id=connection_id,
                    event_id=event_id,
                    message_id=message.message_id,
                    now=now,
                    ttl=self._dedupe.ttl,
                )
                begun = fresh
                done = msgspec.structs.replace(fresh, status="completed")
                cur = await conn.execute(self._accept_new, {**params, **_dedupe_params(done)})
                row = await cur.fetchone()
                if row is not None and row["inserted"]:
                    entry_id = row["entry_id"]
                    if entry_id is None:
                        return BeginResult(outcome="new", record=done), None
                    return BeginResult(outcome="new", record=done), self._inbox.entry(message, int(entry_id), now)
            # the key is known: decide from the record as it is now, and hold it
            existing = await _get_dedupe(conn, key, for_update=True)
            outcome, record, _ = decide_begin(
                existing,
                connection_id=connection_id,
                event_id=event_id,
                message_id=message.message_id,
                now=now,
                ttl=self._dedupe.ttl,
            )
            if outcome in ("duplicate", "in_progress"):
                return BeginResult(outcome=outcome, record=record), None
            begun = record
            if encode_error is not None:
                raise encode_error
            assert payload is not None
            entry = await self._inbox.commit_in(conn, message, payload, now, window, locked=True)
            record = msgspec.structs.replace(record, status="completed", last_error=None)
            await _put_dedupe(conn, record)
            return BeginResult(outcome=outcome, record=record), entry

        async def record_failure(conn: Conn, exc: Exception) -> None:
            """After the rollback: the record as `begin` then `fail` would have left it (SPEC 6.3)."""
            if begun is None:
                return
            # compare-and-set: a delivery that got in since (another host) owns the record now
            if await _get_dedupe(conn, key, for_update=True) == existing:
                await _put_dedupe(
                    conn,
                    msgspec.structs.replace(
                        begun, status="failed", last_error=error_text(exc), updated_at=self._clock.time()
                    ),
                )

        locks = Locks(
            names=(
                lock_name("inbox", message.channel_id, message.session_id),
                lock_name("peers", message.channel_id, message.peer_id),
            )
        )
        return await self._db.grouped(self._accepts, accept, locks, record_failure)

    async def finish_inbound(self, entry_id: int, deliveries: Sequence[Delivery]) -> list[bool] | None:
        # the entry's conversation and the replies' ones, taken together in the one global order
        locks = Locks(
            names=tuple(
                lock_name("outbox", d.channel_id, d.conversation or outbox_conversation(d.request_id))
                for d in deliveries
            ),
            inbox=(entry_id,),
        )

        async def finish(conn: Conn) -> list[bool] | None:
            if not await self._inbox.ack_in(conn, entry_id, locked=True):
                return None
            now = self._clock.time()
            return [
                await self._outbox.enqueue_in(
                    conn, d.channel_id, d.request_id, d.payload, d.conversation, d.peer_id, now, locked=True
                )
                is not None
                for d in deliveries
            ]

        return await self._db.grouped(self._finishes, finish, locks)


# ---------------------------------------------------------------- connections and sessions

_CONNECTION_COLUMNS = (
    "connection_id, kind, plugin_id, channel_id, account_id, display_name, options, status, error,"
    " credentials IS NOT NULL AS has_credentials, created_at, updated_at"
)  # never the credentials themselves


async def _get_lease(conn: Conn, connection_id: str) -> Lease | None:
    # FOR SHARE: the owner cannot change until this write commits
    cur = await conn.execute("SELECT * FROM connection_leases WHERE connection_id = %s FOR SHARE", (connection_id,))
    row = await cur.fetchone()
    return None if row is None else rows.lease(row)


class PgConnections(ConnectionStore):
    """Connections, read from the database every time: another host may change them at any moment."""

    def __init__(self, db: Database, clock: Clock, cipher: CredentialCipher | None) -> None:
        self._db = db
        self._clock = clock
        self._cipher = cipher

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
        now = self._clock.time()
        row = await self._db.one(
            "INSERT INTO connections (connection_id, kind, plugin_id, channel_id, account_id, display_name,"
            " options, status, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            f" ON CONFLICT DO NOTHING RETURNING {_CONNECTION_COLUMNS}",
            (
                connection_id,
                kind,
                plugin_id,
                channel_id or connection_id,
                account_id,
                display_name,
                _json(options or {}),
                status,
                now,
                now,
            ),
        )
        if row is None:
            raise StoreError(f"connection {connection_id} already exists")
        return rows.connection(row)

    async def get(self, connection_id: str) -> ConnectionRecord | None:
        row = await self._db.one(
            f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE connection_id = %s", (connection_id,)
        )
        return None if row is None else rows.connection(row)

    async def list(
        self, *, status: str | None = None, kind: str | None = None, plugin_id: str | None = None
    ) -> list[ConnectionRecord]:
        found = await self._db.all(
            f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE (%(status)s::text IS NULL OR status = %(status)s)"
            " AND (%(kind)s::text IS NULL OR kind = %(kind)s)"
            " AND (%(plugin)s::text IS NULL OR plugin_id = %(plugin)s) ORDER BY created_at, seq",
            {"status": status, "kind": kind, "plugin": plugin_id},
        )
        return [rows.connection(r) for r in found]

    async def _update(
        self, connection_id: str, changes: dict[str, Any], fence: LeaseFence | None = None
    ) -> ConnectionRecord:
        changes["updated_at"] = self._clock.time()
        assignments = ", ".join(f"{column} = %s" for column in changes)  # column names are ours, not input

        async def update(conn: Conn) -> dict[str, Any] | None:
            if fence is not None:
                check_fence(await _get_lease(conn, connection_id), fence, connection_id)
            cur = await conn.execute(
                f"UPDATE connections SET {assignments} WHERE connection_id = %s RETURNING {_CONNECTION_COLUMNS}",
                (*changes.values(), connection_id),
            )
            return await cur.fetchone()

        row = await self._db.run(update)
        if row is None:
            raise NotFoundError(f"unknown connection {connection_id}")
        return rows.connection(row)

    async def update(
        self,
        connection_id: str,
        *,
        channel_id: str | None = None,
        account_id: str | None = None,
        display_name: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> ConnectionRecord:
        changes: dict[str, Any] = {
            k: v
            for k, v in (("channel_id", channel_id), ("account_id", account_id), ("display_name", display_name))
            if v is not None
        }
        if options is not None:
            changes["options"] = _json(options)
        return await self._update(connection_id, changes)

    async def update_status(
        self, connection_id: str, status: ConnectionState, error: str | None = None
    ) -> ConnectionRecord:
        check_connection_status(status)
        return await self._update(connection_id, {"status": status, "error": error})

    async def set_credentials(
        self, connection_id: str, credentials: dict[str, Any], *, fence: LeaseFence | None = None
    ) -> None:
        # empty credentials clear them (NULL), so has_credentials turns false
        token = require_cipher(self._cipher).encrypt(credentials) if credentials else None
        await self._update(connection_id, {"credentials": token}, fence)

    async def get_credentials(self, connection_id: str) -> dict[str, Any]:
        row = await self._db.one("SELECT credentials FROM connections WHERE connection_id = %s", (connection_id,))
        if row is None:
            raise NotFoundError(f"unknown connection {connection_id}")
        token = row["credentials"]
        return {} if token is None else require_cipher(self._cipher).decrypt(bytes(token))

    async def delete(self, connection_id: str) -> bool:
        # sessions go with it (ON DELETE CASCADE)
        return await self._db.execute("DELETE FROM connections WHERE connection_id = %s", (connection_id,)) > 0


class PgSessions(ConnectorSessionStore):
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

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
        check_session_status(status)
        session_id = session_id or new_session_id()
        now = self._clock.time()

        async def create(conn: Conn) -> dict[str, Any] | None:
            cur = await conn.execute("SELECT 1 FROM connections WHERE connection_id = %s", (connection_id,))
            if await cur.fetchone() is None:
                raise NotFoundError(f"unknown connection {connection_id}")
            cur = await conn.execute(
                "INSERT INTO connector_sessions (session_id, connection_id, kind, plugin_id, status, view,"
                " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING *",
                (session_id, connection_id, kind, plugin_id, status, _json(clean_view(view)), now, now),
            )
            return await cur.fetchone()

        row = await self._db.run(create)
        if row is None:
            raise StoreError(f"connector session {session_id} already exists")
        return rows.session(row)

    async def get(self, session_id: str) -> ConnectorSessionRecord | None:
        row = await self._db.one("SELECT * FROM connector_sessions WHERE session_id = %s", (session_id,))
        return None if row is None else rows.session(row)

    async def list(
        self, *, connection_id: str | None = None, status: str | None = None
    ) -> list[ConnectorSessionRecord]:
        found = await self._db.all(
            "SELECT * FROM connector_sessions WHERE (%(connection)s::text IS NULL OR connection_id = %(connection)s)"
            " AND (%(status)s::text IS NULL OR status = %(status)s) ORDER BY created_at, seq",
            {"connection": connection_id, "status": status},
        )
        return [rows.session(r) for r in found]

    async def update(
        self, session_id: str, *, status: str | None = None, view: dict[str, Any] | None = None
    ) -> ConnectorSessionRecord:
        if status is not None:
            check_session_status(status)
        row = await self._db.one(
            "UPDATE connector_sessions SET status = COALESCE(%s, status), view = COALESCE(%s, view),"
            " updated_at = %s WHERE session_id = %s RETURNING *",
            (status, None if view is None else _json(clean_view(view)), self._clock.time(), session_id),
        )
        if row is None:
            raise NotFoundError(f"unknown connector session {session_id}")
        return rows.session(row)


class PgKeyValue(KeyValueStore):
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def get(self, key: str, default: Any = None) -> Any:
        row = await self._db.one("SELECT value FROM kv WHERE key = %s", (key,))
        return default if row is None else _unjson(row["value"])

    async def set(self, key: str, value: Any) -> None:
        await self._db.execute(
            "INSERT INTO kv (key, value, updated_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            (key, _json(value), self._clock.time()),
        )

    async def delete(self, key: str) -> bool:
        return await self._db.execute("DELETE FROM kv WHERE key = %s", (key,)) > 0


# a value for a key that exists, after the fence (`check_fence`'s rule, spelled in SQL: the lease is held by the
# fence's node at no newer epoch than the fence's); the lease as read (FOR SHARE: unchanged until the write
# commits) and whether the value was written
_STATE_UPDATE = (
    "WITH lease AS (SELECT * FROM connection_leases WHERE %(fenced)s AND connection_id = %(connection)s FOR SHARE),"
    " written AS (UPDATE plugin_state SET value = %(value)s, updated_at = %(now)s"
    " WHERE plugin_id = %(plugin)s AND scope = %(scope)s AND key = %(key)s AND (NOT %(fenced)s OR EXISTS"
    " (SELECT 1 FROM lease WHERE node_id = %(node)s AND (%(epoch)s::bigint IS NULL OR %(epoch)s::bigint >= epoch)))"
    " RETURNING 1)"
    " SELECT (SELECT count(*) FROM written) AS updated, lease.* FROM (SELECT 1) AS one LEFT JOIN lease ON true"
)


class PgPluginState(PluginStateStore):
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        value_max_bytes: int = STATE_VALUE_MAX_BYTES,
        keys_per_scope: int = STATE_KEYS_PER_CONNECTION,
    ) -> None:
        self._db = db
        self._clock = clock
        self.value_max_bytes = value_max_bytes
        self.keys_per_scope = keys_per_scope

    async def get(self, plugin_id: str, connection_id: str | None, key: str) -> Any:
        row = await self._db.one(
            "SELECT value FROM plugin_state WHERE plugin_id = %s AND scope = %s AND key = %s",
            (plugin_id, connection_id or "", key),
        )
        return None if row is None else _unjson(row["value"])

    async def put(
        self, plugin_id: str, connection_id: str | None, key: str, value: Any, *, fence: LeaseFence | None = None
    ) -> None:
        scope = connection_id or ""
        text = None if value is None else _json(value)
        if text is not None and len(text.encode("utf-8")) > self.value_max_bytes:
            raise StateLimitError(
                f"state value {key!r} is {len(text.encode('utf-8'))} bytes of JSON; at most {self.value_max_bytes}",
                self.value_max_bytes,
            )
        now = self._clock.time()
        ids = (plugin_id, scope, key)
        fenced = fence is not None and bool(connection_id)
        if text is not None:
            # the common write, a key that exists: one statement, no transaction of its own
            row = await self._db.one(
                _STATE_UPDATE,
                {
                    "fenced": fenced,
                    "connection": connection_id,
                    "node": fence.node_id if fence is not None else None,
                    "epoch": fence.epoch if fence is not None else None,
                    "value": text,
                    "now": now,
                    "plugin": plugin_id,
                    "scope": scope,
                    "key": key,
                },
            )
            assert row is not None
            if fence is not None and connection_id:
                # the decision and its error: the statement refused the write by the same rule
                check_fence(None if row["connection_id"] is None else rows.lease(row), fence, connection_id)
            if row["updated"]:
                return

        async def write(conn: Conn) -> None:
            if fenced and fence is not None and connection_id:
                check_fence(await _get_lease(conn, connection_id), fence, connection_id)
            if text is None:
                cur = await conn.execute(
                    "DELETE FROM plugin_state WHERE plugin_id = %s AND scope = %s AND key = %s", ids
                )
                if cur.rowcount:
                    await conn.execute(
                        "UPDATE plugin_state_counts SET keys = keys - 1 WHERE plugin_id = %s AND scope = %s",
                        (plugin_id, scope),
                    )
                return
            cur = await conn.execute(
                "UPDATE plugin_state SET value = %s, updated_at = %s WHERE plugin_id = %s AND scope = %s AND key = %s",
                (text, now, *ids),
            )
            if cur.rowcount:
                return
            # the count row is the per-scope lock: concurrent inserts into one scope queue on it
            cur = await conn.execute(
                "INSERT INTO plugin_state_counts (plugin_id, scope, keys) VALUES (%s, %s, 0)"
                " ON CONFLICT (plugin_id, scope) DO UPDATE SET keys = plugin_state_counts.keys RETURNING keys",
                (plugin_id, scope),
            )
            row = await cur.fetchone()
            keys = int(row["keys"]) if row else 0
            if keys >= self.keys_per_scope:
                where = f"connection {connection_id}" if connection_id else f"plugin {plugin_id}"
                raise StateLimitError(
                    f"{where} already keeps {keys} state keys; at most {self.keys_per_scope}"
                    " (delete keys with a null value)",
                    self.keys_per_scope,
                )
            cur = await conn.execute(
                "INSERT INTO plugin_state (plugin_id, scope, key, value, updated_at) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (plugin_id, scope, key) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at RETURNING (xmax = 0) AS inserted",
                (*ids, text, now),
            )
            row = await cur.fetchone()
            if row is not None and row["inserted"]:
                await conn.execute(
                    "UPDATE plugin_state_counts SET keys = keys + 1 WHERE plugin_id = %s AND scope = %s",
                    (plugin_id, scope),
                )

        await self._db.run(write)

    async def drop(self, plugin_id: str, connection_id: str | None = None) -> int:
        async def drop(conn: Conn) -> int:
            if connection_id is None:
                await conn.execute("DELETE FROM plugin_state_counts WHERE plugin_id = %s", (plugin_id,))
                cur = await conn.execute("DELETE FROM plugin_state WHERE plugin_id = %s", (plugin_id,))
                return cur.rowcount
            await conn.execute(
                "DELETE FROM plugin_state_counts WHERE plugin_id = %s AND scope = %s", (plugin_id, connection_id)
            )
            cur = await conn.execute(
                "DELETE FROM plugin_state WHERE plugin_id = %s AND scope = %s", (plugin_id, connection_id)
            )
            return cur.rowcount

        return await self._db.run(drop)


# ---------------------------------------------------------------- nodes and leases

# take a lease when it is free, expired or ours; a new owner bumps the epoch
_ACQUIRE = (
    "INSERT INTO connection_leases (connection_id, node_id, epoch, expires_at, updated_at)"
    " SELECT c, %(node)s, 1, %(until)s, %(now)s FROM unnest(%(ids)s::text[]) AS c"
    " ON CONFLICT (connection_id) DO UPDATE SET node_id = excluded.node_id,"
    " epoch = connection_leases.epoch + (connection_leases.node_id IS DISTINCT FROM excluded.node_id)::int,"
    " expires_at = excluded.expires_at, updated_at = excluded.updated_at"
    " WHERE {condition} RETURNING *"
)


class PgLeases(LeaseStore):
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def heartbeat(self, node_id: str, ttl: float, info: dict[str, Any] | None = None) -> NodeRecord:
        now = self._clock.time()

        async def beat(conn: Conn) -> dict[str, Any] | None:
            cur = await conn.execute(
                "INSERT INTO nodes (node_id, started_at, heartbeat_at, expires_at, info) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,"
                " expires_at = excluded.expires_at, info = excluded.info RETURNING *, (xmax = 0) AS joined",
                (node_id, now, now, now + ttl, _json(info or {})),
            )
            row = await cur.fetchone()
            if row is not None and row["joined"]:
                await conn.execute(notify_sql("leases"))  # a new host: rebalance now
            return row

        row = await self._db.run(beat)
        assert row is not None
        return rows.node(row)

    async def nodes(self) -> list[NodeRecord]:
        return [rows.node(r) for r in await self._db.all("SELECT * FROM nodes ORDER BY node_id")]

    async def leave(self, node_id: str) -> int:
        async def leave(conn: Conn) -> int:
            cur = await conn.execute(
                "UPDATE connection_leases SET node_id = NULL, expires_at = 0, updated_at = %s WHERE node_id = %s",
                (self._clock.time(), node_id),
            )
            await conn.execute("DELETE FROM nodes WHERE node_id = %s", (node_id,))
            await conn.execute(notify_sql("leases"))
            return cur.rowcount

        return await self._db.run(leave)

    async def prune_nodes(self, older_than: float) -> int:
        return await self._db.execute("DELETE FROM nodes WHERE expires_at <= %s", (self._clock.time() - older_than,))

    async def leases(self, node_id: str | None = None) -> list[Lease]:
        found = await self._db.all(
            "SELECT * FROM connection_leases WHERE %(node)s::text IS NULL OR node_id = %(node)s ORDER BY connection_id",
            {"node": node_id},
        )
        return [rows.lease(r) for r in found]

    async def get(self, connection_id: str) -> Lease | None:
        row = await self._db.one("SELECT * FROM connection_leases WHERE connection_id = %s", (connection_id,))
        return None if row is None else rows.lease(row)

    async def _upsert(self, condition: str, node_id: str, connection_ids: Sequence[str], ttl: float) -> list[Lease]:
        now = self._clock.time()
        found = await self._db.all(
            _ACQUIRE.format(condition=condition),
            {"node": node_id, "until": now + ttl, "now": now, "ids": list(connection_ids)},
        )
        return sorted((rows.lease(r) for r in found), key=lambda lease: lease.connection_id)

    async def acquire(self, node_id: str, connection_ids: Sequence[str], ttl: float) -> list[Lease]:
        if not connection_ids:
            return []
        return await self._upsert(
            "connection_leases.node_id IS NULL OR connection_leases.expires_at <= %(now)s"
            " OR connection_leases.node_id = excluded.node_id",
            node_id,
            sorted(set(connection_ids)),
            ttl,
        )

    async def take(self, node_id: str, connection_id: str, ttl: float) -> Lease:
        [lease] = await self._upsert("true", node_id, [connection_id], ttl)
        await self._db.execute(notify_sql("leases"))
        return lease

    async def renew(self, node_id: str, ttl: float) -> list[Lease]:
        now = self._clock.time()
        found = await self._db.all(
            "UPDATE connection_leases SET expires_at = %s, updated_at = %s WHERE node_id = %s RETURNING *",
            (now + ttl, now, node_id),
        )
        return sorted((rows.lease(r) for r in found), key=lambda lease: lease.connection_id)

    async def release(self, node_id: str, connection_ids: Sequence[str]) -> int:
        if not connection_ids:
            return 0

        async def release(conn: Conn) -> int:
            cur = await conn.execute(
                "UPDATE connection_leases SET node_id = NULL, expires_at = 0, updated_at = %s"
                " WHERE connection_id = ANY(%s::text[]) AND node_id = %s",
                (self._clock.time(), list(connection_ids), node_id),
            )
            if cur.rowcount:
                await conn.execute(notify_sql("leases"))  # others take them at once
            return cur.rowcount

        return await self._db.run(release)


# ---------------------------------------------------------------- sidecar mode (SPEC 11)


class PgForwardQueue(ForwardQueueStore):
    def __init__(self, db: Database, clock: Clock, *, lease: float = DEFAULT_LEASE) -> None:
        self._queue = _Queue(db, clock, "forward_queue", lease)

    async def enqueue(self, event: BridgeEvent) -> bool:
        q = self._queue
        key, payload, now = dedupe_key(event.connection_id, event.event_id), _json(event), q.clock.time()
        conversation = event_conversation(event)
        entry_id = await q.db.run(
            lambda conn: q.add(conn, event.connection_id, conversation, key, payload, event.peer_id, now, unique=True)
        )
        return entry_id is not None

    async def claim_ready(self, limit: int = 16, *, lease: float | None = None) -> list[ForwardEntry]:
        return [rows.forward_entry(r) for r in await self._queue.claim(limit, lease, None)]

    async def release_claims(self) -> int:
        return await self._queue.release(None)

    async def mark_sent(self, entry_id: int) -> bool:
        q = self._queue
        params = {"now": q.clock.time()}
        change = (
            "UPDATE forward_queue SET status = 'sent', head = false, claimed_until = NULL, claimed_by = NULL,"
            f" updated_at = %(now)s WHERE id = %(id)s AND {_LIVE} RETURNING channel_id, conversation"
        )
        return await q.db.run(lambda conn: q.finish_in(conn, entry_id, change, params))

    async def retry(self, entry_id: int, error: str, delay: float) -> bool:
        return await self._queue.retry(entry_id, error, delay)

    async def dead_letter(self, entry_id: int, error: str) -> bool:
        return await self._queue.dead_letter(entry_id, error)

    async def get(self, entry_id: int) -> ForwardEntry | None:
        row = await self._queue.get(entry_id)
        return None if row is None else rows.forward_entry(row)

    async def list_dead(self, limit: int = 100) -> list[ForwardEntry]:
        return [rows.forward_entry(r) for r in await self._queue.dead(limit)]

    async def pending_count(self) -> int:
        return await self._queue.pending_count()

    async def dead_count(self) -> int:
        row = await self._queue.db.one("SELECT count(*) AS n FROM forward_queue WHERE status = 'dead'")
        return int(row["n"]) if row is not None else 0

    async def prune(self, retention: float = DEDUPE_RETENTION) -> int:
        cutoff = self._queue.clock.time() - retention
        return await self._queue.db.execute(
            "DELETE FROM forward_queue WHERE status = 'sent' AND updated_at <= %s", (cutoff,)
        )


class PgSendDedupe(SendDedupeStore):
    def __init__(
        self, db: Database, clock: Clock, *, ttl: float = DEDUPE_IN_PROGRESS_TTL, retention: float = DEDUPE_RETENTION
    ) -> None:
        self._db = db
        self._clock = clock
        self.ttl = ttl
        self.retention = retention

    async def begin(self, connection_id: str, request_id: str) -> SendBegin:
        key = dedupe_key(connection_id, request_id)

        async def begin(conn: Conn) -> SendBegin:
            now = self._clock.time()
            _, fresh, _ = decide_begin(
                None, connection_id=connection_id, event_id=request_id, message_id="", now=now, ttl=self.ttl
            )
            cur = await conn.execute(
                f"INSERT INTO send_dedupe ({_DEDUPE_COLUMNS}) VALUES ({_DEDUPE_VALUES})"
                " ON CONFLICT (dedupe_key) DO NOTHING",
                _dedupe_params(fresh),
            )
            if cur.rowcount:
                return SendBegin(outcome="new", record=fresh)
            outcome, record, changed = decide_begin(
                await _get_dedupe(conn, key, for_update=True, table="send_dedupe"),
                connection_id=connection_id,
                event_id=request_id,
                message_id="",
                now=now,
                ttl=self.ttl,
            )
            if changed:  # stale or retry: processing again, without an old result
                await _put_dedupe(conn, record, "send_dedupe")
                return SendBegin(outcome=outcome, record=record)
            result = None
            if outcome == "duplicate":
                cur = await conn.execute("SELECT result FROM send_dedupe WHERE dedupe_key = %s", (key,))
                row = await cur.fetchone()
                result = _unjson(row["result"]) if row is not None else None
            return SendBegin(outcome=outcome, record=record, result=result)

        return await self._db.run(begin)

    async def complete(self, key: str, result: dict[str, Any]) -> bool:
        return (
            await self._db.execute(
                "UPDATE send_dedupe SET status = 'completed', result = %s, last_error = NULL, updated_at = %s"
                " WHERE dedupe_key = %s",
                (_json(result), self._clock.time(), key),
            )
            > 0
        )

    async def fail(self, key: str, error: str) -> bool:
        return (
            await self._db.execute(
                "UPDATE send_dedupe SET status = 'failed', last_error = %s, updated_at = %s WHERE dedupe_key = %s",
                (error, self._clock.time(), key),
            )
            > 0
        )

    async def prune(self, retention: float | None = None) -> int:
        cutoff = self._clock.time() - (self.retention if retention is None else retention)
        return await self._db.execute(
            "DELETE FROM send_dedupe WHERE status = 'completed' AND updated_at <= %s", (cutoff,)
        )


# ---------------------------------------------------------------- open


async def open_postgres_store(
    url: str,
    *,
    clock: Clock,
    cipher: CredentialCipher | None,
    dedupe_ttl: float = DEDUPE_IN_PROGRESS_TTL,
    retention: float = DEDUPE_RETENTION,
    lease: float = DEFAULT_LEASE,
) -> Store:
    db = Database(url)
    await db.open()
    bridge_dedupe = PgBridgeDedupe(db, clock, ttl=dedupe_ttl, retention=retention)
    inbox = PgInbox(db, clock, lease=lease)
    outbox = PgOutbox(db, clock, lease=lease)
    return Store(
        url=url,
        bridge_dedupe=bridge_dedupe,
        message_dedupe=PgMessageDedupe(db, clock, retention=retention),
        inbox=inbox,
        outbox=outbox,
        connections=PgConnections(db, clock, cipher),
        sessions=PgSessions(db, clock),
        kv=PgKeyValue(db, clock),
        pipeline=PgPipeline(db, clock, bridge_dedupe, inbox, outbox),
        plugin_state=PgPluginState(db, clock),
        leases=PgLeases(db, clock),
        listen=db.listen,
        close=db.close,
        shared=True,
        forward=PgForwardQueue(db, clock, lease=lease),
        send_dedupe=PgSendDedupe(db, clock, ttl=dedupe_ttl, retention=retention),
    )
