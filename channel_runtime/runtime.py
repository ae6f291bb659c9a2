"""ChannelRuntime: the embeddable core (SPEC 6).

Owns the channels, the store, the inbound pipeline (bridge dedupe → runtime
dedupe → durable inbox → handler workers) and the outbox dispatcher. Every
background loop runs in the runtime's task group; `stop()` cancels and awaits it.

The dispatcher enforces the channel's platform budgets (`budget.decide`) before
each `message.send` and records what happened as the delivery's state (SPEC 6.4):
deferred deliveries wait in the store with the time they are due, and wake only on
the events that can release them — the peer writing again (in the inbox commit),
the connection coming back (`connection_restored`), the connection-wide budget
freeing (parked deliveries, released one at a time), or their due time.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from plugin_host.clock import Clock, SystemClock
from plugin_host.errors import Refusal, RpcError
from plugin_host.lifetime import owned_task_group
from plugin_host.manifest import OutboundLimits
from plugin_host.protocol import BridgeEvent, InboundAck, SendRequest, SendResult, Target

from .activity import ActivityCounts
from .budget import (
    DEFAULT_DEFER_TTL,
    NO_LIMITS,
    WINDOW,
    Defer,
    DeferReason,
    Expire,
    PeerWindow,
    SendLog,
    decide,
    needs_peer_window,
    window_wait,
)
from .channels import BUILTIN_KINDS, Channel, ChannelFactory, DeliveryError, rpc_delivery_error
from .config import ChannelConfig
from .deliveries import (
    DeliveryRefusal,
    DeliveryView,
    Direction,
    check_state,
    decode_cursor,
    delivery_id,
    encode_cursor,
    inbound_view,
    outbound_view,
    parse_delivery_id,
    sort_key,
)
from .events import EventHub
from .leases import LeaseKeeper, NodeSettings, default_node_id, describe_nodes
from .messages import InboundMessage, OutboundMessage
from .queues import QueueWorker, backoff_delay
from .store import ConnectionRecord, Lease, Store, open_application_store
from .store.base import (
    RETRY_AFTER_SECONDS,
    DeadReason,
    Delivery,
    InboxEntry,
    OutboxEntry,
    PeerCall,
    error_text,
)

if TYPE_CHECKING:
    from plugin_host.host import PluginHost

    from .connections import ConnectionManager

log = logging.getLogger(__name__)

Handler = Callable[[InboundMessage], Awaitable["OutboundMessage | list[OutboundMessage] | None"]]
SHARED_IDLE_POLL = 0.2  # seconds; cheaper than a NOTIFY per commit, which PostgreSQL serialises
CHANNEL_STATES = ("starting", "running", "stopped", "failed", "disabled", "removed")


class ChannelError(Exception):
    """add_channel/remove_channel/send refused: unknown kind, failed start, unknown channel."""


class IngestError(Refusal):
    """An inbound event refused before it was accepted."""


class IngestResult(msgspec.Struct, frozen=True):
    status: int  # 200 accepted/duplicate, 409 in progress
    ack: InboundAck


async def ingest_connection(store: Store, event: BridgeEvent, plugin_id: str | None) -> ConnectionRecord:
    """The live connection an inbound event names; IngestError (404) when it is unknown, revoked, or
    (with `plugin_id`, the plugin that sent it) another plugin's."""
    connection = await store.connections.get(event.connection_id)
    if (
        connection is None
        or connection.status == "revoked"
        or (plugin_id is not None and connection.plugin_id != plugin_id)
    ):
        raise IngestError("unknown_connection", "unknown or revoked connection", status=404)
    return connection


class ChannelState(msgspec.Struct):
    state: str
    last_error: str | None = None
    started_at: float | None = None


class DeliveryCounters(msgspec.Struct):
    """What the dispatcher did since the runtime started (for the metrics)."""

    sent: int = 0
    deferred: dict[str, int] = msgspec.field(default_factory=dict)  # by reason
    dead: dict[str, int] = msgspec.field(default_factory=dict)  # by reason


_DEFAULT_PAGE = 50
MAX_PAGE = 500
_RELEASE_GRACE = 5.0  # seconds a released parked delivery has to be claimed before another is released


async def echo_handler(message: InboundMessage) -> OutboundMessage | None:
    return message.reply(f"echo: {message.content}")


