"""`sqlite:///PATH`: the embedded store, one SQLite file (WAL, `synchronous=NORMAL`).

Access is synchronous stdlib `sqlite3` on the event loop, one connection per
store, each method one short transaction. The statements are indexed and take
well under a millisecond, so running them inline is cheaper than a thread hop and
keeps "no threads for I/O" (STYLE). Because a method never awaits inside its
transaction, tasks of one process cannot interleave within it; read-modify-write
uses `BEGIN IMMEDIATE`, which takes the file's write lock first, so several
stores (or processes) on the same file stay atomic too (`busy_timeout` waits).
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
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
    InboxEntry,
    InboxStore,
    KeyValueStore,
    MessageDedupeStore,
    NotFoundError,
    OutboxEntry,
    OutboxStore,
    Store,
    StoreError,
    check_connection_status,
    check_session_status,
    clean_view,
    decide_begin,
    dedupe_key,
    new_connection_id,
    new_session_id,
    outbox_conversation,
    require_cipher,
)

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
]
SCHEMA_VERSION = len(MIGRATIONS)


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode("utf-8")


def _unjson(text: str | None) -> Any:
    return None if text is None else msgspec.json.decode(text)


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


class Database:
    """One SQLite connection with the pragmas, migrations and transaction helper."""

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; we BEGIN ourselves
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        self.conn.row_factory = sqlite3.Row
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
        except BaseException:
            if self.conn.in_transaction:  # SQLite may already have rolled back (disk full, ...)
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

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


def _dedupe_record(row: sqlite3.Row) -> DedupeRecord:
    return DedupeRecord(
        dedupe_key=row["dedupe_key"], connection_id=row["connection_id"], event_id=row["event_id"],
        status=row["status"], first_seen_at=float(row["first_seen_at"]), updated_at=float(row["updated_at"]),
        delivery_attempts=row["delivery_attempts"], message_id=row["message_id"], last_error=row["last_error"],
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
        key = dedupe_key(connection_id, event_id)
        with self._db.write() as conn:
            row = conn.execute("SELECT * FROM bridge_dedupe WHERE dedupe_key = ?", (key,)).fetchone()
            outcome, record, changed = decide_begin(
                None if row is None else _dedupe_record(row), connection_id=connection_id,
                event_id=event_id, message_id=message_id, now=self._clock.time(), ttl=self.ttl,
            )
            if changed:
                conn.execute(
                    "INSERT OR REPLACE INTO bridge_dedupe (dedupe_key, connection_id, event_id, status,"
                    " first_seen_at, updated_at, delivery_attempts, message_id, last_error)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.dedupe_key, record.connection_id, record.event_id, record.status,
                     record.first_seen_at, record.updated_at, record.delivery_attempts,
                     record.message_id, record.last_error),
                )
        return BeginResult(outcome=outcome, record=record)

    async def complete(self, key: str) -> bool:
        with self._db.write() as conn:
            cur = conn.execute(
                "UPDATE bridge_dedupe SET status = 'completed', last_error = NULL, updated_at = ?"
                " WHERE dedupe_key = ?", (self._clock.time(), key),
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
        return None if row is None else _dedupe_record(row)

    async def prune(self, retention: float | None = None) -> int:
        cutoff = self._clock.time() - (self.retention if retention is None else retention)
        with self._db.write() as conn:
            cur = conn.execute(
                "DELETE FROM bridge_dedupe WHERE status = 'completed' AND updated_at <= ?", (cutoff,)
            )
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


class _Queue:
    """Inbox and outbox share one table layout and one claim/retry/dead-letter logic."""

    def __init__(self, db: Database, clock: Clock, table: str, lease: float) -> None:
        self.db = db
        self.clock = clock
        self.table = table
        self.lease = lease

    def add(
        self, conn: sqlite3.Connection, channel_id: str, conversation: str, key: str, payload: str
    ) -> sqlite3.Row:
        now = self.clock.time()
        row: sqlite3.Row = conn.execute(
            f"INSERT INTO {self.table} (channel_id, conversation, item_key, payload, status, attempts,"
            " next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?) RETURNING *",
            (channel_id, conversation, key, payload, now, now, now),
        ).fetchone()
        return row

    def claim(self, limit: int, lease: float | None) -> list[sqlite3.Row]:
        now = self.clock.time()
        until = now + (self.lease if lease is None else lease)
        t = self.table
        with self.db.write() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    f"SELECT q.id FROM {t} q JOIN (SELECT MIN(id) AS head FROM {t}"
                    "  WHERE status IN ('pending', 'claimed') GROUP BY channel_id, conversation) h"
                    " ON q.id = h.head"
                    " WHERE (q.status = 'pending' AND q.next_attempt_at <= ?)"
                    "    OR (q.status = 'claimed' AND q.claimed_until <= ?)"
                    " ORDER BY q.id LIMIT ?",
                    (now, now, limit),
                )
            ]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            rows = conn.execute(
                f"UPDATE {t} SET status = 'claimed', claimed_until = ?, attempts = attempts + 1, updated_at = ?"
                f" WHERE id IN ({marks}) RETURNING *",
                (until, now, *ids),
            ).fetchall()
        return sorted(rows, key=lambda r: r["id"])

    def release(self) -> int:
        with self.db.write() as conn:
            return conn.execute(
                f"UPDATE {self.table} SET status = 'pending', claimed_until = NULL, updated_at = ?"
                " WHERE status = 'claimed'", (self.clock.time(),),
            ).rowcount

    def finish(self, entry_id: int, sql_set: str, params: Sequence[Any]) -> bool:
        """Change a live (pending or claimed) entry; False when it is unknown or already finished."""
        with self.db.write() as conn:
            cur = conn.execute(
                f"UPDATE {self.table} SET {sql_set}, updated_at = ?"
                " WHERE id = ? AND status IN ('pending', 'claimed')",
                (*params, self.clock.time(), entry_id),
            )
        return cur.rowcount > 0

    def retry(self, entry_id: int, error: str, delay: float) -> bool:
        due = self.clock.time() + max(0.0, delay)
        return self.finish(
            entry_id, "status = 'pending', claimed_until = NULL, last_error = ?, next_attempt_at = ?", (error, due)
        )

    def dead_letter(self, entry_id: int, error: str) -> bool:
        return self.finish(entry_id, "status = 'dead', claimed_until = NULL, last_error = ?", (error,))

    def get(self, entry_id: int) -> sqlite3.Row | None:
        return self.db.one(f"SELECT * FROM {self.table} WHERE id = ?", (entry_id,))

    def dead(self, limit: int) -> list[sqlite3.Row]:
        return self.db.all(f"SELECT * FROM {self.table} WHERE status = 'dead' ORDER BY id LIMIT ?", (limit,))

    def pending_count(self) -> int:
        row = self.db.one(f"SELECT COUNT(*) FROM {self.table} WHERE status IN ('pending', 'claimed')")
        return int(row[0]) if row is not None else 0


def _inbox_entry(row: sqlite3.Row) -> InboxEntry:
    return InboxEntry(
        id=row["id"], channel_id=row["channel_id"], session_id=row["conversation"],
        message=msgspec.json.decode(row["payload"], type=InboundMessage), status=row["status"],
        attempts=row["attempts"], next_attempt_at=float(row["next_attempt_at"]),
        claimed_until=_float_or_none(row["claimed_until"]), last_error=row["last_error"],
        created_at=float(row["created_at"]), updated_at=float(row["updated_at"]),
    )


def _outbox_entry(row: sqlite3.Row) -> OutboxEntry:
    return OutboxEntry(
        id=row["id"], channel_id=row["channel_id"], request_id=row["item_key"], conversation=row["conversation"],
        payload=_unjson(row["payload"]), status=row["status"], attempts=row["attempts"],
        next_attempt_at=float(row["next_attempt_at"]), claimed_until=_float_or_none(row["claimed_until"]),
        last_error=row["last_error"], result=_unjson(row["result"]),
        created_at=float(row["created_at"]), updated_at=float(row["updated_at"]),
    )


class SqliteInbox(InboxStore):
    def __init__(self, db: Database, clock: Clock, *, lease: float = DEFAULT_LEASE) -> None:
        self._queue = _Queue(db, clock, "inbox", lease)

    async def commit(self, message: InboundMessage) -> InboxEntry | None:
        q = self._queue
        with q.db.write() as conn:  # the dedupe mark and the entry land together or not at all
            if _seen_or_mark(conn, message.channel_id, message.message_id, q.clock.time()):
                return None
            row = q.add(conn, message.channel_id, message.session_id, message.message_id, _json(message))
        return _inbox_entry(row)

    async def claim_ready(self, limit: int = 16, *, lease: float | None = None) -> list[InboxEntry]:
        return [_inbox_entry(r) for r in self._queue.claim(limit, lease)]

    async def release_claims(self) -> int:
        return self._queue.release()

    async def ack(self, entry_id: int) -> bool:
        with self._queue.db.write() as conn:
            cur = conn.execute("DELETE FROM inbox WHERE id = ? AND status IN ('pending', 'claimed')", (entry_id,))
        return cur.rowcount > 0

    async def retry(self, entry_id: int, error: str, delay: float) -> bool:
        return self._queue.retry(entry_id, error, delay)

    async def dead_letter(self, entry_id: int, error: str) -> bool:
        return self._queue.dead_letter(entry_id, error)

    async def get(self, entry_id: int) -> InboxEntry | None:
        row = self._queue.get(entry_id)
        return None if row is None else _inbox_entry(row)

    async def list_dead(self, limit: int = 100) -> list[InboxEntry]:
        return [_inbox_entry(r) for r in self._queue.dead(limit)]

    async def pending_count(self) -> int:
        return self._queue.pending_count()


class SqliteOutbox(OutboxStore):
    def __init__(self, db: Database, clock: Clock, *, lease: float = DEFAULT_LEASE) -> None:
        self._queue = _Queue(db, clock, "outbox", lease)

    async def enqueue(
        self, channel_id: str, request_id: str, payload: dict[str, Any], *, conversation: str | None = None
    ) -> bool:
        q = self._queue
        with q.db.write() as conn:
            if conn.execute("SELECT 1 FROM outbox WHERE item_key = ?", (request_id,)).fetchone():
                return False
            q.add(conn, channel_id, conversation or outbox_conversation(request_id), request_id, _json(payload))
        return True

    async def claim_ready(self, limit: int = 16, *, lease: float | None = None) -> list[OutboxEntry]:
        return [_outbox_entry(r) for r in self._queue.claim(limit, lease)]

    async def release_claims(self) -> int:
        return self._queue.release()

    async def mark_sent(self, entry_id: int, result: dict[str, Any] | None = None) -> bool:
        return self._queue.finish(
            entry_id, "status = 'sent', claimed_until = NULL, result = ?",
            (None if result is None else _json(result),),
        )

    async def retry(self, entry_id: int, error: str, delay: float) -> bool:
        return self._queue.retry(entry_id, error, delay)

    async def dead_letter(self, entry_id: int, error: str) -> bool:
        return self._queue.dead_letter(entry_id, error)

    async def get(self, entry_id: int) -> OutboxEntry | None:
        row = self._queue.get(entry_id)
        return None if row is None else _outbox_entry(row)

    async def get_by_request_id(self, request_id: str) -> OutboxEntry | None:
        row = self._queue.db.one("SELECT * FROM outbox WHERE item_key = ?", (request_id,))
        return None if row is None else _outbox_entry(row)

    async def list_dead(self, limit: int = 100) -> list[OutboxEntry]:
        return [_outbox_entry(r) for r in self._queue.dead(limit)]

    async def pending_count(self) -> int:
        return self._queue.pending_count()

    async def prune(self, retention: float = DEDUPE_RETENTION) -> int:
        cutoff = self._queue.clock.time() - retention
        with self._queue.db.write() as conn:
            return conn.execute("DELETE FROM outbox WHERE status = 'sent' AND updated_at <= ?", (cutoff,)).rowcount


# ---------------------------------------------------------------- connections and sessions

_CONNECTION_COLUMNS = (
    "connection_id, kind, plugin_id, channel_id, account_id, display_name, options, status, error,"
    " credentials IS NOT NULL AS has_credentials, created_at, updated_at"
)  # never the credentials themselves


def _connection(row: sqlite3.Row) -> ConnectionRecord:
    return ConnectionRecord(
        connection_id=row["connection_id"], kind=row["kind"], plugin_id=row["plugin_id"],
        channel_id=row["channel_id"], account_id=row["account_id"], display_name=row["display_name"],
        options=_unjson(row["options"]), status=row["status"], error=row["error"],
        has_credentials=bool(row["has_credentials"]),
        created_at=float(row["created_at"]), updated_at=float(row["updated_at"]),
    )


class SqliteConnections(ConnectionStore):
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
        try:
            with self._db.write() as conn:
                row = conn.execute(
                    "INSERT INTO connections (connection_id, kind, plugin_id, channel_id, account_id, display_name,"
                    " options, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    f" RETURNING {_CONNECTION_COLUMNS}",
                    (connection_id, kind, plugin_id, channel_id or connection_id, account_id, display_name,
                     _json(options or {}), status, now, now),
                ).fetchone()
        except sqlite3.IntegrityError:
            raise StoreError(f"connection {connection_id} already exists") from None
        return _connection(row)

    async def get(self, connection_id: str) -> ConnectionRecord | None:
        row = self._db.one(f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE connection_id = ?", (connection_id,))
        return None if row is None else _connection(row)

    async def list(
        self, *, status: str | None = None, kind: str | None = None, plugin_id: str | None = None
    ) -> list[ConnectionRecord]:
        rows = self._db.all(
            f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE (?1 IS NULL OR status = ?1)"
            " AND (?2 IS NULL OR kind = ?2) AND (?3 IS NULL OR plugin_id = ?3) ORDER BY created_at, rowid",
            (status, kind, plugin_id),
        )
        return [_connection(r) for r in rows]

    def _update(self, connection_id: str, changes: dict[str, Any]) -> ConnectionRecord:
        changes["updated_at"] = self._clock.time()
        assignments = ", ".join(f"{column} = ?" for column in changes)  # column names are ours, not input
        with self._db.write() as conn:
            row = conn.execute(
                f"UPDATE connections SET {assignments} WHERE connection_id = ? RETURNING {_CONNECTION_COLUMNS}",
                (*changes.values(), connection_id),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"unknown connection {connection_id}")
        return _connection(row)

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
            k: v for k, v in (("channel_id", channel_id), ("account_id", account_id),
                              ("display_name", display_name)) if v is not None
        }
        if options is not None:
            changes["options"] = _json(options)
        return self._update(connection_id, changes)

    async def update_status(
        self, connection_id: str, status: ConnectionState, error: str | None = None
    ) -> ConnectionRecord:
        check_connection_status(status)
        return self._update(connection_id, {"status": status, "error": error})

    async def set_credentials(self, connection_id: str, credentials: dict[str, Any]) -> None:
        self._update(connection_id, {"credentials": require_cipher(self._cipher).encrypt(credentials)})

    async def get_credentials(self, connection_id: str) -> dict[str, Any]:
        row = self._db.one("SELECT credentials FROM connections WHERE connection_id = ?", (connection_id,))
        if row is None:
            raise NotFoundError(f"unknown connection {connection_id}")
        token = row["credentials"]
        return {} if token is None else require_cipher(self._cipher).decrypt(bytes(token))

    async def delete(self, connection_id: str) -> bool:
        with self._db.write() as conn:  # sessions go with it (ON DELETE CASCADE)
            return conn.execute("DELETE FROM connections WHERE connection_id = ?", (connection_id,)).rowcount > 0


def _session(row: sqlite3.Row) -> ConnectorSessionRecord:
    return ConnectorSessionRecord(
        session_id=row["session_id"], connection_id=row["connection_id"], kind=row["kind"],
        plugin_id=row["plugin_id"], status=row["status"], view=_unjson(row["view"]),
        created_at=float(row["created_at"]), updated_at=float(row["updated_at"]),
    )


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
        return _session(row)

    async def get(self, session_id: str) -> ConnectorSessionRecord | None:
        row = self._db.one("SELECT * FROM connector_sessions WHERE session_id = ?", (session_id,))
        return None if row is None else _session(row)

    async def list(
        self, *, connection_id: str | None = None, status: str | None = None
    ) -> list[ConnectorSessionRecord]:
        rows = self._db.all(
            "SELECT * FROM connector_sessions WHERE (?1 IS NULL OR connection_id = ?1)"
            " AND (?2 IS NULL OR status = ?2) ORDER BY created_at, rowid",
            (connection_id, status),
        )
        return [_session(r) for r in rows]

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
        return _session(row)


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

    async def close() -> None:
        db.close()

    return Store(
        url=url,
        bridge_dedupe=SqliteBridgeDedupe(db, clock, ttl=dedupe_ttl, retention=retention),
        message_dedupe=SqliteMessageDedupe(db, clock, retention=retention),
        inbox=SqliteInbox(db, clock, lease=lease),
        outbox=SqliteOutbox(db, clock, lease=lease),
        connections=SqliteConnections(db, clock, cipher),
        sessions=SqliteSessions(db, clock),
        kv=SqliteKeyValue(db, clock),
        close=close,
    )
