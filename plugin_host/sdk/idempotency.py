"""Send idempotency of SPEC 3.6: dedupe `message.send` by connectionId + requestId.

One SQLite file in the plugin's stateDir (WAL). Calls are synchronous on the
event loop on purpose: each is one short transaction on a tiny local table
(microseconds), cheaper than a hop to a worker thread, and a coroutine cannot
interleave between the read and the write of `begin`. `BEGIN IMMEDIATE` makes
the same true across processes (old and new plugin version share stateDir
during a hot swap); `busy_timeout` bounds how long one may wait for the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from ..clock import Clock, SystemClock
from ..errors import IN_PROGRESS, RpcError

if TYPE_CHECKING:
    import sqlite3

PROCESSING_TIMEOUT = 60.0  # a record in progress this long is stale: send again
RETRY_AFTER_SECONDS = 5
RETENTION = 7 * 24 * 3600.0
PRUNE_EVERY = 3600.0

Outcome = Literal["new", "retry", "stale", "duplicate"]
Status = Literal["processing", "completed", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS send_requests (
    connection_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('processing', 'completed', 'failed')),
    result TEXT,
    attempts INTEGER NOT NULL,
    first_seen_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (connection_id, request_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS send_requests_updated_at ON send_requests (updated_at);
"""


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


class SendRecord(msgspec.Struct, frozen=True):
    connection_id: str
    request_id: str
    status: Status
    attempts: int
    first_seen_at: float
    updated_at: float
    result: dict[str, Any] | None


class SendIdempotencyStore:
    """`begin` before sending, then `complete` with the result or `fail`."""

    def __init__(
        self,
        path: str,
        *,
        clock: Clock | None = None,
        processing_timeout: float = PROCESSING_TIMEOUT,
        retention: float = RETENTION,
        prune_interval: float = PRUNE_EVERY,
        busy_timeout: float = 5.0,
    ) -> None:
        import sqlite3  # lazily: a plugin that never sends never loads sqlite

        self.path = path
        self.clock: Clock = clock or SystemClock()
        self.processing_timeout = processing_timeout
        self.retention = retention
        self.prune_interval = prune_interval
        self._db: sqlite3.Connection = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL survives a crashed process; a power cut may lose the last records (-> a resend).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._next_prune = float("-inf")

    def begin(self, connection_id: str, request_id: str) -> Begin:
        """Decide whether this delivery is sent; raises -32010 while another attempt runs."""
        now = self.clock.time()
        self._maybe_prune(now)
        key = (connection_id, request_id)
        with self._immediate() as db:
            row = db.execute(
                "SELECT status, result, attempts, updated_at FROM send_requests"
                " WHERE connection_id = ? AND request_id = ?",
                key,
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO send_requests (connection_id, request_id, status, attempts, first_seen_at, updated_at)"
                    " VALUES (?, ?, 'processing', 1, ?, ?)",
                    (*key, now, now),
                )
                return Begin("new", 1)
            status, result, attempts, updated_at = row
            if status == "completed":
                return Begin("duplicate", attempts, _decode(result))
            if status == "processing" and now - updated_at < self.processing_timeout:
                raise RpcError(
                    IN_PROGRESS,
                    f"message {request_id} is already being sent; retry later",
                    {"retryAfterSeconds": RETRY_AFTER_SECONDS},
                )
            db.execute(
                "UPDATE send_requests SET status = 'processing', result = NULL, attempts = attempts + 1,"
                " updated_at = ? WHERE connection_id = ? AND request_id = ?",
                (now, *key),
            )
            return Begin("stale" if status == "processing" else "retry", attempts + 1)

    def complete(self, connection_id: str, request_id: str, result: dict[str, Any]) -> None:
        now = self.clock.time()
        with self._immediate() as db:
            db.execute(
                "INSERT INTO send_requests (connection_id, request_id, status, result, attempts, first_seen_at, updated_at)"
                " VALUES (?, ?, 'completed', ?, 1, ?, ?)"
                " ON CONFLICT (connection_id, request_id) DO UPDATE SET"
                " status = 'completed', result = excluded.result, updated_at = excluded.updated_at",
                (connection_id, request_id, msgspec.json.encode(result).decode(), now, now),
            )

    def fail(self, connection_id: str, request_id: str) -> None:
        """The attempt did not complete: the next delivery of the same request sends again."""
        now = self.clock.time()
        with self._immediate() as db:
            db.execute(
                "UPDATE send_requests SET status = 'failed', updated_at = ?"
                " WHERE connection_id = ? AND request_id = ? AND status = 'processing'",
                (now, connection_id, request_id),
            )

    def get(self, connection_id: str, request_id: str) -> SendRecord | None:
        row = self._db.execute(
            "SELECT status, attempts, first_seen_at, updated_at, result FROM send_requests"
            " WHERE connection_id = ? AND request_id = ?",
            (connection_id, request_id),
        ).fetchone()
        if row is None:
            return None
        status, attempts, first_seen_at, updated_at, result = row
        return SendRecord(connection_id, request_id, status, attempts, first_seen_at, updated_at, _decode(result))

    def prune(self, now: float | None = None) -> int:
        """Remove records last updated more than `retention` ago; returns how many.

        Completed records are the ones that matter; an old failed or processing
        record would be sent again anyway, so it goes too."""
        now = self.clock.time() if now is None else now
        with self._immediate() as db:
            return db.execute("DELETE FROM send_requests WHERE updated_at < ?", (now - self.retention,)).rowcount

    def close(self) -> None:
        self._db.close()

    def _maybe_prune(self, now: float) -> None:
        if now >= self._next_prune:
            self._next_prune = now + self.prune_interval
            self.prune(now)

    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def _decode(result: str | None) -> dict[str, Any] | None:
    return None if result is None else msgspec.json.decode(result)
