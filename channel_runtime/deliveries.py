"""What the runtime tells about a delivery (SPEC 6.4, 7.3): the one view, its ids, its listing cursor.

Ids: `out-{n}` for an outbox delivery and `in-{n}` for an inbox dead letter (`n`
the store's entry id): short, URL-safe, and never confused with a `requestId`
(`out_{channel}:{session}:{suffix}`), which names the same outbox delivery for the
plugin and stays stable across retries.

A listing is newest first (creation time, then outbound before inbound, then id);
its cursor is opaque to clients: base64url of `[createdAt, direction, id]`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

import msgspec

from plugin_host.errors import Refusal

from .store.base import DELIVERY_STATES, DeliveryState, InboxEntry, OutboxEntry, Page

Direction = Literal["outbound", "inbound"]
_PREFIX: dict[Direction, str] = {"outbound": "out-", "inbound": "in-"}
_RANK: dict[Direction, int] = {"outbound": 1, "inbound": 0}
MAX_ROW_ID = 2**62


class DeliveryRefusal(Refusal):
    """A delivery operation refused: unknown id (404), wrong state (409), bad cursor or filter (400)."""


class DeliveryView(msgspec.Struct, rename="camel", kw_only=True, frozen=True):
    """One delivery as the library (`runtime.delivery(id)`) and the admin API show it.

    `status`: `queued, sending, sent, deferred, dead` (an inbox dead letter is `dead`).
    `reason`: while deferred, why (`rate_budget, reply_window, not_connected,
    retry_after`); when dead, why (`failed` after the last attempt, `undeliverable`
    for an error no retry can fix, `refused` by the platform for good, `expired`
    after `deferTtlSeconds` deferred); otherwise null. Times are epoch seconds.
    """

    id: str
    direction: Direction
    status: DeliveryState
    reason: str | None
    channel_id: str
    peer_id: str
    session_id: str  # the conversation reference of SPEC 6.3, `{kind}:{peerType}:{peerId}[:{threadId}]`
    request_id: str | None  # outbound: the stable requestId of SPEC 6.4
    message_id: str | None  # inbound: the platform's message id
    content: str
    target: dict[str, Any] | None  # outbound: the SendRequest target
    attempts: int
    last_error: str | None
    created_at: float
    updated_at: float
    next_attempt_at: float | None  # queued or deferred: when it is looked at next
    deferred_at: float | None  # when it was first deferred
    expires_at: float | None  # deferred: when it dies unless it can go out before
    first_attempt_at: float | None
    last_attempt_at: float | None
    sent_at: float | None
    provider_message_id: str | None


def delivery_id(direction: Direction, entry_id: int) -> str:
    return f"{_PREFIX[direction]}{entry_id}"


def parse_delivery_id(text: str) -> tuple[Direction, int]:
    """`out-42` -> ("outbound", 42); DeliveryRefusal (404) for anything else."""
    for direction, prefix in _PREFIX.items():
        number = text.removeprefix(prefix)
        if number != text and number.isdigit() and len(number) <= 18:
            return direction, int(number)
    raise DeliveryRefusal("delivery_not_found", f"no delivery {text[:80]!r}", status=404)


def outbound_view(entry: OutboxEntry, *, defer_ttl: float) -> DeliveryView:
    state = entry.state
    waiting = state in ("queued", "deferred")
    target = entry.payload.get("target")
    content = entry.payload.get("content")
    return DeliveryView(
        id=delivery_id("outbound", entry.id),
        direction="outbound",
        status=state,
        reason=entry.defer_reason if state == "deferred" else entry.reason if state == "dead" else None,
        channel_id=entry.channel_id,
        peer_id=entry.peer_id,
        session_id=entry.conversation.removeprefix(f"{entry.channel_id}:"),
        request_id=entry.request_id,
        message_id=None,
        content=content if isinstance(content, str) else "",
        target=target if isinstance(target, dict) else None,
        attempts=entry.attempts,
        last_error=entry.last_error,
        created_at=entry.created_at,
        updated_at=entry.updated_at,
        next_attempt_at=entry.next_attempt_at if waiting else None,
        deferred_at=entry.deferred_at,
        expires_at=entry.deferred_at + defer_ttl if state == "deferred" and entry.deferred_at is not None else None,
        first_attempt_at=entry.first_attempt_at,
        last_attempt_at=entry.last_attempt_at,
        sent_at=entry.sent_at,
        provider_message_id=entry.provider_message_id,
    )


def inbound_view(entry: InboxEntry) -> DeliveryView:
    state: DeliveryState = "dead" if entry.status == "dead" else "sending" if entry.status == "claimed" else "queued"
    return DeliveryView(
        id=delivery_id("inbound", entry.id),
        direction="inbound",
        status=state,
        reason=entry.reason if state == "dead" else None,
        channel_id=entry.channel_id,
        peer_id=entry.message.peer_id,
        session_id=entry.session_id,
        request_id=None,
        message_id=entry.message.message_id,
        content=entry.message.content,
        target=None,
        attempts=entry.attempts,
        last_error=entry.last_error,
        created_at=entry.created_at,
        updated_at=entry.updated_at,
        next_attempt_at=entry.next_attempt_at if state == "queued" else None,
        deferred_at=None,
        expires_at=None,
        first_attempt_at=None,
        last_attempt_at=None,
        sent_at=None,
        provider_message_id=None,
    )


def check_state(value: str | None) -> DeliveryState | None:
    """A `status` filter: one of the states (`failed` is read as `dead`, the old name), or None for all."""
    if value in (None, ""):
        return None
    if value == "failed":
        return "dead"
    if value not in DELIVERY_STATES:
        raise DeliveryRefusal(
            "invalid_parameter",
            f"status must be one of {', '.join(DELIVERY_STATES)}",
            {"parameter": "status"},
            status=400,
        )
    return value


def sort_key(view: DeliveryView) -> tuple[float, int, int]:
    return (view.created_at, _RANK[view.direction], int(view.id.split("-", 1)[1]))


def encode_cursor(view: DeliveryView) -> str:
    created_at, rank, entry_id = sort_key(view)
    raw = msgspec.json.encode([created_at, rank, entry_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[Page, Page]:
    """The pages to continue from in the outbox and in the inbox."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, rank, entry_id = msgspec.json.decode(raw, type=tuple[float, int, int])
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise DeliveryRefusal(
            "invalid_cursor", "cursor is not one this API gave out", {"parameter": "cursor"}, status=400
        ) from None
    if rank not in (0, 1) or not 0 <= entry_id <= MAX_ROW_ID or created_at != created_at:
        raise DeliveryRefusal(
            "invalid_cursor", "cursor is not one this API gave out", {"parameter": "cursor"}, status=400
        )
    # the listing's order is (createdAt, outbound before inbound, id), newest first
    outbox = Page(created_at, entry_id if rank == 1 else 0)
    inbox = Page(created_at, entry_id if rank == 0 else MAX_ROW_ID)
    return outbox, inbox
