"""Platform budgets (SPEC 4 `limits.outbound`, 6.4) as a pure policy, and the in-memory send log it reads.

The outbox dispatcher asks `decide(...)` before every `message.send`: send now,
wait (`deferred` with a reason and a due time, or until an event releases it), or
give up because the delivery has waited longer than `deferTtlSeconds`. Every
input is a value (time from the injected clock, the peer's reply window from the
store, the send log), so the rules are tested without sleeping.

Windows are sliding: "N per minute" means no 60-second interval ever holds more
than N `message.send` calls. Every call counts, also one the platform refuses
(-32015, -32016): the platform saw it.
"""

from __future__ import annotations

import collections
from typing import Literal

import msgspec

from plugin_host.manifest import OutboundLimits

DeferReason = Literal["rate_budget", "reply_window", "not_connected", "retry_after"]
DEFER_REASONS: tuple[DeferReason, ...] = ("rate_budget", "reply_window", "not_connected", "retry_after")
DEFAULT_DEFER_TTL = 86_400.0  # SPEC 6.4 deferTtlSeconds
WINDOW = 60.0  # the "per minute" of perPeerPerMinute / perConnectionPerMinute
NO_LIMITS = OutboundLimits()


class PeerWindow(msgspec.Struct, frozen=True):
    """What the store knows of a peer's reply window (recorded at ingest and at each send)."""

    last_inbound_at: float | None = None  # the peer's last inbound message; None: never wrote
    replies: int = 0  # deliveries sent to the peer since then
    closed: bool = False  # the platform answered -32016 since then


class Send(msgspec.Struct, frozen=True):
    """Call `message.send` now (and record the call in the send log)."""


class Defer(msgspec.Struct, frozen=True):
    """Wait. `due`: when to look again (None: only when an event releases it, or at the TTL).

    `parked`: waiting for the connection-wide budget; the dispatcher releases parked
    deliveries one at a time as that budget frees, instead of waking them all.
    """

    reason: DeferReason
    due: float | None = None
    parked: bool = False


class Expire(msgspec.Struct, frozen=True):
    """Deferred for `deferTtlSeconds` and still blocked: dead, with the reason it waited for."""

    reason: DeferReason


Decision = Send | Defer | Expire


def needs_peer_window(limits: OutboundLimits) -> bool:
    """Whether `decide` reads the peer's reply window (the store lookup is skipped otherwise)."""
    return limits.reply_window_seconds is not None or limits.max_replies_per_inbound is not None


def reply_window_open(limits: OutboundLimits, peer: PeerWindow | None, now: float, in_flight: int = 0) -> bool:
    """SPEC 6.4: within `replyWindowSeconds` of the peer's last message, under `maxRepliesPerInbound`."""
    if peer is not None and peer.closed:
        return False  # the platform said so (-32016); only the peer writing again reopens it
    if limits.reply_window_seconds is not None:
        if peer is None or peer.last_inbound_at is None or now - peer.last_inbound_at > limits.reply_window_seconds:
            return False
    if limits.max_replies_per_inbound is not None:
        replies = (peer.replies if peer is not None else 0) + in_flight
        if replies >= limits.max_replies_per_inbound:
            return False
    return True


def window_wait(times: collections.deque[float], per_minute: int | None, now: float) -> float | None:
    """When the next call fits a sliding `per_minute` window over the ascending call `times` (None: now)."""
    if per_minute is None:
        return None
    if per_minute <= 0:
        return float("inf")  # the schema refuses 0; a hand-built limit of 0 means never, not a crash
    if len(times) < per_minute:
        return None
    due = times[-per_minute] + WINDOW  # the per_minute-th most recent call leaves the window then
    return due if due > now else None


