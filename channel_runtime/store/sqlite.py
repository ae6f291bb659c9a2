"""`sqlite:///PATH`: the embedded store, one SQLite file (WAL, `synchronous=NORMAL`).

Access is synchronous stdlib `sqlite3` on the event loop, one connection per
store, each method one short transaction. The statements are indexed and take
well under a millisecond, so running them inline is cheaper than a thread hop and
keeps "no threads for I/O" (STYLE). Because a method never awaits inside its
transaction, tasks of one process cannot interleave within it; read-modify-write
uses `BEGIN IMMEDIATE`, which takes the file's write lock first, so several
stores (or processes) on the same file stay atomic too (`busy_timeout` waits).

A small write transaction costs mostly its commit (WAL frames, locks, and the
checkpoints they trigger), so the per-message hot paths (`SqlitePipeline`,
`mark_sent`) share commits: `Database.batched` runs the calls of one loop turn in
one transaction, each in its own savepoint.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

import anyio
import msgspec

from plugin_host.clock import Clock
from plugin_host.files import private_database
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
    LocalNotices,
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
)

log = logging.getLogger(__name__)
T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000

# MIGRATIONS[n] takes the schema from version n to n + 1; append, never edit a released one.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE bridge_dedupe (
            dedupe_key TEXT PRIMARY KEY,
            connection_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('processing', 'completed', 'failed')),
            first_seen_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            delivery_attempts INTEGER NOT NULL,
            message_id TEXT NOT NULL DEFAULT '',
            last_error TEXT
        )""",
        "CREATE INDEX bridge_dedupe_by_status ON bridge_dedupe (status, updated_at)",
        """CREATE TABLE message_dedupe (
            channel_id TEXT NOT NULL,
            message_id TEXT NOT NULL,
            seen_at REAL NOT NULL,
            PRIMARY KEY (channel_id, message_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX message_dedupe_by_seen ON message_dedupe (seen_at)",
        # AUTOINCREMENT: ids are never reused, so a late ack cannot hit a newer entry
        """CREATE TABLE inbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            channel_id TEXT NOT NULL,
            conversation TEXT NOT NULL,
            item_key TEXT NOT NULL,
            payload TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'claimed', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            claimed_until REAL,
            last_error TEXT,
            result TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX inbox_live ON inbox (channel_id, conversation, id) WHERE status IN ('pending', 'claimed')",
        "CREATE INDEX inbox_dead ON inbox (id) WHERE status = 'dead'",
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            channel_id TEXT NOT NULL,
            conversation TEXT NOT NULL,
            item_key TEXT NOT NULL UNIQUE,
            payload TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'claimed', 'sent', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            claimed_until REAL,
            last_error TEXT,
            result TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX outbox_live ON outbox (channel_id, conversation, id) WHERE status IN ('pending', 'claimed')",
        "CREATE INDEX outbox_dead ON outbox (id) WHERE status = 'dead'",
        "CREATE INDEX outbox_sent ON outbox (updated_at) WHERE status = 'sent'",
        """CREATE TABLE connections (
            connection_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            plugin_id TEXT NOT NULL,
            channel_id TEXT NOT NULL,
            account_id TEXT NOT NULL DEFAULT '',
            display_name TEXT NOT NULL DEFAULT '',
            options TEXT NOT NULL DEFAULT '{}',
            status TEXT NOT NULL,
            error TEXT,
            credentials BLOB,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE connector_sessions (
            session_id TEXT PRIMARY KEY,
            connection_id TEXT NOT NULL REFERENCES connections (connection_id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            plugin_id TEXT NOT NULL,
            status TEXT NOT NULL,
            view TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX connector_sessions_by_connection ON connector_sessions (connection_id)",
        """CREATE TABLE kv (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at REAL NOT NULL
        )""",
    ),
    # `head` marks each conversation's earliest live entry, so a claim reads only heads
    # instead of grouping every live entry
    tuple(
        statement
        for table in ("inbox", "outbox")
        for statement in (
            f"ALTER TABLE {table} ADD COLUMN head INTEGER NOT NULL DEFAULT 0",
            f"UPDATE {table} SET head = 1 WHERE id IN (SELECT MIN(id) FROM {table}"
            " WHERE status IN ('pending', 'claimed') GROUP BY channel_id, conversation)",
            f"CREATE INDEX {table}_heads ON {table} (id) WHERE head = 1",
        )
    ),
    # host-kept plugin state (SPEC 3.4); scope '' is plugin-wide; counts keep the per-scope key limit O(1)
    (
        """CREATE TABLE plugin_state (
            plugin_id TEXT NOT NULL,
            scope TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (plugin_id, scope, key)
        ) WITHOUT ROWID""",
        """CREATE TABLE plugin_state_counts (
            plugin_id TEXT NOT NULL,
            scope TEXT NOT NULL,
            keys INTEGER NOT NULL,
            PRIMARY KEY (plugin_id, scope)
        ) WITHOUT ROWID""",
    ),
    # sidecar mode (SPEC 11): events on their way to the application (the outbox's layout, so `_Queue`
    # serves it; channel_id holds the connection id), and `/send` dedupe with each completed result
    (
        """CREATE TABLE forward_queue (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            channel_id TEXT NOT NULL,
            conversation TEXT NOT NULL,
            item_key TEXT NOT NULL UNIQUE,
            payload TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'claimed', 'sent', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            claimed_until REAL,
            last_error TEXT,
            result TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            head INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX forward_queue_live ON forward_queue (channel_id, conversation, id)"
        " WHERE status IN ('pending', 'claimed')",
        "CREATE INDEX forward_queue_heads ON forward_queue (id) WHERE head = 1",
        "CREATE INDEX forward_queue_dead ON forward_queue (id) WHERE status = 'dead'",
        "CREATE INDEX forward_queue_sent ON forward_queue (updated_at) WHERE status = 'sent'",
        """CREATE TABLE send_dedupe (
            dedupe_key TEXT PRIMARY KEY,
            connection_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('processing', 'completed', 'failed')),
            first_seen_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            delivery_attempts INTEGER NOT NULL,
            message_id TEXT NOT NULL DEFAULT '',
            last_error TEXT,
            result TEXT
        )""",
        "CREATE INDEX send_dedupe_by_status ON send_dedupe (status, updated_at)",
    ),
    # several hosts (SPEC 10): claims owned by a node, node heartbeats, connection leases
    # (the embedded store keeps the same tables so that one contract suite covers every backend)
    (
        "ALTER TABLE inbox ADD COLUMN claimed_by TEXT",
        "ALTER TABLE outbox ADD COLUMN claimed_by TEXT",
        "ALTER TABLE forward_queue ADD COLUMN claimed_by TEXT",
        "CREATE INDEX inbox_claims ON inbox (claimed_by) WHERE status = 'claimed'",
        "CREATE INDEX outbox_claims ON outbox (claimed_by) WHERE status = 'claimed'",
        """CREATE TABLE nodes (
            node_id TEXT PRIMARY KEY,
            started_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            info TEXT NOT NULL DEFAULT '{}'
        )""",
        """CREATE TABLE connection_leases (
            connection_id TEXT PRIMARY KEY,
            node_id TEXT,
            epoch INTEGER NOT NULL,
            expires_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX connection_leases_by_node ON connection_leases (node_id)",
    ),
    # deliveries tell the truth (SPEC 6.4): deferral, reasons, attempts and sent times; the
    # peers' reply windows; claims walk an index ordered by due time, so a delivery deferred
    # far ahead (until an event or its TTL) is never read while it waits
    (
        "ALTER TABLE outbox ADD COLUMN peer_id TEXT NOT NULL DEFAULT ''",
        "UPDATE outbox SET peer_id = COALESCE(json_extract(payload, '$.target.peerId'), '')",
        "ALTER TABLE outbox ADD COLUMN defer_reason TEXT",
        "ALTER TABLE outbox ADD COLUMN deferred_at REAL",
        "ALTER TABLE outbox ADD COLUMN reason TEXT",
        "ALTER TABLE outbox ADD COLUMN provider_message_id TEXT",
        "ALTER TABLE outbox ADD COLUMN sent_at REAL",
        "ALTER TABLE outbox ADD COLUMN first_attempt_at REAL",
        "ALTER TABLE outbox ADD COLUMN last_attempt_at REAL",
        "UPDATE outbox SET provider_message_id = json_extract(result, '$.providerMessageId'), sent_at = updated_at"
        " WHERE status = 'sent'",
        "UPDATE outbox SET reason = 'failed' WHERE status = 'dead'",
        "ALTER TABLE inbox ADD COLUMN peer_id TEXT NOT NULL DEFAULT ''",
        "UPDATE inbox SET peer_id = COALESCE(json_extract(payload, '$.peerId'), '')",
        "ALTER TABLE inbox ADD COLUMN reason TEXT",
        "UPDATE inbox SET reason = 'failed' WHERE status = 'dead'",
        # the sidecar's forward queue shares `_Queue`: the same columns and claim indexes
        "ALTER TABLE forward_queue ADD COLUMN peer_id TEXT NOT NULL DEFAULT ''",
        "UPDATE forward_queue SET peer_id = COALESCE(json_extract(payload, '$.peerId'), '')",
        "ALTER TABLE forward_queue ADD COLUMN reason TEXT",
        "UPDATE forward_queue SET reason = 'failed' WHERE status = 'dead'",
        *(
            statement
            for table in ("inbox", "outbox", "forward_queue")
            for statement in (
                f"DROP INDEX {table}_heads",
                f"CREATE INDEX {table}_due ON {table} (next_attempt_at, id) WHERE head = 1 AND status = 'pending'",
                f"CREATE INDEX {table}_lapsing ON {table} (claimed_until) WHERE status = 'claimed'",
            )
        ),
        "CREATE INDEX outbox_created ON outbox (created_at, id)",
        "CREATE INDEX outbox_deferred ON outbox (channel_id, defer_reason, peer_id) WHERE defer_reason IS NOT NULL",
        # one row per peer that wrote: when, replies sent since, and whether the platform closed the window
        """CREATE TABLE peers (
            channel_id TEXT NOT NULL,
            peer_id TEXT NOT NULL,
            last_inbound_at REAL,
            replies INTEGER NOT NULL DEFAULT 0,
            closed INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (channel_id, peer_id)
        ) WITHOUT ROWID""",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode("utf-8")


_unjson = rows.unjson


class _Batched(Generic[T]):
    """One `Database.batched` call waiting for its shared transaction."""

    def __init__(
        self,
        work: Callable[[sqlite3.Connection], T],
        recover: Callable[[sqlite3.Connection, Exception], None] | None,
        savepoint: bool = True,
    ) -> None:
        self.work = work
        self.recover = recover
        self.savepoint = savepoint
        self.result: T | None = None
        self.error: BaseException | None = None
        self.done: anyio.Event | None = None  # only a caller that waits for another's transaction needs one


class Database:
    """One SQLite connection with the pragmas, migrations and transaction helpers."""

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            private_database(Path(path))  # SPEC 8: the state database is 0600
        # isolation_level=None: no implicit transactions; we BEGIN ourselves
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        self.conn.row_factory = sqlite3.Row
        self._batch: list[_Batched[Any]] = []
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except BaseException:
            self.conn.close()
            raise

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A `BEGIN IMMEDIATE` transaction: committed on success, rolled back on any error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:  # SQLite may already have rolled back (disk full, ...)
                self.conn.execute("ROLLBACK")
            raise

    async def batched(
        self,
        work: Callable[[sqlite3.Connection], T],
        recover: Callable[[sqlite3.Connection, Exception], None] | None = None,
        *,
        atomic: bool = False,
    ) -> T:
        """`work(conn)` in a write transaction shared with the `batched` calls of the same loop turn.

        Group commit: the commit (WAL append, locks, and the checkpoints it
        triggers) dominates a small transaction, so concurrent callers share one.
        Each `work` runs in its own savepoint, so it is still all or nothing; when
        it raises, its changes are rolled back, `recover(conn, exc)` runs in their
        place, and only its caller sees the error. Nobody returns before the commit.
        `atomic`: `work` is all or nothing by itself (it changes the database with
        one statement, which SQLite makes atomic, or within its own savepoint), so
        it needs none from here: two statements fewer on a per-event hot path.
        """
        item = _Batched(work, recover, savepoint=not atomic)
        self._batch.append(item)
        if len(self._batch) == 1:  # the first caller of this turn runs the transaction
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0)  # one loop turn: callers meanwhile join
                batch, self._batch = self._batch, []
                self._run_batch(batch)
        else:
            item.done = anyio.Event()
            await item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[return-value]

    def _run_batch(self, batch: list[_Batched[Any]]) -> None:
        conn = self.conn
        try:
            with self.write():
                for item in batch:
                    if item.savepoint:
                        conn.execute("SAVEPOINT item")
                    try:
                        item.result = item.work(conn)
                    except Exception as exc:
                        if not conn.in_transaction:
                            raise  # SQLite ended the whole transaction (disk full, I/O error, ...)
                        if item.savepoint:
                            conn.execute("ROLLBACK TO item")
                        item.error = exc
                        self._recover(item, exc, conn)
                    if item.savepoint:
                        conn.execute("RELEASE item")
        except Exception as exc:
            for item in batch:  # nothing was committed: every caller fails, each recovers on its own
                item.result = None
                if item.error is None:
                    item.error = exc
                if item.recover is not None:
                    try:
                        with self.write() as own:
                            item.recover(own, item.error if isinstance(item.error, Exception) else exc)
                    except Exception:
                        log.exception("recording a failed store operation failed")
        except BaseException as exc:
            for item in batch:
                item.error, item.result = exc, None
            raise
        finally:
            for item in batch:
                if item.done is not None:
                    item.done.set()

    @staticmethod
    def _recover(item: _Batched[Any], exc: Exception, conn: sqlite3.Connection) -> None:
        if item.recover is None:
            return
        conn.execute("SAVEPOINT recover")
        try:
            item.recover(conn, exc)
        except Exception:
            if not conn.in_transaction:
                raise
            conn.execute("ROLLBACK TO recover")
            log.exception("recording a failed store operation failed")
        conn.execute("RELEASE recover")

    def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def _migrate(self) -> None:
        with self.write() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"the store's schema version {current} is newer than this channel-runtime "
                    f"understands ({SCHEMA_VERSION}); upgrade channel-runtime"
                )
            for version in range(current, SCHEMA_VERSION):
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version + 1,))

    def close(self) -> None:
        self.conn.close()


# ---------------------------------------------------------------- dedupe


def _get_dedupe(conn: sqlite3.Connection, key: str, table: str = "bridge_dedupe") -> DedupeRecord | None:
    row = conn.execute(f"SELECT * FROM {table} WHERE dedupe_key = ?", (key,)).fetchone()
    return None if row is None else rows.dedupe_record(row)


def _put_dedupe(conn: sqlite3.Connection, record: DedupeRecord, table: str = "bridge_dedupe") -> None:
    conn.execute(
        f"INSERT OR REPLACE INTO {table} (dedupe_key, connection_id, event_id, status,"
        " first_seen_at, updated_at, delivery_attempts, message_id, last_error)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.dedupe_key,
            record.connection_id,
            record.event_id,
            record.status,
            record.first_seen_at,
            record.updated_at,
            record.delivery_attempts,
            record.message_id,
            record.last_error,
        ),
    )


class SqliteBridgeDedupe(BridgeDedupeStore):
    def __init__(
        self, db: Database, clock: Clock, *, ttl: float = DEDUPE_IN_PROGRESS_TTL, retention: float = DEDUPE_RETENTION
    ) -> None:
        self._db = db
        self._clock = clock
        self.ttl = ttl
        self.retention = retention

    async def begin(self, connection_id: str, event_id: str, message_id: str = "") -> BeginResult:
        with self._db.write() as conn:
            outcome, record, changed = decide_begin(
                _get_dedupe(conn, dedupe_key(connection_id, event_id)),
                connection_id=connection_id,
                event_id=event_id,
                message_id=message_id,
                now=self._clock.time(),
                ttl=self.ttl,
            )
            if changed:
                _put_dedupe(conn, record)
        return BeginResult(outcome=outcome, record=record)

    async def complete(self, key: str) -> bool:
        with self._db.write() as conn:
            cur = conn.execute(
                "UPDATE bridge_dedupe SET status = 'completed', last_error = NULL, updated_at = ? WHERE dedupe_key = ?",
                (self._clock.time(), key),
            )
        return cur.rowcount > 0

    async def fail(self, key: str, error: str) -> bool:
        with self._db.write() as conn:
            cur = conn.execute(
                "UPDATE bridge_dedupe SET status = 'failed', last_error = ?, updated_at = ? WHERE dedupe_key = ?",
                (error, self._clock.time(), key),
            )
        return cur.rowcount > 0

    async def get(self, key: str) -> DedupeRecord | None:
        row = self._db.one("SELECT * FROM bridge_dedupe WHERE dedupe_key = ?", (key,))
        return None if row is None else rows.dedupe_record(row)

    async def prune(self, retention: float | None = None) -> int:
        cutoff = self._clock.time() - (self.retention if retention is None else retention)
        with self._db.write() as conn:
            cur = conn.execute("DELETE FROM bridge_dedupe WHERE status = 'completed' AND updated_at <= ?", (cutoff,))
        return cur.rowcount


def _seen_or_mark(conn: sqlite3.Connection, channel_id: str, message_id: str, now: float) -> bool:
    cur = conn.execute(
        "INSERT INTO message_dedupe (channel_id, message_id, seen_at) VALUES (?, ?, ?)"
        " ON CONFLICT (channel_id, message_id) DO NOTHING",
        (channel_id, message_id, now),
    )
    return cur.rowcount == 0


class SqliteMessageDedupe(MessageDedupeStore):
    def __init__(self, db: Database, clock: Clock, *, retention: float = DEDUPE_RETENTION) -> None:
        self._db = db
        self._clock = clock
        self.retention = retention

    async def seen_or_mark(self, channel_id: str, message_id: str) -> bool:
        with self._db.write() as conn:
            return _seen_or_mark(conn, channel_id, message_id, self._clock.time())

    async def prune(self, retention: float | None = None) -> int:
        cutoff = self._clock.time() - (self.retention if retention is None else retention)
        with self._db.write() as conn:
            return conn.execute("DELETE FROM message_dedupe WHERE seen_at <= ?", (cutoff,)).rowcount


# ---------------------------------------------------------------- queues

_LIVE = "status IN ('pending', 'claimed')"  # spelled as in the partial indexes, so the planner uses them
_NEWER_FIRST = "ORDER BY created_at DESC, id DESC"
_BEFORE = "(created_at, id) < (?, ?)"  # a row value: standard SQL, and the order of the listing


class _Queue:
    """Inbox and outbox share one table layout and one claim/retry/dead-letter logic.

    Invariant: `head = 1` on exactly one live entry of each conversation that has
    live entries: its earliest, except after a `revive`, which joins a busy
    conversation behind its head. `add` sets it on an entry that starts a
    conversation; whatever finishes an entry (ack, sent, dead) hands it on with
    `promote` (to the earliest live entry). A claim walks the `{table}_due` index
    (pending heads by due time) and stops at `limit` or at the first head not due.
    """

    def __init__(self, db: Database, clock: Clock, table: str, lease: float) -> None:
        self.db = db
        self.clock = clock
        self.table = table
        self.lease = lease
        self._idle = True  # the last claim found nothing
        t = table
        self._insert = (
            f"INSERT INTO {t} (channel_id, conversation, item_key, payload, peer_id, status, attempts,"
            " next_attempt_at, created_at, updated_at, head) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?6, ?6,"
            f" NOT EXISTS (SELECT 1 FROM {t} WHERE channel_id = ?1 AND conversation = ?2 AND {_LIVE}))"
        )
        claim = (
            f"UPDATE {t} SET status = 'claimed', claimed_until = ?1, claimed_by = ?4, attempts = attempts + 1,"
            " updated_at = ?2"
        )
        # only the channels a host may serve, when it names them (SPEC 10)
        self._of_channels = "(?5 IS NULL OR channel_id IN (SELECT value FROM json_each(?5)))"
        # two index walks: claims whose holder vanished (rare), then due heads, earliest first
        self._claim_lapsed = (
            f"{claim} WHERE id IN (SELECT id FROM {t} WHERE status = 'claimed' AND claimed_until <= ?2"
            f" AND {self._of_channels} ORDER BY claimed_until LIMIT ?3) RETURNING *"
        )
        self._claim_due = (
            f"{claim} WHERE id IN (SELECT id FROM {t} WHERE head = 1 AND status = 'pending'"
            f" AND next_attempt_at <= ?2 AND {self._of_channels} ORDER BY next_attempt_at, id LIMIT ?3) RETURNING *"
        )
        self._promote = (
            f"UPDATE {t} SET head = 1 WHERE id = (SELECT id FROM {t}"
            f" WHERE channel_id = ? AND conversation = ? AND {_LIVE} ORDER BY id LIMIT 1) AND head = 0"
        )
        self._revive = (
            f"UPDATE {t} SET status = 'pending', attempts = 0, next_attempt_at = ?1, claimed_until = NULL, claimed_by = NULL,"
            " reason = NULL, updated_at = ?1{extra},"
            f" head = NOT EXISTS (SELECT 1 FROM {t} AS other WHERE other.channel_id = {t}.channel_id"
            f" AND other.conversation = {t}.conversation AND other.status IN ('pending', 'claimed'))"
            " WHERE id = ?2 AND status = 'dead' RETURNING *"
        )

    def add(
        self,
        conn: sqlite3.Connection,
        channel_id: str,
        conversation: str,
        key: str,
        payload: str,
        peer_id: str,
        now: float,
        *,
        unique: bool = False,
    ) -> int | None:
        """Insert a pending entry; its id, or None when `unique` and `key` is already known."""
        sql = (self._insert + " ON CONFLICT (item_key) DO NOTHING") if unique else self._insert
        cur = conn.execute(sql, (channel_id, conversation, key, payload, peer_id, now))
        return cur.lastrowid if cur.rowcount > 0 else None

    def promote(self, conn: sqlite3.Connection, channel_id: str, conversation: str) -> None:
        """Mark the conversation's earliest live entry as its head (after one finished)."""
        conn.execute(self._promote, (channel_id, conversation))

    def claim(
        self, limit: int, lease: float | None, owner: str | None = None, channels: Collection[str] | None = None
    ) -> list[sqlite3.Row]:
        now = self.clock.time()
        wanted = None if channels is None else _json(sorted(channels))
        if not self.worth_claiming(now, wanted):
            return []
        with self.db.write() as conn:
            return self.claim_in(conn, now, limit, lease, owner, wanted)

    def worth_claiming(self, now: float, wanted: str | None = None) -> bool:
        """After an empty claim: two index reads instead of a write transaction when nothing is due."""
        if not self._idle:
            return True
        due = self._next_due(wanted)
        return due is not None and due <= now

    def claim_in(
        self,
        conn: sqlite3.Connection,
        now: float,
        limit: int,
        lease: float | None,
        owner: str | None = None,
        wanted: str | None = None,
    ) -> list[sqlite3.Row]:
        """Claim in the caller's write transaction: lapsed claims first, then due heads; by id."""
        until = now + (self.lease if lease is None else lease)
        found = conn.execute(self._claim_lapsed, (until, now, limit, owner, wanted)).fetchall()
        if len(found) < limit:
            found += conn.execute(self._claim_due, (until, now, limit - len(found), owner, wanted)).fetchall()
        self._idle = not found
        return sorted(found, key=lambda r: r["id"])

    def next_due(self, channels: Collection[str] | None = None) -> float | None:
        return self._next_due(None if channels is None else _json(sorted(channels)))

    def _next_due(self, wanted: str | None) -> float | None:
        t, of_channels = self.table, self._of_channels.replace("?5", "?1")
        due = self.db.one(
            f"SELECT MIN(next_attempt_at) FROM {t} WHERE head = 1 AND status = 'pending' AND {of_channels}", (wanted,)
        )
        lapse = self.db.one(f"SELECT MIN(claimed_until) FROM {t} WHERE status = 'claimed' AND {of_channels}", (wanted,))
        times = [float(r[0]) for r in (due, lapse) if r is not None and r[0] is not None]
        return min(times) if times else None

    def release(self, owner: str | None = None) -> int:
        with self.db.write() as conn:
            return conn.execute(
                f"UPDATE {self.table} SET status = 'pending', claimed_until = NULL, claimed_by = NULL, updated_at = ?1"
                " WHERE status = 'claimed' AND (?2 IS NULL OR claimed_by = ?2)",
                (self.clock.time(), owner),
            ).rowcount

    def renew(self, owner: str, lease: float) -> int:
        with self.db.write() as conn:
            return conn.execute(
                f"UPDATE {self.table} SET claimed_until = ? WHERE status = 'claimed' AND claimed_by = ?",
                (self.clock.time() + lease, owner),
            ).rowcount

    def update_live(
        self, conn: sqlite3.Connection, entry_id: int, sql_set: str, params: Sequence[Any]
    ) -> sqlite3.Row | None:
        """Change a live (pending or claimed) entry; None when it is unknown or already finished."""
        row: sqlite3.Row | None = conn.execute(
            f"UPDATE {self.table} SET {sql_set}, updated_at = ? WHERE id = ? AND {_LIVE}"
            " RETURNING channel_id, conversation, peer_id, status",
            (*params, self.clock.time(), entry_id),
        ).fetchone()
        if row is not None and row["status"] not in ("pending", "claimed"):
            self.promote(conn, row["channel_id"], row["conversation"])
        return row

    def finish(self, entry_id: int, sql_set: str, params: Sequence[Any]) -> bool:
        with self.db.write() as conn:
            return self.update_live(conn, entry_id, sql_set, params) is not None

    def retry(self, entry_id: int, error: str, delay: float, attempt: str = "", params: Sequence[Any] = ()) -> bool:
        due = self.clock.time() + max(0.0, delay)
        return self.finish(
            entry_id,
            f"status = 'pending', claimed_until = NULL, claimed_by = NULL, last_error = ?, next_attempt_at = ?{attempt}",
            (error, due, *params),
        )

    def dead_letter(
        self,
        entry_id: int,
        error: str,
        reason: DeadReason = "failed",
        attempt: str = "",
        params: Sequence[Any] = (),
    ) -> bool:
        return self.finish(
            entry_id,
            f"status = 'dead', head = 0, claimed_until = NULL, claimed_by = NULL, last_error = ?, reason = ?{attempt}",
            (error, reason, *params),
        )

    def revive(self, entry_id: int, extra: str = "") -> sqlite3.Row | None:
        with self.db.write() as conn:
            row: sqlite3.Row | None = conn.execute(
                self._revive.format(extra=extra), (self.clock.time(), entry_id)
            ).fetchone()
        return row

    def discard(self, entry_id: int) -> bool:
        with self.db.write() as conn:
            return conn.execute(f"DELETE FROM {self.table} WHERE id = ? AND status = 'dead'", (entry_id,)).rowcount > 0

    def get(self, entry_id: int) -> sqlite3.Row | None:
        return self.db.one(f"SELECT * FROM {self.table} WHERE id = ?", (entry_id,))

    def dead(self, limit: int) -> list[sqlite3.Row]:
        """Dead entries, oldest first."""
        return self.db.all(f"SELECT * FROM {self.table} WHERE status = 'dead' ORDER BY id LIMIT ?", (limit,))

    def listing(self, where: list[str], params: list[Any], limit: int, before: Page | None) -> list[sqlite3.Row]:
        """Rows matching every `where` fragment (ours, never input), newest first, from `before` on."""
        if before is not None:
            where = [*where, _BEFORE]
            params = [*params, before.created_at, before.id]
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return self.db.all(f"SELECT * FROM {self.table}{clause} {_NEWER_FIRST} LIMIT ?", (*params, max(0, limit)))

    def pending_count(self) -> int:
        row = self.db.one(f"SELECT COUNT(*) FROM {self.table} WHERE {_LIVE}")
        return int(row[0]) if row is not None else 0


def _record_inbound(conn: sqlite3.Connection, channel_id: str, peer_id: str, now: float, window: bool) -> int:
    """The peer wrote: its deliveries deferred for it are due now, and (`window`) its reply window opens afresh."""
    if window:  # a channel without a reply window never reads it: no write on its hot path
        conn.execute(
            "INSERT INTO peers (channel_id, peer_id, last_inbound_at, replies, closed) VALUES (?, ?, ?, 0, 0)"
            " ON CONFLICT (channel_id, peer_id) DO UPDATE SET last_inbound_at = excluded.last_inbound_at,"
            " replies = 0, closed = 0",
            (channel_id, peer_id, now),
        )
    return conn.execute(
        "UPDATE outbox SET defer_reason = NULL, next_attempt_at = ?1, updated_at = ?1"
        " WHERE channel_id = ?2 AND peer_id = ?3 AND defer_reason = 'reply_window' AND status = 'pending'",
        (now, channel_id, peer_id),
    ).rowcount


class SqliteInbox(InboxStore):
    def __init__(self, db: Database, clock: Clock, *, lease: float = DEFAULT_LEASE) -> None:
        self._queue = _Queue(db, clock, "inbox", lease)

    def commit_in(
        self, conn: sqlite3.Connection, message: InboundMessage, now: float, window: bool = True
    ) -> InboxEntry | None:
        """`commit` inside the caller's transaction."""
        if _seen_or_mark(conn, message.channel_id, message.message_id, now):
            return None
        session_id = message.session_id
        entry_id = self._queue.add(
            conn, message.channel_id, session_id, message.message_id, _json(message), message.peer_id, now
        )
        assert entry_id is not None
        _record_inbound(conn, message.channel_id, message.peer_id, now, window)
        # built from what was written: no read-back, no second decode
        return InboxEntry(
            id=entry_id,
            channel_id=message.channel_id,
            session_id=session_id,
            message=message,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            claimed_until=None,
            last_error=None,
            created_at=now,
            updated_at=now,
        )

    def ack_in(self, conn: sqlite3.Connection, entry_id: int) -> bool:
        """`ack` inside the caller's transaction."""
        row = conn.execute(
            f"DELETE FROM inbox WHERE id = ? AND {_LIVE} RETURNING channel_id, conversation", (entry_id,)
        ).fetchone()
        if row is None:
            return False
        self._queue.promote(conn, row["channel_id"], row["conversation"])
        return True

    async def commit(self, message: InboundMessage, *, window: bool = True) -> InboxEntry | None:
        q = self._queue
        with q.db.write() as conn:  # the dedupe mark and the entry land together or not at all
            return self.commit_in(conn, message, q.clock.time(), window)

    async def claim_ready(
        self, limit: int = 16, *, lease: float | None = None, owner: str | None = None
    ) -> list[InboxEntry]:
        return [rows.inbox_entry(r) for r in self._queue.claim(limit, lease, owner)]

    async def release_claims(self, owner: str | None = None) -> int:
        return self._queue.release(owner)

    async def renew_claims(self, owner: str, lease: float) -> int:
        return self._queue.renew(owner, lease)

    async def next_due(self) -> float | None:
        return self._queue.next_due()

    async def ack(self, entry_id: int) -> bool:
        with self._queue.db.write() as conn:
            return self.ack_in(conn, entry_id)

    async def retry(self, entry_id: int, error: str, delay: float) -> bool:
        return self._queue.retry(entry_id, error, delay)

    async def dead_letter(self, entry_id: int, error: str, *, reason: DeadReason = "failed") -> bool:
        return self._queue.dead_letter(entry_id, error, reason)

    async def get(self, entry_id: int) -> InboxEntry | None:
        row = self._queue.get(entry_id)
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
        found = self._queue.listing(["status = 'dead'", *where], params, limit, before)
        return [rows.inbox_entry(r) for r in found]

    async def dead_count(self) -> int:
        row = self._queue.db.one("SELECT COUNT(*) FROM inbox WHERE status = 'dead'")
        return int(row[0]) if row is not None else 0

    async def revive(self, entry_id: int) -> InboxEntry | None:
        row = self._queue.revive(entry_id)
        return None if row is None else rows.inbox_entry(row)

    async def discard(self, entry_id: int) -> bool:
        return self._queue.discard(entry_id)

    async def pending_count(self) -> int:
        return self._queue.pending_count()


def _filters(channel_id: str | None, peer_id: str | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("channel_id", channel_id), ("peer_id", peer_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    return where, params


# the public states of SPEC 6.4 over the stored columns
_STATE_WHERE: dict[str, str] = {
    "queued": "status = 'pending' AND defer_reason IS NULL",
    "deferred": "status = 'pending' AND defer_reason IS NOT NULL",
    "sending": "status = 'claimed'",
    "sent": "status = 'sent'",
    "dead": "status = 'dead'",
}
# an attempt's times: the first one stays, the last one moves
_ATTEMPT = ", first_attempt_at = COALESCE(first_attempt_at, ?), last_attempt_at = COALESCE(?, last_attempt_at)"


_PeerCalls = list[PeerCall]  # named before the class whose `list` method shadows the builtin


class SqliteOutbox(OutboxStore):
    def __init__(self, db: Database, clock: Clock, *, lease: float = DEFAULT_LEASE) -> None:
        self._queue = _Queue(db, clock, "outbox", lease)

    def enqueue_in(
        self,
        conn: sqlite3.Connection,
        channel_id: str,
        request_id: str,
        payload: dict[str, Any],
        conversation: str | None,
        peer_id: str | None,
        now: float,
    ) -> int | None:
        """`enqueue` inside the caller's transaction."""
        return self._queue.add(
            conn,
            channel_id,
            conversation or outbox_conversation(request_id),
            request_id,
            _json(payload),
            payload_peer_id(payload) if peer_id is None else peer_id,
            now,
            unique=True,
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
        with q.db.write() as conn:
            return self.enqueue_in(conn, channel_id, request_id, payload, conversation, peer_id, q.clock.time())

    async def claim_ready(
        self,
        limit: int = 16,
        *,
        lease: float | None = None,
        owner: str | None = None,
        channels: Collection[str] | None = None,
    ) -> list[OutboxEntry]:
        return [rows.outbox_entry(r) for r in self._queue.claim(limit, lease, owner, channels)]

    async def release_claims(self, owner: str | None = None) -> int:
        return self._queue.release(owner)

    async def renew_claims(self, owner: str, lease: float) -> int:
        return self._queue.renew(owner, lease)

    async def next_due(self, *, channels: Collection[str] | None = None) -> float | None:
        return self._queue.next_due(channels)

    async def mark_sent(
        self, entry_id: int, result: dict[str, Any] | None = None, *, attempted_at: float | None = None
    ) -> bool:
        q = self._queue
        provider_id = result.get("providerMessageId") if isinstance(result, dict) else None
        params = (
            None if result is None else _json(result),
            provider_id if isinstance(provider_id, str) else None,
            q.clock.time(),
            attempted_at,
            attempted_at,
        )

        def sent(conn: sqlite3.Connection) -> bool:
            row = q.update_live(
                conn,
                entry_id,
                "status = 'sent', head = 0, claimed_until = NULL, claimed_by = NULL, defer_reason = NULL, result = ?,"
                " provider_message_id = ?, sent_at = ?" + _ATTEMPT,
                params,
            )
            if row is None:
                return False
            # one more reply in the peer's window (maxRepliesPerInbound), in the same transaction
            conn.execute(
                "UPDATE peers SET replies = replies + 1 WHERE channel_id = ? AND peer_id = ?",
                (row["channel_id"], row["peer_id"]),
            )
            return True

        return await q.db.batched(sent)  # the dispatcher's deliveries finish together: share their commit

    async def retry(self, entry_id: int, error: str, delay: float, *, attempted_at: float | None = None) -> bool:
        return self._queue.retry(entry_id, error, delay, _ATTEMPT, (attempted_at, attempted_at))

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
        with q.db.write() as conn:
            row = conn.execute(
                f"SELECT channel_id, peer_id FROM outbox WHERE id = ? AND {_LIVE}", (entry_id,)
            ).fetchone()
            if row is None:
                return False
            missed = False
            if reason == "reply_window":
                peer = conn.execute(
                    "SELECT last_inbound_at FROM peers WHERE channel_id = ? AND peer_id = ?",
                    (row["channel_id"], row["peer_id"]),
                ).fetchone()
                missed = peer is not None and peer[0] is not None and float(peer[0]) > since
                if attempted_at is not None and not missed:
                    # the platform closed the window (-32016): it stays closed until the peer writes again
                    conn.execute(
                        "INSERT INTO peers (channel_id, peer_id, last_inbound_at, replies, closed)"
                        " VALUES (?, ?, NULL, 0, 1) ON CONFLICT (channel_id, peer_id) DO UPDATE SET closed = 1",
                        (row["channel_id"], row["peer_id"]),
                    )
            return (
                q.update_live(
                    conn,
                    entry_id,
                    "status = 'pending', claimed_until = NULL, claimed_by = NULL, defer_reason = ?, next_attempt_at = ?,"
                    " deferred_at = COALESCE(deferred_at, ?), last_error = COALESCE(?, last_error),"
                    " attempts = attempts - ?" + _ATTEMPT,
                    (
                        None if missed else reason,
                        now if missed else due,
                        now,
                        error,
                        0 if counted else 1,
                        attempted_at,
                        attempted_at,
                    ),
                )
                is not None
            )

    async def release(self, reason: DeferReason, *, channel_id: str | None = None, peer_id: str | None = None) -> int:
        check_defer_reason(reason)
        now = self._queue.clock.time()
        where, params = _filters(channel_id, peer_id)
        with self._queue.db.write() as conn:
            return conn.execute(
                "UPDATE outbox SET defer_reason = NULL, next_attempt_at = ?, updated_at = ?"
                f" WHERE {' AND '.join([*where, 'defer_reason = ?'])} AND status = 'pending'",
                (now, now, *params, reason),
            ).rowcount

    async def release_entries(self, entry_ids: Sequence[int]) -> int:
        if not entry_ids:
            return 0
        now = self._queue.clock.time()
        marks = ", ".join("?" for _ in entry_ids)
        with self._queue.db.write() as conn:
            return conn.execute(
                "UPDATE outbox SET defer_reason = NULL, next_attempt_at = ?, updated_at = ?"
                f" WHERE id IN ({marks}) AND defer_reason IS NOT NULL AND status = 'pending'",
                (now, now, *entry_ids),
            ).rowcount

    async def dead_letter(
        self, entry_id: int, error: str, *, reason: DeadReason = "failed", attempted_at: float | None = None
    ) -> bool:
        return self._queue.dead_letter(
            entry_id, error, reason, ", defer_reason = NULL" + _ATTEMPT, (attempted_at, attempted_at)
        )

    async def revive(self, entry_id: int) -> OutboxEntry | None:
        row = self._queue.revive(entry_id, ", defer_reason = NULL, deferred_at = NULL")
        return None if row is None else rows.outbox_entry(row)

    async def discard(self, entry_id: int) -> bool:
        return self._queue.discard(entry_id)

    async def get(self, entry_id: int) -> OutboxEntry | None:
        row = self._queue.get(entry_id)
        return None if row is None else rows.outbox_entry(row)

    async def get_by_request_id(self, request_id: str) -> OutboxEntry | None:
        row = self._queue.db.one("SELECT * FROM outbox WHERE item_key = ?", (request_id,))
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
        return [rows.outbox_entry(r) for r in self._queue.listing(where, params, limit, before)]

    async def counts(self) -> dict[DeliveryState, int]:
        counts: dict[DeliveryState, int] = {"queued": 0, "sending": 0, "deferred": 0, "dead": 0}
        for row in self._queue.db.all(
            "SELECT CASE WHEN status = 'claimed' THEN 'sending' WHEN defer_reason IS NULL THEN 'queued'"
            f" ELSE 'deferred' END AS state, COUNT(*) AS n FROM outbox WHERE {_LIVE} GROUP BY 1"
        ):
            counts[row["state"]] = int(row["n"])
        dead = self._queue.db.one("SELECT COUNT(*) FROM outbox WHERE status = 'dead'")
        counts["dead"] = int(dead[0]) if dead is not None else 0
        return counts

    async def pending_count(self) -> int:
        return self._queue.pending_count()

    async def peer_window(self, channel_id: str, peer_id: str) -> PeerWindow | None:
        row = self._queue.db.one(
            "SELECT last_inbound_at, replies, closed FROM peers WHERE channel_id = ? AND peer_id = ?",
            (channel_id, peer_id),
        )
        if row is None:
            return None
        return PeerWindow(rows.float_or_none(row["last_inbound_at"]), int(row["replies"]), bool(row["closed"]))

    async def recent_calls(self, since: float) -> _PeerCalls:
        found = self._queue.db.all(
            "SELECT channel_id, peer_id, last_attempt_at FROM outbox"
            " WHERE status = 'sent' AND updated_at >= ?1 AND last_attempt_at >= ?1"
            f" UNION ALL SELECT channel_id, peer_id, last_attempt_at FROM outbox WHERE {_LIVE}"
            " AND last_attempt_at >= ?1"
            " UNION ALL SELECT channel_id, peer_id, last_attempt_at FROM outbox WHERE status = 'dead'"
            " AND last_attempt_at >= ?1",
            (since,),
        )
        calls = [PeerCall(r["channel_id"], r["peer_id"], float(r["last_attempt_at"])) for r in found]
        return sorted(calls, key=lambda c: c.at)

    async def prune(self, retention: float = DEDUPE_RETENTION) -> int:
        cutoff = self._queue.clock.time() - retention
        with self._queue.db.write() as conn:
            conn.execute("DELETE FROM peers WHERE last_inbound_at IS NULL OR last_inbound_at <= ?", (cutoff,))
            return conn.execute("DELETE FROM outbox WHERE status = 'sent' AND updated_at <= ?", (cutoff,)).rowcount


# ---------------------------------------------------------------- pipeline


class SqlitePipeline(PipelineStore):
    """Each call one atomic unit (a savepoint) of a group-committed transaction (`Database.batched`)."""

    def __init__(
        self, db: Database, clock: Clock, dedupe: SqliteBridgeDedupe, inbox: SqliteInbox, outbox: SqliteOutbox
    ) -> None:
        self._db = db
        self._clock = clock
        self._dedupe = dedupe
        self._inbox = inbox
        self._outbox = outbox

    async def accept_event(
        self, connection_id: str, event_id: str, message: InboundMessage, *, window: bool = True
    ) -> tuple[BeginResult, InboxEntry | None]:
        key = dedupe_key(connection_id, event_id)
        existing: DedupeRecord | None = None
        begun: DedupeRecord | None = None

        def accept(conn: sqlite3.Connection) -> tuple[BeginResult, InboxEntry | None]:
            nonlocal existing, begun
            now = self._clock.time()
            existing = _get_dedupe(conn, key)
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
            entry = self._inbox.commit_in(conn, message, now, window)
            record = msgspec.structs.replace(record, status="completed", last_error=None)
            _put_dedupe(conn, record)
            return BeginResult(outcome=outcome, record=record), entry

        def record_failure(conn: sqlite3.Connection, exc: Exception) -> None:
            """After the rollback: the record as `begin` then `fail` would have left it (SPEC 6.3)."""
            if begun is None:
                return
            # compare-and-set: a delivery that got in since (another process) owns the record now
            if _get_dedupe(conn, key) == existing:
                _put_dedupe(
                    conn,
                    msgspec.structs.replace(
                        begun, status="failed", last_error=error_text(exc), updated_at=self._clock.time()
                    ),
                )

        return await self._db.batched(accept, record_failure)

    async def finish_inbound(self, entry_id: int, deliveries: Sequence[Delivery]) -> list[bool] | None:
        def finish(conn: sqlite3.Connection) -> list[bool] | None:
            if not self._inbox.ack_in(conn, entry_id):
                return None
            now = self._clock.time()
            return [
                self._outbox.enqueue_in(conn, d.channel_id, d.request_id, d.payload, d.conversation, d.peer_id, now)
                is not None
                for d in deliveries
            ]

        return await self._db.batched(finish)


# ---------------------------------------------------------------- connections and sessions

_CONNECTION_COLUMNS = (
    "connection_id, kind, plugin_id, channel_id, account_id, display_name, options, status, error,"
    " credentials IS NOT NULL AS has_credentials, created_at, updated_at"
)  # never the credentials themselves


class SqliteConnections(ConnectionStore):
    """Connections; records are cached (every inbound event looks its connection up).

    Our own writes refresh the cache; a commit by any other connection to the file
    (another process) changes `PRAGMA data_version`, which drops the whole cache.
    """

    def __init__(self, db: Database, clock: Clock, cipher: CredentialCipher | None) -> None:
        self._db = db
        self._clock = clock
        self._cipher = cipher
        self._cache: dict[str, ConnectionRecord] = {}
        self._data_version: int | None = None

    def _fresh_cache(self) -> dict[str, ConnectionRecord]:
        row = self._db.one("PRAGMA data_version")
        assert row is not None  # a PRAGMA always answers one row
        version = row[0]
        if version != self._data_version:
            self._cache.clear()
            self._data_version = version
        return self._cache

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
        try:
            with self._db.write() as conn:
                row = conn.execute(
                    "INSERT INTO connections (connection_id, kind, plugin_id, channel_id, account_id, display_name,"
                    " options, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    f" RETURNING {_CONNECTION_COLUMNS}",
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
                ).fetchone()
        except sqlite3.IntegrityError:
            raise StoreError(f"connection {connection_id} already exists") from None
        return rows.connection(row)

    async def get(self, connection_id: str) -> ConnectionRecord | None:
        cache = self._fresh_cache()
        record = cache.get(connection_id)
        if record is None:
            row = self._db.one(
                f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE connection_id = ?", (connection_id,)
            )
            if row is None:
                return None  # misses are not cached: unknown ids must not grow it
            record = cache[connection_id] = rows.connection(row)
        return record

    async def list(
        self, *, status: str | None = None, kind: str | None = None, plugin_id: str | None = None
    ) -> list[ConnectionRecord]:
        found = self._db.all(
            f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE (?1 IS NULL OR status = ?1)"
            " AND (?2 IS NULL OR kind = ?2) AND (?3 IS NULL OR plugin_id = ?3) ORDER BY created_at, rowid",
            (status, kind, plugin_id),
        )
        return [rows.connection(r) for r in found]

    def _update(self, connection_id: str, changes: dict[str, Any], fence: LeaseFence | None = None) -> ConnectionRecord:
        changes["updated_at"] = self._clock.time()
        assignments = ", ".join(f"{column} = ?" for column in changes)  # column names are ours, not input
        with self._db.write() as conn:
            if fence is not None:
                check_fence(_get_lease(conn, connection_id), fence, connection_id)
            row = conn.execute(
                f"UPDATE connections SET {assignments} WHERE connection_id = ? RETURNING {_CONNECTION_COLUMNS}",
                (*changes.values(), connection_id),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"unknown connection {connection_id}")
        record = self._fresh_cache()[connection_id] = rows.connection(row)
        return record

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
        return self._update(connection_id, changes)

    async def update_status(
        self, connection_id: str, status: ConnectionState, error: str | None = None
    ) -> ConnectionRecord:
        check_connection_status(status)
        return self._update(connection_id, {"status": status, "error": error})

    async def set_credentials(
        self, connection_id: str, credentials: dict[str, Any], *, fence: LeaseFence | None = None
    ) -> None:
        # empty credentials clear them (NULL), so has_credentials turns false
        token = require_cipher(self._cipher).encrypt(credentials) if credentials else None
        self._update(connection_id, {"credentials": token}, fence)

    async def get_credentials(self, connection_id: str) -> dict[str, Any]:
        row = self._db.one("SELECT credentials FROM connections WHERE connection_id = ?", (connection_id,))
        if row is None:
            raise NotFoundError(f"unknown connection {connection_id}")
        token = row["credentials"]
        return {} if token is None else require_cipher(self._cipher).decrypt(bytes(token))

    async def delete(self, connection_id: str) -> bool:
        self._cache.pop(connection_id, None)
        with self._db.write() as conn:  # sessions go with it (ON DELETE CASCADE)
            return conn.execute("DELETE FROM connections WHERE connection_id = ?", (connection_id,)).rowcount > 0


class SqliteSessions(ConnectorSessionStore):
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
        with self._db.write() as conn:
            if conn.execute("SELECT 1 FROM connections WHERE connection_id = ?", (connection_id,)).fetchone() is None:
                raise NotFoundError(f"unknown connection {connection_id}")
            try:
                row = conn.execute(
                    "INSERT INTO connector_sessions (session_id, connection_id, kind, plugin_id, status, view,"
                    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                    (session_id, connection_id, kind, plugin_id, status, _json(clean_view(view)), now, now),
                ).fetchone()
            except sqlite3.IntegrityError:
                raise StoreError(f"connector session {session_id} already exists") from None
        return rows.session(row)

    async def get(self, session_id: str) -> ConnectorSessionRecord | None:
        row = self._db.one("SELECT * FROM connector_sessions WHERE session_id = ?", (session_id,))
        return None if row is None else rows.session(row)

    async def list(
        self, *, connection_id: str | None = None, status: str | None = None
    ) -> list[ConnectorSessionRecord]:
        found = self._db.all(
            "SELECT * FROM connector_sessions WHERE (?1 IS NULL OR connection_id = ?1)"
            " AND (?2 IS NULL OR status = ?2) ORDER BY created_at, rowid",
            (connection_id, status),
        )
        return [rows.session(r) for r in found]

    async def update(
        self, session_id: str, *, status: str | None = None, view: dict[str, Any] | None = None
    ) -> ConnectorSessionRecord:
        if status is not None:
            check_session_status(status)
        with self._db.write() as conn:
            row = conn.execute(
                "UPDATE connector_sessions SET status = COALESCE(?, status), view = COALESCE(?, view),"
                " updated_at = ? WHERE session_id = ? RETURNING *",
                (status, None if view is None else _json(clean_view(view)), self._clock.time(), session_id),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"unknown connector session {session_id}")
        return rows.session(row)


class SqliteKeyValue(KeyValueStore):
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def get(self, key: str, default: Any = None) -> Any:
        row = self._db.one("SELECT value FROM kv WHERE key = ?", (key,))
        return default if row is None else _unjson(row["value"])

    async def set(self, key: str, value: Any) -> None:
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (key, _json(value), self._clock.time()),
            )

    async def delete(self, key: str) -> bool:
        with self._db.write() as conn:
            return conn.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount > 0


class SqlitePluginState(PluginStateStore):
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
        row = self._db.one(
            "SELECT value FROM plugin_state WHERE plugin_id = ? AND scope = ? AND key = ?",
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

        def write(conn: sqlite3.Connection) -> None:
            if fence is not None and connection_id:
                check_fence(_get_lease(conn, connection_id), fence, connection_id)
            if text is None:
                if conn.execute(
                    "DELETE FROM plugin_state WHERE plugin_id = ? AND scope = ? AND key = ?", (plugin_id, scope, key)
                ).rowcount:
                    conn.execute(
                        "UPDATE plugin_state_counts SET keys = keys - 1 WHERE plugin_id = ? AND scope = ?",
                        (plugin_id, scope),
                    )
                return
            if conn.execute(
                "UPDATE plugin_state SET value = ?, updated_at = ? WHERE plugin_id = ? AND scope = ? AND key = ?",
                (text, now, plugin_id, scope, key),
            ).rowcount:
                return
            row = conn.execute(
                "SELECT keys FROM plugin_state_counts WHERE plugin_id = ? AND scope = ?", (plugin_id, scope)
            ).fetchone()
            if row is not None and row["keys"] >= self.keys_per_scope:
                where = f"connection {connection_id}" if connection_id else f"plugin {plugin_id}"
                raise StateLimitError(
                    f"{where} already keeps {row['keys']} state keys; at most {self.keys_per_scope}"
                    " (delete keys with a null value)",
                    self.keys_per_scope,
                )
            conn.execute(
                "INSERT INTO plugin_state (plugin_id, scope, key, value, updated_at) VALUES (?, ?, ?, ?, ?)",
                (plugin_id, scope, key, text, now),
            )
            conn.execute(
                "INSERT INTO plugin_state_counts (plugin_id, scope, keys) VALUES (?, ?, 1)"
                " ON CONFLICT (plugin_id, scope) DO UPDATE SET keys = keys + 1",
                (plugin_id, scope),
            )

        await self._db.batched(write)

    async def drop(self, plugin_id: str, connection_id: str | None = None) -> int:
        with self._db.write() as conn:
            if connection_id is None:
                conn.execute("DELETE FROM plugin_state_counts WHERE plugin_id = ?", (plugin_id,))
                return conn.execute("DELETE FROM plugin_state WHERE plugin_id = ?", (plugin_id,)).rowcount
            conn.execute(
                "DELETE FROM plugin_state_counts WHERE plugin_id = ? AND scope = ?", (plugin_id, connection_id)
            )
            return conn.execute(
                "DELETE FROM plugin_state WHERE plugin_id = ? AND scope = ?", (plugin_id, connection_id)
            ).rowcount


# ---------------------------------------------------------------- nodes and leases


def _get_lease(conn: sqlite3.Connection, connection_id: str) -> Lease | None:
    row = conn.execute("SELECT * FROM connection_leases WHERE connection_id = ?", (connection_id,)).fetchone()
    return None if row is None else rows.lease(row)


# an upsert that takes a lease when it is free, expired or ours; a new owner bumps the epoch
_ACQUIRE = (
    "INSERT INTO connection_leases (connection_id, node_id, epoch, expires_at, updated_at) VALUES (?1, ?2, 1, ?3, ?4)"
    " ON CONFLICT (connection_id) DO UPDATE SET node_id = excluded.node_id,"
    " epoch = epoch + (node_id IS NOT excluded.node_id), expires_at = excluded.expires_at,"
    " updated_at = excluded.updated_at"
    " WHERE {condition} RETURNING *"
)


class SqliteLeases(LeaseStore):
    def __init__(self, db: Database, clock: Clock, notices: LocalNotices) -> None:
        self._db = db
        self._clock = clock
        self._notices = notices

    async def heartbeat(self, node_id: str, ttl: float, info: dict[str, Any] | None = None) -> NodeRecord:
        now = self._clock.time()
        with self._db.write() as conn:
            row = conn.execute(
                "INSERT INTO nodes (node_id, started_at, heartbeat_at, expires_at, info) VALUES (?1, ?2, ?2, ?3, ?4)"
                " ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,"
                " expires_at = excluded.expires_at, info = excluded.info RETURNING *",
                (node_id, now, now + ttl, _json(info or {})),
            ).fetchone()
        return rows.node(row)

    async def nodes(self) -> list[NodeRecord]:
        return [rows.node(r) for r in self._db.all("SELECT * FROM nodes ORDER BY node_id")]

    async def leave(self, node_id: str) -> int:
        with self._db.write() as conn:
            released = conn.execute(
                "UPDATE connection_leases SET node_id = NULL, expires_at = 0, updated_at = ? WHERE node_id = ?",
                (self._clock.time(), node_id),
            ).rowcount
            conn.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))
        self._notices.publish("leases")
        return released

    async def prune_nodes(self, older_than: float) -> int:
        with self._db.write() as conn:
            return conn.execute("DELETE FROM nodes WHERE expires_at <= ?", (self._clock.time() - older_than,)).rowcount

    async def leases(self, node_id: str | None = None) -> list[Lease]:
        found = self._db.all(
            "SELECT * FROM connection_leases WHERE ?1 IS NULL OR node_id = ?1 ORDER BY connection_id", (node_id,)
        )
        return [rows.lease(r) for r in found]

    async def get(self, connection_id: str) -> Lease | None:
        row = self._db.one("SELECT * FROM connection_leases WHERE connection_id = ?", (connection_id,))
        return None if row is None else rows.lease(row)

    async def acquire(self, node_id: str, connection_ids: Sequence[str], ttl: float) -> list[Lease]:
        now = self._clock.time()
        sql = _ACQUIRE.format(condition="node_id IS NULL OR expires_at <= ?4 OR node_id = excluded.node_id")
        held: list[Lease] = []
        with self._db.write() as conn:
            for connection_id in connection_ids:
                row = conn.execute(sql, (connection_id, node_id, now + ttl, now)).fetchone()
                if row is not None:
                    held.append(rows.lease(row))
        return held

    async def take(self, node_id: str, connection_id: str, ttl: float) -> Lease:
        now = self._clock.time()
        with self._db.write() as conn:
            row = conn.execute(_ACQUIRE.format(condition="1"), (connection_id, node_id, now + ttl, now)).fetchone()
        self._notices.publish("leases")
        return rows.lease(row)

    async def renew(self, node_id: str, ttl: float) -> list[Lease]:
        now = self._clock.time()
        with self._db.write() as conn:
            found = conn.execute(
                "UPDATE connection_leases SET expires_at = ?, updated_at = ? WHERE node_id = ? RETURNING *",
                (now + ttl, now, node_id),
            ).fetchall()
        return sorted((rows.lease(r) for r in found), key=lambda lease: lease.connection_id)

    async def release(self, node_id: str, connection_ids: Sequence[str]) -> int:
        now = self._clock.time()
        with self._db.write() as conn:
            released = sum(
                conn.execute(
                    "UPDATE connection_leases SET node_id = NULL, expires_at = 0, updated_at = ?"
                    " WHERE connection_id = ? AND node_id = ?",
                    (now, connection_id, node_id),
                ).rowcount
                for connection_id in connection_ids
            )
        if released:
            self._notices.publish("leases")
        return released


# ---------------------------------------------------------------- sidecar mode (SPEC 11)


_FORWARD_SENT = (
    "UPDATE forward_queue SET status = 'sent', head = 0, claimed_until = NULL, claimed_by = NULL, updated_at = ?1"
    f" WHERE id IN (SELECT value FROM json_each(?2)) AND {_LIVE} RETURNING id"
)
# `_Queue.promote` for the conversations of several finished entries at once: each one's earliest live entry
_FORWARD_PROMOTE = (
    "UPDATE forward_queue SET head = 1 WHERE head = 0 AND id IN (SELECT (SELECT live.id FROM forward_queue AS live"
    " WHERE live.channel_id = done.channel_id AND live.conversation = done.conversation"
    f" AND live.{_LIVE} ORDER BY live.id LIMIT 1)"
    " FROM forward_queue AS done WHERE done.id IN (SELECT value FROM json_each(?1)))"
)


class SqliteForwardQueue(ForwardQueueStore):
    def __init__(self, db: Database, clock: Clock, *, lease: float = DEFAULT_LEASE) -> None:
        self._queue = _Queue(db, clock, "forward_queue", lease)
        self._sent_waiting: list[int] = []  # `mark_sent` calls whose batch has not run yet
        self._sent_done: dict[int, bool] = {}  # outcomes of the running batch, each taken by its own caller

    async def enqueue(self, event: BridgeEvent) -> bool:
        q = self._queue
        key, payload = dedupe_key(event.connection_id, event.event_id), _json(event)
        conversation = event_conversation(event)
        # the plugins' events arrive together: they share a commit
        entry_id = await q.db.batched(
            lambda conn: q.add(
                conn, event.connection_id, conversation, key, payload, event.peer_id, q.clock.time(), unique=True
            ),
            atomic=True,  # one INSERT
        )
        return entry_id is not None

    async def claim_ready(self, limit: int = 16, *, lease: float | None = None) -> list[ForwardEntry]:
        q = self._queue
        now = q.clock.time()
        if not q.worth_claiming(now):
            return []
        # the claim shares its commit with the enqueues and deliveries of the same loop turn; it returns
        # only once committed, so a try is counted (deliveryAttempt) before it is made
        found = await q.db.batched(lambda conn: q.claim_in(conn, now, limit, lease))
        return [rows.forward_entry(r) for r in found]

    async def release_claims(self) -> int:
        return self._queue.release()

    async def mark_sent(self, entry_id: int) -> bool:
        """Deliveries answered in one loop turn share a transaction (`Database.batched`) and, within it,
        one UPDATE of their entries and one of their conversations' next heads: the first of them to
        run marks all the others waiting, and each of the others then only reads its own outcome.
        When that shared try fails, each one tries alone, so only the failing entry's caller sees it."""
        self._sent_waiting.append(entry_id)  # in the same batch as this call's `batched` item (no await between)

        def sent(conn: sqlite3.Connection) -> bool:
            if entry_id not in self._sent_done:
                ids, self._sent_waiting = self._sent_waiting, []
                if entry_id not in ids:  # the shared try failed: alone now
                    ids = [entry_id]
                try:
                    self._sent_done.update(self._mark_sent(conn, ids))
                except Exception:
                    if not conn.in_transaction or ids == [entry_id]:
                        raise
                    self._sent_done.update(self._mark_sent(conn, [entry_id]))  # the others try alone too
            return self._sent_done.pop(entry_id)

        try:
            return await self._queue.db.batched(sent, atomic=True)  # `_mark_sent` has its own savepoint
        finally:  # after a transaction that failed as a whole: nothing of this call is left behind
            self._sent_done.pop(entry_id, None)
            if entry_id in self._sent_waiting:
                self._sent_waiting.remove(entry_id)

    def _mark_sent(self, conn: sqlite3.Connection, ids: list[int]) -> dict[int, bool]:
        """Mark the live ones of `ids` sent and promote their conversations' next entries, all or nothing."""
        conn.execute("SAVEPOINT sent")
        try:
            found = conn.execute(_FORWARD_SENT, (self._queue.clock.time(), _json(ids))).fetchall()
            done = {row[0] for row in found}
            if done:
                conn.execute(_FORWARD_PROMOTE, (_json(sorted(done)),))
        except Exception:
            if conn.in_transaction:
                conn.execute("ROLLBACK TO sent")
                conn.execute("RELEASE sent")
            raise
        conn.execute("RELEASE sent")
        return {i: i in done for i in ids}

    async def retry(self, entry_id: int, error: str, delay: float) -> bool:
        return self._queue.retry(entry_id, error, delay)

    async def dead_letter(self, entry_id: int, error: str) -> bool:
        return self._queue.dead_letter(entry_id, error)

    async def get(self, entry_id: int) -> ForwardEntry | None:
        row = self._queue.get(entry_id)
        return None if row is None else rows.forward_entry(row)

    async def list_dead(self, limit: int = 100) -> list[ForwardEntry]:
        return [rows.forward_entry(r) for r in self._queue.dead(limit)]

    async def pending_count(self) -> int:
        return self._queue.pending_count()

    async def dead_count(self) -> int:
        row = self._queue.db.one("SELECT COUNT(*) FROM forward_queue WHERE status = 'dead'")
        return int(row[0]) if row is not None else 0

    async def prune(self, retention: float = DEDUPE_RETENTION) -> int:
        cutoff = self._queue.clock.time() - retention
        with self._queue.db.write() as conn:
            return conn.execute(
                "DELETE FROM forward_queue WHERE status = 'sent' AND updated_at <= ?", (cutoff,)
            ).rowcount


class SqliteSendDedupe(SendDedupeStore):
    def __init__(
        self, db: Database, clock: Clock, *, ttl: float = DEDUPE_IN_PROGRESS_TTL, retention: float = DEDUPE_RETENTION
    ) -> None:
        self._db = db
        self._clock = clock
        self.ttl = ttl
        self.retention = retention

    async def begin(self, connection_id: str, request_id: str) -> SendBegin:
        key = dedupe_key(connection_id, request_id)

        def begin(conn: sqlite3.Connection) -> SendBegin:
            outcome, record, changed = decide_begin(
                _get_dedupe(conn, key, "send_dedupe"),
                connection_id=connection_id,
                event_id=request_id,
                message_id="",
                now=self._clock.time(),
                ttl=self.ttl,
            )
            if changed:  # new, stale or retry: the record is processing again, without an old result
                _put_dedupe(conn, record, "send_dedupe")
                return SendBegin(outcome=outcome, record=record)
            result = None
            if outcome == "duplicate":
                row = conn.execute("SELECT result FROM send_dedupe WHERE dedupe_key = ?", (key,)).fetchone()
                result = _unjson(row["result"]) if row is not None else None
            return SendBegin(outcome=outcome, record=record, result=result)

        return await self._db.batched(begin)  # concurrent sends share a commit; each is still atomic

    async def complete(self, key: str, result: dict[str, Any]) -> bool:
        text, now = _json(result), self._clock.time()
        return await self._db.batched(
            lambda conn: (
                conn.execute(
                    "UPDATE send_dedupe SET status = 'completed', result = ?, last_error = NULL, updated_at = ?"
                    " WHERE dedupe_key = ?",
                    (text, now, key),
                ).rowcount
                > 0
            )
        )

    async def fail(self, key: str, error: str) -> bool:
        with self._db.write() as conn:
            cur = conn.execute(
                "UPDATE send_dedupe SET status = 'failed', last_error = ?, updated_at = ? WHERE dedupe_key = ?",
                (error, self._clock.time(), key),
            )
        return cur.rowcount > 0

    async def prune(self, retention: float | None = None) -> int:
        cutoff = self._clock.time() - (self.retention if retention is None else retention)
        with self._db.write() as conn:
            return conn.execute(
                "DELETE FROM send_dedupe WHERE status = 'completed' AND updated_at <= ?", (cutoff,)
            ).rowcount


def open_sqlite_store(
    url: str,
    path: str,
    *,
    clock: Clock,
    cipher: CredentialCipher | None,
    dedupe_ttl: float = DEDUPE_IN_PROGRESS_TTL,
    retention: float = DEDUPE_RETENTION,
    lease: float = DEFAULT_LEASE,
) -> Store:
    db = Database(path)
    notices = LocalNotices()
    bridge_dedupe = SqliteBridgeDedupe(db, clock, ttl=dedupe_ttl, retention=retention)
    inbox = SqliteInbox(db, clock, lease=lease)
    outbox = SqliteOutbox(db, clock, lease=lease)

    async def close() -> None:
        db.close()

    return Store(
        url=url,
        bridge_dedupe=bridge_dedupe,
        message_dedupe=SqliteMessageDedupe(db, clock, retention=retention),
        inbox=inbox,
        outbox=outbox,
        connections=SqliteConnections(db, clock, cipher),
        sessions=SqliteSessions(db, clock),
        kv=SqliteKeyValue(db, clock),
        pipeline=SqlitePipeline(db, clock, bridge_dedupe, inbox, outbox),
        plugin_state=SqlitePluginState(db, clock),
        leases=SqliteLeases(db, clock, notices),
        listen=notices.listen,
        close=close,
        forward=SqliteForwardQueue(db, clock, lease=lease),
        send_dedupe=SqliteSendDedupe(db, clock, ttl=dedupe_ttl, retention=retention),
    )