class ChannelRuntime(anyio.AsyncContextManagerMixin):
    def __init__(
        self,
        handler: Handler | None = None,
        store: str | Store = "memory://",
        *,
        plugin_host: PluginHost | None = None,
        clock: Clock | None = None,
        home: Path | str | None = None,
        secret_key: str | None = None,
        inbox_concurrency: int = 16,
        outbox_concurrency: int = 16,
        handler_attempts: int = 5,
        delivery_attempts: int = 8,
        retry_base: float = 1.0,
        retry_cap: float = 300.0,
        idle_poll: float = 1.0,
        lease: float = 300.0,
        handler_timeout: float | None = None,
        retention_interval: float = 3600.0,
        defer_ttl: float = DEFAULT_DEFER_TTL,
        node: NodeSettings | None = None,
    ) -> None:
        self.handler: Handler = handler or echo_handler
        self._store_spec = store
        self._store: Store | None = store if isinstance(store, Store) else None
        self.plugin_host = plugin_host
        self.clock = clock or SystemClock()
        self.home = Path(home) if home is not None else None
        self._secret_key = secret_key
        self._kinds: dict[str, ChannelFactory] = dict(BUILTIN_KINDS)
        self._channels: dict[str, Channel] = {}
        self._configs: dict[str, ChannelConfig] = {}
        self._states: dict[str, ChannelState] = {}
        self.activity = ActivityCounts(self.clock)  # the admin page's overview
        self._lifecycle = anyio.Lock()
        self._handler_attempts = handler_attempts
        self._delivery_attempts = delivery_attempts
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._lease = lease
        # a handler must finish within its claim's lease, or the entry would be handed out twice
        self._handler_timeout = handler_timeout if handler_timeout is not None else lease * 0.9
        self._retention_interval = retention_interval
        self._idle_poll = idle_poll
        # SPEC 6.4 deferTtlSeconds: a delivery deferred this long and still blocked dies
        self.defer_ttl = defer_ttl
        # several hosts (SPEC 10): on a shared store, claims and connections are leased to this node
        self._node = node
        self.node_id = node.node_id if node is not None else default_node_id()
        self.leases: LeaseKeeper | None = None
        self._inbox = QueueWorker[InboxEntry](
            "inbox",
            self._claim_inbox,
            self._handle_entry,
            concurrency=inbox_concurrency,
            idle_poll=idle_poll,
            next_due=lambda: self.store.inbox.next_due(),
            clock=self.clock,
        )
        self._outbox = QueueWorker[OutboxEntry](
            "outbox",
            self._claim_outbox,
            self._deliver_entry,
            concurrency=outbox_concurrency,
            idle_poll=idle_poll,
            next_due=self._outbox_next_due,
            clock=self.clock,
        )
        self.events = EventHub(clock=self.clock)
        self.counters = DeliveryCounters()
        # the dispatcher's memory (rebuilt at start from the store where it matters)
        self._send_logs: dict[str, SendLog] = {}
        self._recent_calls: dict[str, list[PeerCall]] = {}  # from the store at start, until a log exists
        self._offline: dict[str, str] = {}  # channel id -> why its connection cannot send
        self._parked: dict[str, collections.deque[int]] = {}  # waiting for the connection-wide budget
        self._released: dict[str, tuple[int, float]] = {}  # the parked delivery released last, and when
        self._in_flight: collections.Counter[tuple[str, str]] = collections.Counter()  # sends per peer
        # changes of a peer's window while a dispatcher task reads it (kept only for peers being read)
        self._peer_versions: collections.Counter[tuple[str, str]] = collections.Counter()
        self._peer_reads: collections.Counter[tuple[str, str]] = collections.Counter()
        self._window_waiting: set[tuple[str, str]] = set()  # peers with deliveries deferred for their window
        self._waiters: dict[int, anyio.Event] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._started = False
        self.connections: ConnectionManager | None = None
        if plugin_host is not None:
            from .connections import ConnectionManager
            from .plugin_services import RuntimeServices

            self.connections = ConnectionManager(self, plugin_host)
            # the one place where the host learns who answers its plugins' requests
            plugin_host.bind_services(RuntimeServices(self, self.connections))
            plugin_host.add_state_listener(self._plugin_state_changed)

    # ---------------------------------------------------------------- read-only views

    @property
    def channels(self) -> Mapping[str, Channel]:
        return MappingProxyType(self._channels)

    @property
    def channel_configs(self) -> Mapping[str, ChannelConfig]:
        return MappingProxyType(self._configs)

    @property
    def states(self) -> Mapping[str, dict[str, Any]]:
        return MappingProxyType(
            {
                cid: {"state": s.state, "last_error": s.last_error, "started_at": s.started_at}
                for cid, s in self._states.items()
            }
        )

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the runtime is not started")
        return self._store

    @property
    def started(self) -> bool:
        return self._started

    def register_channel_kind(self, name: str, factory: ChannelFactory) -> None:
        """Let `ChannelConfig(kind=name)` build channels with `factory(runtime, channel_id, config)`."""
        self._kinds[name] = factory

    # ---------------------------------------------------------------- lifecycle

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[ChannelRuntime]:
        """The runtime's whole life: store, channels, connections, inbox and outbox workers."""
        if self._store is None:
            self._store = await self._open_store()
        try:
            if self._store.shared:
                # other hosts add work here too (replies for the connections this host serves): look more often
                for worker in (self._inbox, self._outbox):
                    worker.idle_poll = min(worker.idle_poll, SHARED_IDLE_POLL)
                # other hosts consume the same queues: claims come back by lease expiry, never at start
                self.leases = LeaseKeeper(
                    self._store,
                    self._node or NodeSettings(),
                    self.clock,
                    connections=self._leasable_connections,
                    on_change=self._leases_changed,
                )
            else:
                await self._store.inbox.release_claims()
                await self._store.outbox.release_claims()
            # parked deliveries were parked in a process's memory: look at them afresh
            await self._store.outbox.release("rate_budget")
            self._recent_calls.clear()
            for call in await self._store.outbox.recent_calls(self.clock.time() - WINDOW):
                self._recent_calls.setdefault(call.channel_id, []).append(call)
            async with owned_task_group() as tg:
                self._tg = tg
                self._started = True
                try:
                    # channels first: work recovered from before a restart must find its channel
                    async with self._lifecycle:
                        for channel_id, config in list(self._configs.items()):
                            if config.enabled and channel_id not in self._channels:
                                await self._start_new(channel_id, config, raise_errors=False)
                    if self.connections is not None:
                        # the channels of connections read the host's registry, which it opens at its own start
                        await self.connections.host.registry.open()
                        await self.connections.start(tg)
                    if self.leases is not None:
                        await tg.start(self.leases.run)  # the first leases are taken before plugins start
                    await tg.start(self._inbox.run)
                    await tg.start(self._outbox.run)
                    tg.start_soon(self._retention_loop)
                    yield self
                finally:
                    with anyio.CancelScope(shield=True):
                        if self.connections is not None:
                            await self.connections.stop()
                        async with self._lifecycle:
                            for channel_id in list(self._channels):
                                await self._stop_channel(channel_id, "stopped")
                    self.events.close()
                    self._started = False
        finally:
            self._tg = None
            self._started = False
            if self.leases is not None:
                with anyio.CancelScope(shield=True):
                    await self.leases.hand_over()  # when the plugin host did not ask first
                self.leases = None
            if self._store is not None and not isinstance(self._store_spec, Store):
                with anyio.CancelScope(shield=True):
                    await self._store.aclose()
                self._store = None

    async def start(self) -> None:
        """`async with runtime:` for owners that cannot nest; call `stop()` from the same task."""
        if not self._started:
            await self.__aenter__()

    async def stop(self) -> None:
        """Stop channels and background loops; call from the task that called `start()`."""
        if self._tg is not None:
            await self.__aexit__(None, None, None)

    async def _open_store(self) -> Store:
        return await open_application_store(
            str(self._store_spec), clock=self.clock, home=self.home, secret_key=self._secret_key
        )

    # ---------------------------------------------------------------- channels (SPEC 6.2)

    async def add_channel(self, channel_id: str, config: ChannelConfig) -> None:
        async with self._lifecycle:
            current = self._configs.get(channel_id)
            if not config.enabled:
                if channel_id in self._channels:
                    await self._stop_channel(channel_id, "disabled")
                self._configs[channel_id] = config
                self._set_state(channel_id, ChannelState("disabled"))
                return
            if current == config and (channel_id in self._channels or not self._started):
                return
            if not self._started:
                self._factory(config)  # unknown kind fails now, not at start
                self._configs[channel_id] = config
                self._set_state(channel_id, ChannelState("stopped"))
                return
            if channel_id in self._channels:
                await self._replace(channel_id, config)
            else:
                await self._start_new(channel_id, config, raise_errors=True)

    async def remove_channel(self, channel_id: str) -> None:
        async with self._lifecycle:
            if channel_id not in self._configs and channel_id not in self._channels:
                if self._states.get(channel_id, ChannelState("")).state == "failed":
                    self._set_state(channel_id, ChannelState("removed"))  # a failed add is cleared too
                return
            await self._stop_channel(channel_id, "removed")
            self._configs.pop(channel_id, None)

    def _factory(self, config: ChannelConfig) -> ChannelFactory:
        factory = self._kinds.get(config.kind)
        if factory is None:
            raise ChannelError(f"unknown channel kind {config.kind!r}; known: {', '.join(sorted(self._kinds))}")
        return factory

    async def _build_and_start(self, channel_id: str, config: ChannelConfig) -> Channel:
        channel = self._factory(config)(self, channel_id, config)
        await channel.start()
        return channel

    async def _start_new(self, channel_id: str, config: ChannelConfig, *, raise_errors: bool) -> None:
        self._configs[channel_id] = config
        self._set_state(channel_id, ChannelState("starting"))
        try:
            channel = await self._build_and_start(channel_id, config)
        except Exception as exc:
            self._set_state(channel_id, ChannelState("failed", error_text(exc)))
            if raise_errors:
                self._configs.pop(channel_id, None)
                raise ChannelError(f"channel {channel_id} failed to start: {error_text(exc)}") from exc
            log.warning("channel %s failed to start: %s", channel_id, error_text(exc))
            return
        self._channels[channel_id] = channel
        self._set_state(channel_id, ChannelState("running", None, self.clock.time()))
        self._outbox.wake()

    async def _replace(self, channel_id: str, config: ChannelConfig) -> None:
        """Start the replacement first; only when it runs, swap and stop the old one."""
        try:
            replacement = await self._build_and_start(channel_id, config)
        except Exception as exc:
            # the old channel stays registered and running; its state records the failed attempt
            current = self._states[channel_id]
            self._set_state(channel_id, ChannelState(current.state, error_text(exc), current.started_at))
            raise ChannelError(f"replacement of channel {channel_id} failed to start: {error_text(exc)}") from exc
        old = self._channels[channel_id]
        self._channels[channel_id] = replacement
        self._configs[channel_id] = config
        self._set_state(channel_id, ChannelState("running", None, self.clock.time()))
        await _stop_quietly(old)

    def _set_state(self, channel_id: str, state: ChannelState) -> None:
        self._states[channel_id] = state
        self.events.publish(
            "channel.state", {"channelId": channel_id, "state": state.state, "lastError": state.last_error}
        )

    def _plugin_state_changed(self, plugin_id: str, state: str, previous: str) -> None:
        self.events.publish("plugin.state", {"pluginId": plugin_id, "state": state, "previous": previous})

    async def _stop_channel(self, channel_id: str, final_state: str) -> None:
        channel = self._channels.pop(channel_id, None)
        if channel is not None:
            await _stop_quietly(channel)
        previous = self._states.get(channel_id)
        self._set_state(channel_id, ChannelState(final_state, previous.last_error if previous else None))

    # ---------------------------------------------------------------- inbound (SPEC 6.3)

    async def ingest(self, event: BridgeEvent, *, plugin_id: str | None = None) -> IngestResult:
        """The one inbound pipeline for the bridge, `event.inbound` and webhooks."""
        store = self.store
        connection = await ingest_connection(store, event, plugin_id)
        message = InboundMessage.from_bridge_event(event, channel_id=connection.channel_id)
        if not message.account_id:
            message.account_id = connection.account_id
        # bridge dedupe, runtime dedupe and inbox commit in one transaction; a failure is recorded and raised
        begin, entry = await store.pipeline.accept_event(
            event.connection_id, event.event_id, message, window=self._keeps_windows(connection.channel_id)
        )
        if begin.outcome == "in_progress":
            return IngestResult(
                409, InboundAck(accepted=False, duplicate=True, pending=True, retry_after_seconds=RETRY_AFTER_SECONDS)
            )
        if entry is None:  # a completed duplicate, or a message id this channel has seen
            return IngestResult(200, InboundAck(accepted=True, duplicate=True, pending=False))
        self._committed(entry)
        return IngestResult(200, InboundAck(accepted=True, duplicate=False, pending=True))

    async def accept(self, message: InboundMessage) -> bool:
        """Commit a message from a local channel (runtime dedupe + inbox); False when already seen."""
        entry = await self.store.inbox.commit(message, window=self._keeps_windows(message.channel_id))
        if entry is not None:
            self._committed(entry)
        return entry is not None

    def _keeps_windows(self, channel_id: str) -> bool:
        """Whether the channel's budgets read its peers' reply windows (only then does ingest record them)."""
        return needs_peer_window(_limits_of(self._channels.get(channel_id)))

    def _committed(self, entry: InboxEntry) -> None:
        self.activity.count(entry.channel_id, "in")
        self._inbox.wake()
        # the commit opened the peer's reply window and released the deliveries deferred for it
        key = (entry.channel_id, entry.message.peer_id)
        self._peer_changed(key)
        if key in self._window_waiting:  # (after a restart the idle poll finds them, within idle_poll)
            self._window_waiting.discard(key)
            self._outbox.wake()

    @property
    def _claim_lease(self) -> float:
        # several hosts: a short lease the keeper renews while this host lives, so a dead host's work returns soon
        return self.leases.settings.lease_ttl if self.leases is not None else self._lease

    @property
    def _claim_owner(self) -> str | None:
        return self.leases.node_id if self.leases is not None else None

    async def _claim_inbox(self, limit: int) -> list[InboxEntry]:
        return await self.store.inbox.claim_ready(limit, lease=self._claim_lease, owner=self._claim_owner)

    async def _handle_entry(self, entry: InboxEntry) -> None:
        store = self.store
        try:
            with anyio.fail_after(self._handler_timeout):
                result = await self.handler(entry.message)
            replies = [] if result is None else result if isinstance(result, list) else [result]
            try:
                deliveries = await self._deliveries(replies)
            except ChannelError as exc:
                # a reply to a channel that does not exist (removed, revoked): running the handler again cannot help
                log.warning("inbox entry %d dead-lettered: %s", entry.id, exc)
                if await store.inbox.dead_letter(entry.id, error_text(exc), reason="undeliverable"):
                    self._inbound_dead(entry, "undeliverable", error_text(exc))
                return
            # the transactional outbox: the ack and the replies commit together or not at all
            enqueued = await store.pipeline.finish_inbound(entry.id, deliveries)
        except Exception as exc:
            error = error_text(exc)
            log.warning("handler failed for %s (attempt %d): %s", entry.message.message_id, entry.attempts, error)
            if entry.attempts >= self._handler_attempts:
                if await store.inbox.dead_letter(entry.id, error):
                    self._inbound_dead(entry, "failed", error)
            else:
                await store.inbox.retry(
                    entry.id, error, backoff_delay(entry.attempts, base=self._retry_base, cap=self._retry_cap)
                )
            return
        if enqueued is None:
            log.warning("inbox entry %d was finished elsewhere after its lease ran out; replies dropped", entry.id)
        elif any(enqueued):
            self._outbox.wake()

    def _inbound_dead(self, entry: InboxEntry, reason: DeadReason, error: str) -> None:
        self.counters.dead[reason] = self.counters.dead.get(reason, 0) + 1
        self.events.publish(
            "delivery.dead",
            {
                "id": delivery_id("inbound", entry.id),
                "direction": "inbound",
                "channelId": entry.channel_id,
                "peerId": entry.message.peer_id,
                "reason": reason,
                "lastError": error,
            },
        )

    # ---------------------------------------------------------------- outbound (SPEC 6.4)

    async def send(self, message: OutboundMessage) -> str:
        """Write to the durable outbox and return the delivery's id (`out-{n}`); delivery follows.

        Idempotent by the message's stable `requestId` (SPEC 6.4): the same message
        sent again returns the id of the delivery it already has.
        """
        delivery = self._delivery(message)
        outbox = self.store.outbox
        entry_id = await outbox.enqueue(
            delivery.channel_id,
            delivery.request_id,
            delivery.payload,
            conversation=delivery.conversation,
            peer_id=delivery.peer_id,
        )
        if entry_id is not None:
            self._outbox.wake()
        else:
            known = await outbox.get_by_request_id(delivery.request_id)
            if known is None:  # discarded between the two calls: its request id is free again
                return await self.send(message)
            entry_id = known.id
        return delivery_id("outbound", entry_id)

    async def delivery(self, delivery_id_: str) -> DeliveryView | None:
        """The delivery's current state (`out-…` or an inbox dead letter `in-…`); None when unknown."""
        try:
            direction, entry_id = parse_delivery_id(delivery_id_)
        except DeliveryRefusal:
            return None
        return await self._view(direction, entry_id)

    async def wait_delivery(self, delivery_id_: str, *, timeout: float | None = None) -> DeliveryView:
        """Wait until the delivery is `sent` or `dead` and return it.

        Raises TimeoutError after `timeout` seconds, DeliveryRefusal (404) for an unknown id.
        """
        direction, entry_id = parse_delivery_id(delivery_id_)
        with anyio.fail_after(timeout):
            while True:
                view = await self._view(direction, entry_id)
                if view is None:
                    raise DeliveryRefusal("delivery_not_found", f"no delivery {delivery_id_}", status=404)
                if view.status in ("sent", "dead") or direction == "inbound":
                    return view
                event = self._waiters.setdefault(entry_id, anyio.Event())
                # the store is the truth: look again now and then, also when no event comes
                with anyio.move_on_after(self._idle_poll):
                    await event.wait()

    async def deliveries(
        self,
        *,
        status: str | None = None,
        channel_id: str | None = None,
        peer_id: str | None = None,
        direction: Direction | None = None,
        limit: int = _DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> tuple[list[DeliveryView], str | None]:
        """A page of deliveries, newest first, and the cursor of the next page (None: the last one).

        Outbox deliveries in every state and inbox dead letters (`status` dead, or no
        status filter); `status=failed` is read as `dead`.
        """
        state = check_state(status)
        limit = max(1, min(limit, MAX_PAGE))
        outbox_page, inbox_page = decode_cursor(cursor) if cursor else (None, None)
        views: list[DeliveryView] = []
        if direction in (None, "outbound"):
            entries = await self.store.outbox.list(
                state=state, channel_id=channel_id, peer_id=peer_id, limit=limit + 1, before=outbox_page
            )
            views += [outbound_view(e, defer_ttl=self.defer_ttl) for e in entries]
        if direction in (None, "inbound") and state in (None, "dead"):
            dead = await self.store.inbox.list_dead(
                limit + 1, channel_id=channel_id, peer_id=peer_id, before=inbox_page
            )
            views += [inbound_view(e) for e in dead]
        views.sort(key=sort_key, reverse=True)
        if len(views) > limit:
            return views[:limit], encode_cursor(views[limit - 1])
        return views, None

    async def retry_delivery(self, delivery_id_: str) -> DeliveryView:
        """A dead delivery goes again, with the same requestId (outbound) or through the handler (inbound)."""
        direction, entry_id = parse_delivery_id(delivery_id_)
        store = self.store
        view: DeliveryView | None = None
        if direction == "outbound":
            outgoing = await store.outbox.revive(entry_id)
            view = None if outgoing is None else outbound_view(outgoing, defer_ttl=self.defer_ttl)
        else:
            incoming = await store.inbox.revive(entry_id)
            view = None if incoming is None else inbound_view(incoming)
        if view is None:
            await self._refuse_state(direction, entry_id, "retried")
        assert view is not None
        self._admin_event("delivery.retried", view)
        self.wake()
        return view

    async def discard_delivery(self, delivery_id_: str) -> DeliveryView:
        """Forget a dead delivery; its last view is returned."""
        direction, entry_id = parse_delivery_id(delivery_id_)
        view = await self._view(direction, entry_id)
        store = self.store
        gone = await (store.outbox.discard(entry_id) if direction == "outbound" else store.inbox.discard(entry_id))
        if not gone or view is None:
            await self._refuse_state(direction, entry_id, "discarded")
        assert view is not None
        self._admin_event("delivery.discarded", view)
        return view

    async def _refuse_state(self, direction: Direction, entry_id: int, action: str) -> None:
        view = await self._view(direction, entry_id)
        if view is None:
            raise DeliveryRefusal("delivery_not_found", f"no delivery {delivery_id(direction, entry_id)}", status=404)
        raise DeliveryRefusal(
            "delivery_not_dead",
            f"delivery {view.id} is {view.status}; only a dead delivery can be {action}",
            {"status": view.status},
            status=409,
        )

    async def _view(self, direction: Direction, entry_id: int) -> DeliveryView | None:
        if direction == "outbound":
            entry = await self.store.outbox.get(entry_id)
            return None if entry is None else outbound_view(entry, defer_ttl=self.defer_ttl)
        dead = await self.store.inbox.get(entry_id)
        # the inbox shows only its dead letters: live entries are the handler's business
        return None if dead is None or dead.status != "dead" else inbound_view(dead)

    def _admin_event(self, kind: str, view: DeliveryView) -> None:
        self.events.publish(
            kind, {"id": view.id, "direction": view.direction, "channelId": view.channel_id, "peerId": view.peer_id}
        )

    async def _deliveries(self, replies: list[OutboundMessage]) -> list[Delivery]:
        try:
            return [self._delivery(reply) for reply in replies]
        except ChannelError:
            if self.leases is None:
                raise
        # several hosts: the connection may have connected on another host a moment ago; look once more
        await self._leasable_connections()
        return [self._delivery(reply) for reply in replies]

    def _delivery(self, message: OutboundMessage) -> Delivery:
        """The outbox delivery of `message`: its SendRequest and stable `requestId` (SPEC 6.4)."""
        config = self._configs.get(message.channel_id)
        if config is None:
            raise ChannelError(f"unknown channel {message.channel_id!r}")
        kind = config.connector_kind
        request_id = message.request_id(kind)
        request = SendRequest(
            request_id=request_id,
            connection_id=config.connection_id or "",
            channel_id=message.channel_id,
            kind=kind,
            target=Target(
                peer_id=message.peer_id,
                peer_type=message.peer_type,  # type: ignore[arg-type]
                thread_id=message.thread_id,
                reply_to_message_id=message.reply_to_message_id,
            ),
            content=message.content,
            content_type=message.content_type,
            metadata=dict(message.metadata),
        )
        conversation = f"{message.channel_id}:{message.session_id(kind)}"  # not parsed back out of the request id
        return Delivery(message.channel_id, request_id, msgspec.to_builtins(request), conversation, message.peer_id)

    # ---------------------------------------------------------------- the dispatcher

    async def _claim_outbox(self, limit: int) -> list[OutboxEntry]:
        if self._parked:
            await self._release_parked()
        return await self.store.outbox.claim_ready(
            limit, lease=self._claim_lease, owner=self._claim_owner, channels=self._deliverable_channels()
        )

    def _deliverable_channels(self) -> list[str] | None:
        """Several hosts: a connection's deliveries go out only through the host holding its lease (SPEC 10)."""
        if self.leases is None:
            return None
        return [channel_id for channel_id in self._configs if self._serves(channel_id)]

    def _serves(self, channel_id: str) -> bool:
        """This host runs the channel and, for a connection's, holds its lease and has handed it to the plugin."""
        config = self._configs.get(channel_id)
        if config is None or channel_id not in self._channels:
            return False
        connection_id = config.connection_id
        return connection_id is None or self._serves_connection(connection_id)

    async def _outbox_next_due(self) -> float | None:
        due = await self.store.outbox.next_due(channels=self._deliverable_channels())
        for channel_id, parked in self._parked.items():
            log_ = self._send_logs.get(channel_id)
            if parked and log_ is not None:
                frees = window_wait(log_.connection, log_.limits.per_connection_per_minute, self.clock.time())
                if frees is not None:
                    due = frees if due is None else min(due, frees)
        return due

    async def _release_parked(self) -> None:
        """One parked delivery per channel whose connection-wide budget has room: due now."""
        now = self.clock.time()
        for channel_id in list(self._parked):
            parked = self._parked[channel_id]
            released = self._released.get(channel_id)
            if released is not None and now - released[1] < _RELEASE_GRACE:
                continue  # the one released last has not been looked at yet
            log_ = self._send_logs.get(channel_id)
            limits = log_.limits if log_ is not None else NO_LIMITS
            if log_ is not None and window_wait(log_.connection, limits.per_connection_per_minute, now) is not None:
                continue
            while parked:
                entry_id = parked.popleft()
                if await self.store.outbox.release_entries([entry_id]):
                    self._released[channel_id] = (entry_id, now)
                    break
            if not parked:
                del self._parked[channel_id]

    def _send_log(self, channel_id: str, limits: OutboundLimits) -> SendLog:
        log_ = self._send_logs.get(channel_id)
        if log_ is None or log_.limits != limits:  # a hot swap may bring other limits
            log_ = self._send_logs[channel_id] = SendLog(limits)
            for call in self._recent_calls.pop(channel_id, []):
                log_.record(call.peer_id, call.at)
        return log_

    async def _peer_window(self, channel_id: str, peer_id: str) -> PeerWindow | None:
        """The peer's window as the store has it, read again if a send or an inbound changed it meanwhile."""
        key = (channel_id, peer_id)
        self._peer_reads[key] += 1
        try:
            while True:
                version = self._peer_versions[key]
                window = await self.store.outbox.peer_window(channel_id, peer_id)
                if self._peer_versions[key] == version:
                    return window
        finally:
            self._peer_reads[key] -= 1
            if not self._peer_reads[key]:
                del self._peer_reads[key]
                self._peer_versions.pop(key, None)

    def _peer_changed(self, key: tuple[str, str]) -> None:
        if key in self._peer_reads:
            self._peer_versions[key] += 1

    async def _deliver_entry(self, entry: OutboxEntry) -> None:
        store = self.store
        released = self._released.get(entry.channel_id)
        was_released = released is not None and released[0] == entry.id
        if was_released:
            del self._released[entry.channel_id]
        channel = self._channels.get(entry.channel_id)
        offline = entry.channel_id in self._offline
        if channel is None and not offline:
            await self._failed(entry, DeliveryError(f"channel {entry.channel_id} is not running"), None)
            return
        limits = _limits_of(channel)
        key = (entry.channel_id, entry.peer_id)
        peer = await self._peer_window(*key) if needs_peer_window(limits) and not offline else None
        now = self.clock.time()
        log_ = self._send_log(entry.channel_id, limits)
        decision = decide(
            limits,
            now=now,
            connected=entry.channel_id not in self._offline and channel is not None,
            peer=peer,
            peer_in_flight=self._in_flight[key],
            peer_calls=log_.peer(entry.peer_id),
            connection_calls=log_.connection,
            deferred_at=entry.deferred_at,
            ttl=self.defer_ttl,
        )
        if isinstance(decision, Expire):
            await self._dead(entry, f"deferred for {self.defer_ttl:g} s ({decision.reason})", "expired", None)
            return
        if isinstance(decision, Defer):
            assert decision.due is not None  # decide always bounds a deferral by the TTL
            await self._defer(
                entry, decision.reason, decision.due, since=now, parked=decision.parked, front=was_released
            )
            return
        assert channel is not None
        # the call counts against the budgets from the moment it is made, whatever the answer
        log_.record(entry.peer_id, now)
        self._in_flight[key] += 1
        try:
            try:
                request = msgspec.convert(entry.payload, SendRequest)
                result: SendResult = await channel.send(request)
            except Exception as exc:
                await self._failed(entry, exc, now)
                return
            await store.outbox.mark_sent(entry.id, msgspec.to_builtins(result), attempted_at=now)
        finally:
            # after mark_sent: a reader of the peer's window sees this send either in flight or in the store
            self._peer_changed(key)
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]
        self.counters.sent += 1
        self.activity.count(entry.channel_id, "sent")
        self._finished(entry.id)

    async def _failed(self, entry: OutboxEntry, exc: Exception, attempted_at: float | None) -> None:
        """A send that did not go out: defer, retry with backoff, or dead (SPEC 3.7, 6.4)."""
        store = self.store
        if isinstance(exc, RpcError):  # a channel kind that speaks plugin errors (the memory channel may)
            exc = rpc_delivery_error(exc)
        error = error_text(exc)
        if self.leases is not None and not self._serves(entry.channel_id):
            # the connection moved to another host meanwhile: its new owner sends it
            await store.outbox.retry(entry.id, error, 0.0, attempted_at=attempted_at)
            return
        failure = exc if isinstance(exc, DeliveryError) else None
        now = self.clock.time()
        if failure is not None and failure.defer is not None:
            reason = failure.defer
            first = entry.deferred_at if entry.deferred_at is not None else now
            if now >= first + self.defer_ttl:
                if reason == "reply_window":  # what the platform said holds for the peer's next deliveries too
                    await store.outbox.defer(
                        entry.id, reason, now, since=attempted_at or now, attempted_at=attempted_at
                    )
                await self._dead(entry, error, "expired", attempted_at)
                return
            due = first + self.defer_ttl
            if reason == "retry_after":
                wait = self._bounded_retry_after(failure.retry_after)
                due = min(due, now + (RETRY_AFTER_SECONDS if wait is None else wait))
            if reason == "not_connected":
                await self._session_expired(entry)
            await self._defer(entry, reason, due, since=attempted_at or now, error=error, attempted_at=attempted_at)
            return
        if failure is not None and failure.permanent:
            await self._dead(entry, error, "refused" if failure.refused else "undeliverable", attempted_at)
            return
        if entry.attempts >= self._delivery_attempts:
            await self._dead(entry, error, "failed", attempted_at)
            return
        retry_after = self._bounded_retry_after(failure.retry_after if failure is not None else None)
        delay = (
            retry_after
            if retry_after is not None
            else backoff_delay(entry.attempts, base=self._retry_base, cap=self._retry_cap)
        )
        await store.outbox.retry(entry.id, error, delay, attempted_at=attempted_at)
        self.activity.count(entry.channel_id, "deferred")

    def _bounded_retry_after(self, value: float | None) -> float | None:
        """A plugin's or sidecar's number, bounded (inf would block forever, nan is no number)."""
        if value is None or value != value:
            return None
        return min(max(value, 0.0), self._retry_cap)

    async def _defer(
        self,
        entry: OutboxEntry,
        reason: DeferReason,
        due: float,
        *,
        since: float,
        parked: bool = False,
        front: bool = False,
        error: str | None = None,
        attempted_at: float | None = None,
    ) -> None:
        changed = await self.store.outbox.defer(
            entry.id, reason, due, since=since, error=error, attempted_at=attempted_at
        )
        if not changed:
            return
        if reason == "reply_window":
            self._window_waiting.add((entry.channel_id, entry.peer_id))
        if parked:
            queue = self._parked.setdefault(entry.channel_id, collections.deque())
            if front:
                queue.appendleft(entry.id)  # it lost its released turn: first in line again
            else:
                queue.append(entry.id)
        if reason == "not_connected" and entry.channel_id not in self._offline:
            # the connection came back while this delivery was on its way: the release missed it
            await self.store.outbox.release("not_connected", channel_id=entry.channel_id)
            self._outbox.wake()
        if entry.defer_reason != reason:  # one event when it starts waiting (or for another reason)
            self.counters.deferred[reason] = self.counters.deferred.get(reason, 0) + 1
            self.activity.count(entry.channel_id, "deferred")
            self.events.publish(
                "delivery.deferred",
                {
                    "id": delivery_id("outbound", entry.id),
                    "requestId": entry.request_id,
                    "channelId": entry.channel_id,
                    "peerId": entry.peer_id,
                    "reason": reason,
                    "nextAttemptAt": due,
                },
            )

    async def _dead(self, entry: OutboxEntry, error: str, reason: DeadReason, attempted_at: float | None) -> None:
        log.warning("delivery %s dead-lettered (%s): %s", entry.request_id, reason, error)
        if not await self.store.outbox.dead_letter(entry.id, error, reason=reason, attempted_at=attempted_at):
            return
        self.counters.dead[reason] = self.counters.dead.get(reason, 0) + 1
        self.activity.count(entry.channel_id, "dead")
        self.events.publish(
            "delivery.dead",
            {
                "id": delivery_id("outbound", entry.id),
                "direction": "outbound",
                "requestId": entry.request_id,
                "channelId": entry.channel_id,
                "peerId": entry.peer_id,
                "reason": reason,
                "lastError": error,
            },
        )
        self._finished(entry.id)

    def _finished(self, entry_id: int) -> None:
        event = self._waiters.pop(entry_id, None)
        if event is not None:
            event.set()

    # ---------------------------------------------------------------- connection availability (SPEC 6.5)

    def connection_lost(self, channel_id: str, reason: str) -> None:
        """The channel's account cannot send (session expired, error): its deliveries wait, `not_connected`."""
        self._offline[channel_id] = reason

    async def connection_restored(self, channel_id: str) -> int:
        """The account is connected again: its `not_connected` deliveries go out, in order; count."""
        self._offline.pop(channel_id, None)
        released = await self.store.outbox.release("not_connected", channel_id=channel_id)
        if released:
            self._outbox.wake()
        return released

    def offline_reason(self, channel_id: str) -> str | None:
        return self._offline.get(channel_id)

    async def _session_expired(self, entry: OutboxEntry) -> None:
        """A send answered -32017: the account must log in again (SPEC 6.5)."""
        self.connection_lost(entry.channel_id, "session_expired")
        connection_id = payload_connection_id(entry.payload)
        if self.connections is not None and connection_id:
            await self.connections.session_expired(connection_id)

    def wake(self) -> None:
        """Look for due work now (after moving a fake clock, or after an outside change)."""
        self._inbox.wake()
        self._outbox.wake()

    # ---------------------------------------------------------------- several hosts (SPEC 10)

    async def _leasable_connections(self) -> list[ConnectionRecord]:
        """Every connection, for the lease keeper; other hosts' new or revoked ones get (or lose) their channel."""
        records = await self.store.connections.list()
        if self.connections is not None:
            await self.connections.sync_channels(records)
        return records

    async def _leases_changed(self, gained: list[Lease], lost: list[str]) -> None:
        if self.connections is not None:
            await self.connections.on_leases_changed(gained, lost)
        if gained:
            self._outbox.wake()  # their deliveries may go out from here now

    async def serving_host(self, connection_id: str) -> str | None:
        """Several hosts: the base URL of the host serving `connection_id` when it is another one (None: here or nobody)."""
        if self.leases is None or self._serves_connection(connection_id):
            return None
        lease = await self.store.leases.get(connection_id)
        if lease is None or lease.node_id in (None, self.leases.node_id) or lease.expires_at <= self.clock.time():
            return None
        for node in await self.store.leases.nodes():
            if node.node_id == lease.node_id:
                url = node.info.get("url")
                return url if isinstance(url, str) and url.startswith(("http://", "https://")) else None
        return None

    def _serves_connection(self, connection_id: str) -> bool:
        if self.leases is None:
            return True
        if self.connections is not None:
            return self.connections.serving(connection_id)
        return self.leases.owns(connection_id)

    async def hand_over(self) -> None:
        """Several hosts: let other hosts serve this host's connections now (call before stopping the plugins)."""
        if self.leases is not None:
            await self.leases.hand_over()

    async def nodes(self) -> list[dict[str, Any]]:
        """`GET /api/nodes`: every host with its leases; a single-host store has this host alone, no leases."""
        now = self.clock.time()
        if self.leases is None:
            return [
                {
                    "nodeId": self.node_id,
                    "instance": None,
                    "self": True,
                    "live": True,
                    "startedAt": None,
                    "heartbeatAt": now,
                    "expiresAt": None,
                    "info": {},
                    "leases": [],
                }
            ]
        return await describe_nodes(self.store, self.leases.node_id, now)

    # ---------------------------------------------------------------- housekeeping

    async def _retention_loop(self) -> None:
        while True:
            await self.clock.sleep(self._retention_interval)
            try:
                store = self.store
                await store.bridge_dedupe.prune()
                await store.message_dedupe.prune()
                await store.outbox.prune()
                # peers that never wrote back: their deliveries died or the idle poll finds them (idle_poll)
                self._window_waiting.clear()
            except Exception:
                log.exception("retention clean-up failed")


def _limits_of(channel: Channel | None) -> OutboundLimits:
    """The channel's platform budgets (a kind without `outbound_limits` has none)."""
    limits = getattr(channel, "outbound_limits", None)
    return limits if isinstance(limits, OutboundLimits) else NO_LIMITS


def payload_connection_id(payload: dict[str, Any]) -> str:
    value = payload.get("connectionId")
    return value if isinstance(value, str) else ""


async def _stop_quietly(channel: Channel) -> None:
    try:
        with anyio.move_on_after(10, shield=True):
            await channel.stop()
    except Exception as exc:
        log.warning("channel %s did not stop cleanly: %s", channel.channel_id, error_text(exc))