def decide(
    limits: OutboundLimits,
    *,
    now: float,
    connected: bool,
    peer: PeerWindow | None,
    peer_in_flight: int,
    peer_calls: collections.deque[float],
    connection_calls: collections.deque[float],
    deferred_at: float | None,
    ttl: float,
) -> Decision:
    """The dispatcher's decision for one delivery at the head of its conversation.

    Blocked, in this order: the connection is not connected (`not_connected`), the
    reply window is closed (`reply_window`), the per-peer interval or per-minute
    budget (`rate_budget`, due when it frees), the per-connection budget
    (`rate_budget`, parked). A delivery first deferred at `deferred_at` that is
    still blocked at `deferred_at + ttl` or later expires.
    """
    blocked = _blocked(
        limits,
        now=now,
        connected=connected,
        peer=peer,
        peer_in_flight=peer_in_flight,
        peer_calls=peer_calls,
        connection_calls=connection_calls,
    )
    if blocked is None:
        return Send()
    if deferred_at is not None and now >= deferred_at + ttl:
        return Expire(blocked.reason)
    # never look later than the TTL: a blocked delivery dies on time without a scan
    deadline = (deferred_at if deferred_at is not None else now) + ttl
    due = deadline if blocked.due is None else min(blocked.due, deadline)
    return Defer(blocked.reason, due, blocked.parked)


def _blocked(
    limits: OutboundLimits,
    *,
    now: float,
    connected: bool,
    peer: PeerWindow | None,
    peer_in_flight: int,
    peer_calls: collections.deque[float],
    connection_calls: collections.deque[float],
) -> Defer | None:
    if not connected:
        return Defer("not_connected")
    if not reply_window_open(limits, peer, now, peer_in_flight):
        return Defer("reply_window")
    peer_due: float | None = None
    if limits.min_interval_ms is not None and peer_calls:
        next_at = peer_calls[-1] + limits.min_interval_ms / 1000.0
        if next_at > now:
            peer_due = next_at
    per_peer = window_wait(peer_calls, limits.per_peer_per_minute, now)
    if per_peer is not None:
        peer_due = per_peer if peer_due is None else max(peer_due, per_peer)
    if peer_due is not None:
        return Defer("rate_budget", peer_due)
    connection_due = window_wait(connection_calls, limits.per_connection_per_minute, now)
    if connection_due is not None:
        return Defer("rate_budget", connection_due, parked=True)
    return None


class SendLog:
    """Times of recent `message.send` calls of one channel: per peer and for the whole connection.

    Only what a window can still see is kept (the last minute, and each peer's last
    call for `minIntervalMs`), so memory follows the recent traffic, not history.
    """

    def __init__(self, limits: OutboundLimits) -> None:
        self.limits = limits
        self.connection: collections.deque[float] = collections.deque()
        self._peers: dict[str, collections.deque[float]] = {}
        self._records = 0
        self._keep = max(WINDOW, (limits.min_interval_ms or 0) / 1000.0)

    def peer(self, peer_id: str) -> collections.deque[float]:
        return self._peers.get(peer_id) or collections.deque()

    def record(self, peer_id: str, at: float) -> None:
        calls = self._peers.get(peer_id)
        if calls is None:
            calls = self._peers[peer_id] = collections.deque()
        _append(calls, at)
        _append(self.connection, at)
        _drop_before(calls, at - WINDOW, keep_last=True)
        _drop_before(self.connection, at - WINDOW, keep_last=False)
        self._records += 1
        if self._records % 1024 == 0:  # idle peers go every so often: amortised O(1) per call
            self.forget_idle(at)

    def forget_idle(self, now: float) -> None:
        """Drop peers whose last call no window can see any more."""
        for peer_id in [p for p, calls in self._peers.items() if calls[-1] <= now - self._keep]:
            del self._peers[peer_id]

    def __len__(self) -> int:
        return len(self._peers)


def _append(calls: collections.deque[float], at: float) -> None:
    # calls arrive in time order; a restart's rebuild may not, and a window needs them sorted
    if calls and at < calls[-1]:
        items = sorted([*calls, at])
        calls.clear()
        calls.extend(items)
    else:
        calls.append(at)


def _drop_before(calls: collections.deque[float], cutoff: float, *, keep_last: bool) -> None:
    while calls and calls[0] <= cutoff and not (keep_last and len(calls) == 1):
        calls.popleft()
