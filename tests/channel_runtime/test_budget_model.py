"""The outbox dispatcher under platform budgets, against a reference model (SPEC 4 `limits.outbound`, 6.4).

A hypothesis state machine drives a real ChannelRuntime (in-memory SQLite store,
a memory channel with budgets, FakeClock) through random sends to random peers,
inbound messages that open reply windows, platform answers -32015 / -32016 /
-32019, and time moving on. After every step the dispatcher is let run until
nothing more happens, and the record of every `message.send` call the "platform"
saw is checked against the rules, computed independently here:

- never more calls than a budget allows in any 60-second window, nor two calls to
  one peer closer than `minIntervalMs`; every call inside the peer's reply window;
  at most `maxRepliesPerInbound` accepted sends per inbound message; none to a peer
  that was answered -32016 until it wrote again;
- order kept per conversation; nothing lost (accepted once = `sent`; a refused
  delivery is never `sent`); nothing waits without a reason that holds now;
- a deferred delivery dies exactly when it has waited `deferTtlSeconds`, not before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.from_thread
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from channel_runtime import ChannelConfig, InboundMessage, OutboundMessage
from channel_runtime.channels import MemoryChannel
from channel_runtime.runtime import ChannelRuntime
from channel_runtime.store.base import OutboxEntry
from plugin_host.clock import FakeClock
from plugin_host.errors import RATE_LIMITED, REFUSED, REPLY_WINDOW_CLOSED, RpcError
from plugin_host.protocol import SendRequest, SendResult

T = TypeVar("T")

LIMITS = {
    "perPeerPerMinute": 3,
    "perConnectionPerMinute": 3,
    "minIntervalMs": 2000,
    "replyWindowSeconds": 120,
    "maxRepliesPerInbound": 2,
}
PER_PEER, PER_CONNECTION, INTERVAL = 3, 3, 2.0
REPLY_WINDOW, MAX_REPLIES, TTL = 120.0, 2, 300.0
PEERS = ("p0", "p1")


@dataclass
class Call:
    order: int  # position among calls and inbound messages, as they happened
    at: float
    peer: str
    content: str
    outcome: str  # "ok", "rate_limited", "window_closed", "refused"


@dataclass
class Platform:
    """What the fake platform does with a `message.send` call, and what it saw."""

    clock: FakeClock
    calls: list[Call] = field(default_factory=list)
    inbound: list[tuple[int, float, str]] = field(default_factory=list)  # (order, at, peer)
    closing: set[str] = field(default_factory=set)  # peers whose window the platform closes at the next call
    rate_limited_until: float = 0.0
    refuse_next: bool = False
    order: int = 0

    def next_order(self) -> int:
        self.order += 1
        return self.order

    async def send(self, request: SendRequest) -> SendResult:
        now, peer = self.clock.time(), request.target.peer_id
        call = Call(self.next_order(), now, peer, request.content, "ok")
        self.calls.append(call)
        if now < self.rate_limited_until:
            call.outcome = "rate_limited"
            raise RpcError(RATE_LIMITED, "slow down", {"retryAfterSeconds": self.rate_limited_until - now})
        if peer in self.closing:
            self.closing.discard(peer)
            call.outcome = "window_closed"
            raise RpcError(REPLY_WINDOW_CLOSED, "context token is stale")
        if self.refuse_next:
            self.refuse_next = False
            call.outcome = "refused"
            raise RpcError(REFUSED, "the user blocked the bot")
        return SendResult(duplicate=False, provider_message_id=f"pm_{call.order}")


class BudgetMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.platform = Platform(self.clock)
        self._portal_cm = anyio.from_thread.start_blocking_portal(backend="asyncio")
        self.portal = self._portal_cm.__enter__()

        async def no_reply(message: InboundMessage) -> None:
            return None

        self.runtime = ChannelRuntime(
            no_reply,
            "memory://",
            clock=self.clock,
            idle_poll=3600.0,  # nothing happens unless the machine wakes it: time is the FakeClock's
            delivery_attempts=1000,
            defer_ttl=TTL,
            outbox_concurrency=4,
        )
        self._runtime_cm = self.portal.wrap_async_context_manager(self.runtime)
        self._runtime_cm.__enter__()
        self.run(self.runtime.add_channel, "wx", ChannelConfig(kind="memory", config={"outboundLimits": LIMITS}))
        channel = self.runtime.channels["wx"]
        assert isinstance(channel, MemoryChannel)
        self.channel = channel
        channel.on_send = self.platform.send
        self.sent_order: dict[str, tuple[tuple[str, str | None], int]] = {}  # content -> (conversation, seq)
        self.ids: dict[str, str] = {}  # content -> delivery id
        self.n = 0

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return self.portal.call(fn, *args)

    def teardown(self) -> None:
        try:
            self._runtime_cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)

    # ---------------------------------------------------------------- driving

    async def _settle(self) -> None:
        """Let the dispatcher work until nothing changes (nothing is in flight, nothing due is left)."""
        seen: tuple[int, int] | None = None
        for _ in range(500):
            self.runtime.wake()
            await anyio.wait_all_tasks_blocked()
            counts = await self.runtime.store.outbox.counts()
            now = (len(self.platform.calls), counts["queued"] * 1000 + counts["deferred"] * 7 + counts["dead"])
            if now == seen and counts["sending"] == 0:
                return
            seen = now
        raise AssertionError("the dispatcher never came to rest")

    def settle(self) -> None:
        self.run(self._settle)

    @rule(
        peer=st.sampled_from(PEERS),
        thread=st.sampled_from([None, None, "t"]),
        count=st.integers(1, 4),
        gap=st.sampled_from([0.0, 2.5, 2.5, 20.0]),
        peer_writes_first=st.booleans(),
    )
    def send(self, peer: str, thread: str | None, count: int, gap: float, peer_writes_first: bool) -> None:
        """`count` messages to one conversation, `gap` seconds apart (often answering the peer)."""
        if peer_writes_first:
            self.inbound(peer)
        for _ in range(count):
            self.n += 1
            content = f"m{self.n}"
            message = OutboundMessage(
                channel_id="wx", peer_id=peer, content=content, message_id=content, thread_id=thread
            )
            self.ids[content] = self.run(self.runtime.send, message)
            self.sent_order[content] = ((peer, thread), self.n)
            self.settle()
            self.clock.advance(gap)
        self.settle()

    @rule(peer=st.sampled_from(PEERS))
    def peer_writes(self, peer: str) -> None:
        self.inbound(peer)

    def inbound(self, peer: str) -> None:
        self.n += 1
        self.platform.inbound.append((self.platform.next_order(), self.clock.time(), peer))
        self.run(lambda: self.channel.receive(peer, "hello", message_id=f"in{self.n}"))
        self.settle()

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.5, 2.5, 10.0, 30.0, 61.0, 130.0, TTL / 2, TTL]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.settle()

    @rule(offset=st.sampled_from([-0.5, 0.0, 0.5]))
    def advance_to_a_deadline(self, offset: float) -> None:
        """Time moves to just before, at, or just after the earliest TTL deadline of a deferred delivery."""
        deadlines = [
            e.deferred_at + TTL for e in self.entries().values() if e.state == "deferred" and e.deferred_at is not None
        ]
        if deadlines:
            self.clock.advance(max(0.0, min(deadlines) + offset - self.clock.time()))
        self.settle()

    @rule(
        answer=st.sampled_from(["closes_window", "rate_limits", "refuses_next"]),
        peer=st.sampled_from(PEERS),
        seconds=st.sampled_from([1.0, 5.0, 20.0]),
    )
    def platform_answers(self, answer: str, peer: str, seconds: float) -> None:
        """The platform's next answers: -32016 for a peer, -32015 for `seconds`, or -32019 once."""
        if answer == "closes_window":
            self.platform.closing.add(peer)
        elif answer == "rate_limits":
            self.platform.rate_limited_until = self.clock.time() + seconds
        else:
            self.platform.refuse_next = True

    # ---------------------------------------------------------------- the reference model

    def entries(self) -> dict[str, OutboxEntry]:
        entries = self.run(lambda: self.runtime.store.outbox.list(limit=10_000))
        return {e.payload["content"]: e for e in entries}

    def _last_inbound(self, peer: str, before_order: int) -> tuple[int, float] | None:
        found = [(o, t) for o, t, p in self.platform.inbound if p == peer and o < before_order]
        return found[-1] if found else None

    def window_open(self, peer: str, order: int, now: float) -> bool:
        last = self._last_inbound(peer, order)
        if last is None or now - last[1] > REPLY_WINDOW:
            return False
        since = [c for c in self.platform.calls if c.peer == peer and last[0] < c.order < order]
        if any(c.outcome == "window_closed" for c in since):
            return False
        return sum(c.outcome == "ok" for c in since) < MAX_REPLIES

    def peer_budget_blocked(self, peer: str, now: float) -> bool:
        calls = [c.at for c in self.platform.calls if c.peer == peer]
        if calls and calls[-1] + INTERVAL > now:
            return True
        return sum(1 for at in calls if at > now - 60) >= PER_PEER

    def connection_budget_blocked(self, now: float) -> bool:
        return sum(1 for c in self.platform.calls if c.at > now - 60) >= PER_CONNECTION

    @invariant()
    def budgets_hold_in_every_window(self) -> None:
        times = [c.at for c in self.platform.calls]
        assert all(times[i + PER_CONNECTION] - times[i] >= 60 for i in range(len(times) - PER_CONNECTION))
        for peer in PEERS:
            mine = [c.at for c in self.platform.calls if c.peer == peer]
            assert all(b - a >= INTERVAL for a, b in zip(mine, mine[1:], strict=False)), (peer, mine)
            assert all(mine[i + PER_PEER] - mine[i] >= 60 for i in range(len(mine) - PER_PEER)), (peer, mine)

    @invariant()
    def every_call_is_inside_a_reply_window(self) -> None:
        for call in self.platform.calls:
            assert self.window_open(call.peer, call.order, call.at), call

    @invariant()
    def order_per_conversation_and_nothing_lost(self) -> None:
        entries = self.entries()
        assert set(entries) == set(self.sent_order)
        accepted = [c.content for c in self.platform.calls if c.outcome == "ok"]
        assert len(accepted) == len(set(accepted)), "a delivery was accepted twice"
        for content, entry in entries.items():
            assert entry.state != "sending"
            outcomes = [c.outcome for c in self.platform.calls if c.content == content]
            assert (entry.state == "sent") == ("ok" in outcomes), (content, entry.state, outcomes)
            if entry.state == "sent":
                assert entry.provider_message_id is not None
            if entry.state == "dead":
                assert entry.reason in ("refused", "expired"), entry
                assert (entry.reason == "refused") == ("refused" in outcomes)
        finished: dict[tuple[str, str | None], int] = {}
        for call in self.platform.calls:
            conversation, seq = self.sent_order[call.content]
            # a call never goes back in its conversation, and everything before it is finished
            assert seq >= finished.get(conversation, 0), (call, finished)
            earlier = [c for c, (conv, s) in self.sent_order.items() if conv == conversation and s < seq]
            assert all(entries[c].state in ("sent", "dead") for c in earlier), (call, earlier)
            finished[conversation] = seq

    @invariant()
    def nothing_waits_without_a_reason_that_holds_now(self) -> None:
        now = self.clock.time()
        order = self.platform.order + 1
        entries = self.entries()
        by_conversation: dict[tuple[str, str | None], list[str]] = {}
        for content, (conversation, _) in sorted(self.sent_order.items(), key=lambda kv: kv[1][1]):
            if entries[content].state not in ("sent", "dead"):
                by_conversation.setdefault(conversation, []).append(content)
        for conversation, waiting in by_conversation.items():
            head = entries[waiting[0]]
            assert all(entries[c].state == "queued" for c in waiting[1:])  # behind the head, in order
            assert head.state == "deferred", (head.state, head.defer_reason, head.next_attempt_at, now)
            assert head.deferred_at is not None and head.deferred_at + TTL > now, "outlived its TTL"
            peer = conversation[0]
            if head.defer_reason == "reply_window":
                assert not self.window_open(peer, order, now), head
            elif head.defer_reason == "rate_budget":
                assert self.peer_budget_blocked(peer, now) or self.connection_budget_blocked(now), head
            else:
                assert head.defer_reason == "retry_after" and head.next_attempt_at > now, head

    @invariant()
    def deferred_deliveries_die_exactly_at_their_ttl(self) -> None:
        for entry in self.entries().values():
            if entry.reason == "expired":
                assert entry.deferred_at is not None and entry.updated_at >= entry.deferred_at + TTL, entry


TestBudgets = BudgetMachine.TestCase
TestBudgets.settings = settings(
    max_examples=30, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
