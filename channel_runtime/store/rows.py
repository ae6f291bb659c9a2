"""Rows to records, shared by the SQL backends (a `sqlite3.Row` and a psycopg dict row read alike).

One definition per record, so that what a column means cannot drift between
SQLite and PostgreSQL; JSON columns hold msgspec-encoded text in both.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from plugin_host.protocol import BridgeEvent

from ..messages import InboundMessage
from .base import (
    ConnectionRecord,
    ConnectorSessionRecord,
    DedupeRecord,
    ForwardEntry,
    InboxEntry,
    Lease,
    NodeRecord,
    OutboxEntry,
)


class Row(Protocol):
    """A row read by column name: `sqlite3.Row` and psycopg's dict rows alike."""

    def __getitem__(self, column: str, /) -> Any: ...


def unjson(text: str | None) -> Any:
    return None if text is None else msgspec.json.decode(text)


def float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


def dedupe_record(row: Row) -> DedupeRecord:
    return DedupeRecord(
        dedupe_key=row["dedupe_key"],
        connection_id=row["connection_id"],
        event_id=row["event_id"],
        status=row["status"],
        first_seen_at=float(row["first_seen_at"]),
        updated_at=float(row["updated_at"]),
        delivery_attempts=row["delivery_attempts"],
        message_id=row["message_id"],
        last_error=row["last_error"],
    )


def inbox_entry(row: Row) -> InboxEntry:
    return InboxEntry(
        id=row["id"],
        channel_id=row["channel_id"],
        session_id=row["conversation"],
        message=msgspec.json.decode(row["payload"], type=InboundMessage),
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=float(row["next_attempt_at"]),
        claimed_until=float_or_none(row["claimed_until"]),
        last_error=row["last_error"],
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )


def outbox_entry(row: Row) -> OutboxEntry:
    return OutboxEntry(
        id=row["id"],
        channel_id=row["channel_id"],
        request_id=row["item_key"],
        conversation=row["conversation"],
        payload=unjson(row["payload"]),
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=float(row["next_attempt_at"]),
        claimed_until=float_or_none(row["claimed_until"]),
        last_error=row["last_error"],
        result=unjson(row["result"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )


def connection(row: Row) -> ConnectionRecord:
    return ConnectionRecord(
        connection_id=row["connection_id"],
        kind=row["kind"],
        plugin_id=row["plugin_id"],
        channel_id=row["channel_id"],
        account_id=row["account_id"],
        display_name=row["display_name"],
        options=unjson(row["options"]),
        status=row["status"],
        error=row["error"],
        has_credentials=bool(row["has_credentials"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )


def session(row: Row) -> ConnectorSessionRecord:
    return ConnectorSessionRecord(
        session_id=row["session_id"],
        connection_id=row["connection_id"],
        kind=row["kind"],
        plugin_id=row["plugin_id"],
        status=row["status"],
        view=unjson(row["view"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )


def node(row: Row) -> NodeRecord:
    return NodeRecord(
        node_id=row["node_id"],
        started_at=float(row["started_at"]),
        heartbeat_at=float(row["heartbeat_at"]),
        expires_at=float(row["expires_at"]),
        info=unjson(row["info"]),
    )


def lease(row: Row) -> Lease:
    return Lease(
        connection_id=row["connection_id"],
        node_id=row["node_id"],
        epoch=int(row["epoch"]),
        expires_at=float(row["expires_at"]),
    )


def forward_entry(row: Row) -> ForwardEntry:
    """A sidecar's forward queue (the outbox's layout; `channel_id` holds the connection id)."""
    return ForwardEntry(
        id=row["id"],
        connection_id=row["channel_id"],
        conversation=row["conversation"],
        event=msgspec.json.decode(row["payload"], type=BridgeEvent),
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=float(row["next_attempt_at"]),
        claimed_until=float_or_none(row["claimed_until"]),
        last_error=row["last_error"],
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )
