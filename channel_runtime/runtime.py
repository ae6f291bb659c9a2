"""ChannelRuntime: the embeddable core (SPEC 6).

Owns the channels, the store, the inbound pipeline (bridge dedupe → runtime
dedupe → durable inbox → handler workers) and the outbox dispatcher. Every
background loop runs in the runtime's task group; `stop()` cancels and awaits it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from plugin_host.clock import Clock, SystemClock
from plugin_host.errors import Refusal
from plugin_host.lifetime import owned_task_group
from plugin_host.protocol import BridgeEvent, InboundAck, SendRequest, SendResult, Target

from .activity import ActivityCounts
from .channels import BUILTIN_KINDS, Channel, ChannelFactory, DeliveryError
from .config import ChannelConfig
from .leases import LeaseKeeper, NodeSettings, default_node_id, describe_nodes
from .messages import InboundMessage, OutboundMessage
from .queues import QueueWorker, backoff_delay
from .store import ConnectionRecord, Lease, Store, open_application_store
from .store.base import RETRY_AFTER_SECONDS, Delivery, InboxEntry, OutboxEntry, error_text

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


class ChannelState(msgspec.Struct):
    state: str
    last_error: str | None = None
    started_at: float | None = None


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
        # several hosts (SPEC 10): on a shared store, claims and connections are leased to this node
        self._node = node
        self.node_id = node.node_id if node is not None else default_node_id()
        self.leases: LeaseKeeper | None = None
        self._inbox = QueueWorker[InboxEntry](
            "inbox", self._claim_inbox, self._handle_entry, concurrency=inbox_concurrency, idle_poll=idle_poll
        )
        self._outbox = QueueWorker[OutboxEntry](
            "outbox", self._claim_outbox, self._deliver_entry, concurrency=outbox_concurrency, idle_poll=idle_poll
        )
        self._tg: anyio.abc.TaskGroup | None = None
        self._started = False
        self.connections: ConnectionManager | None = None
        if plugin_host is not None:
            from .connections import ConnectionManager
            from .plugin_services import RuntimeServices

            self.connections = ConnectionManager(self, plugin_host)
            # the one place where the host learns who answers its plugins' requests
            plugin_host.bind_services(RuntimeServices(self, self.connections))

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
                self._states[channel_id] = ChannelState("disabled")
                return
            if current == config and (channel_id in self._channels or not self._started):
                return
            if not self._started:
                self._factory(config)  # unknown kind fails now, not at start
                self._configs[channel_id] = config
                self._states[channel_id] = ChannelState("stopped")
                return
            if channel_id in self._channels:
                await self._replace(channel_id, config)
            else:
                await self._start_new(channel_id, config, raise_errors=True)

    async def remove_channel(self, channel_id: str) -> None:
        async with self._lifecycle:
            if channel_id not in self._configs and channel_id not in self._channels:
                if self._states.get(channel_id, ChannelState("")).state == "failed":
                    self._states[channel_id] = ChannelState("removed")  # a failed add is cleared too
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
        self._states[channel_id] = ChannelState("starting")
        try:
            channel = await self._build_and_start(channel_id, config)
        except Exception as exc:
            self._states[channel_id] = ChannelState("failed", error_text(exc))
            if raise_errors:
                self._configs.pop(channel_id, None)
                raise ChannelError(f"channel {channel_id} failed to start: {error_text(exc)}") from exc
            log.warning("channel %s failed to start: %s", channel_id, error_text(exc))
            return
        self._channels[channel_id] = channel
        self._states[channel_id] = ChannelState("running", None, self.clock.time())
        self._outbox.wake()

    async def _replace(self, channel_id: str, config: ChannelConfig) -> None:
        """Start the replacement first; only when it runs, swap and stop the old one."""
        try:
            replacement = await self._build_and_start(channel_id, config)
        except Exception as exc:
            # the old channel stays registered and running; its state records the failed attempt
            self._states[channel_id].last_error = error_text(exc)
            raise ChannelError(f"replacement of channel {channel_id} failed to start: {error_text(exc)}") from exc
        old = self._channels[channel_id]
        self._channels[channel_id] = replacement
        self._configs[channel_id] = config
        self._states[channel_id] = ChannelState("running", None, self.clock.time())
        await _stop_quietly(old)

    async def _stop_channel(self, channel_id: str, final_state: str) -> None:
        channel = self._channels.pop(channel_id, None)
        if channel is not None:
            await _stop_quietly(channel)
        previous = self._states.get(channel_id)
        self._states[channel_id] = ChannelState(final_state, previous.last_error if previous else None)

    # ---------------------------------------------------------------- inbound (SPEC 6.3)

    async def ingest(self, event: BridgeEvent, *, plugin_id: str | None = None) -> IngestResult:
        """The one inbound pipeline for the bridge, `event.inbound` and webhooks."""
        store = self.store
        connection = await store.connections.get(event.connection_id)
        if (
            connection is None
            or connection.status == "revoked"
            or (plugin_id is not None and connection.plugin_id != plugin_id)
        ):
            raise IngestError("unknown_connection", "unknown or revoked connection", status=404)
        message = InboundMessage.from_bridge_event(event, channel_id=connection.channel_id)
        if not message.account_id:
            message.account_id = connection.account_id
        # bridge dedupe, runtime dedupe and inbox commit in one transaction; a failure is recorded and raised
        begin, entry = await store.pipeline.accept_event(event.connection_id, event.event_id, message)
        if begin.outcome == "in_progress":
            return IngestResult(
                409, InboundAck(accepted=False, duplicate=True, pending=True, retry_after_seconds=RETRY_AFTER_SECONDS)
            )
        if entry is None:  # a completed duplicate, or a message id this channel has seen
            return IngestResult(200, InboundAck(accepted=True, duplicate=True, pending=False))
        self.activity.count(connection.channel_id, "in")
        self._inbox.wake()
        return IngestResult(200, InboundAck(accepted=True, duplicate=False, pending=True))

    async def accept(self, message: InboundMessage) -> bool:
        """Commit a message from a local channel (runtime dedupe + inbox); False when already seen."""
        entry = await self.store.inbox.commit(message)
        if entry is not None:
            self.activity.count(message.channel_id, "in")
            self._inbox.wake()
        return entry is not None

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
                await store.inbox.dead_letter(entry.id, error_text(exc))
                return
            # the transactional outbox: the ack and the replies commit together or not at all
            enqueued = await store.pipeline.finish_inbound(entry.id, deliveries)
        except Exception as exc:
            error = error_text(exc)
            log.warning("handler failed for %s (attempt %d): %s", entry.message.message_id, entry.attempts, error)
            if entry.attempts >= self._handler_attempts:
                await store.inbox.dead_letter(entry.id, error)
            else:
                await store.inbox.retry(
                    entry.id, error, backoff_delay(entry.attempts, base=self._retry_base, cap=self._retry_cap)
                )
            return
        if enqueued is None:
            log.warning("inbox entry %d was finished elsewhere after its lease ran out; replies dropped", entry.id)
        elif any(enqueued):
            self._outbox.wake()

    # ---------------------------------------------------------------- outbound (SPEC 6.4)

    async def send(self, message: OutboundMessage) -> str:
        """Write to the durable outbox and return its stable `requestId`; delivery follows."""
        delivery = self._delivery(message)
        if await self.store.outbox.enqueue(
            delivery.channel_id, delivery.request_id, delivery.payload, conversation=delivery.conversation
        ):
            self._outbox.wake()
        return delivery.request_id

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
        return Delivery(message.channel_id, request_id, msgspec.to_builtins(request), conversation)

    async def _claim_outbox(self, limit: int) -> list[OutboxEntry]:
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

    async def _deliver_entry(self, entry: OutboxEntry) -> None:
        store = self.store
        channel = self._channels.get(entry.channel_id)
        try:
            if channel is None:
                raise DeliveryError(f"channel {entry.channel_id} is not running")
            request = msgspec.convert(entry.payload, SendRequest)
            result: SendResult = await channel.send(request)
        except Exception as exc:
            error = error_text(exc)
            retry_after = exc.retry_after if isinstance(exc, DeliveryError) else None
            if retry_after is not None:  # a plugin's or sidecar's number: bounded (inf would block forever)
                retry_after = min(max(retry_after, 0.0), self._retry_cap) if retry_after == retry_after else None
            permanent = isinstance(exc, DeliveryError) and exc.permanent
            if self.leases is not None and not self._serves(entry.channel_id):
                # the connection moved to another host meanwhile: its new owner sends it
                permanent, retry_after = False, 0.0
            if permanent or entry.attempts >= self._delivery_attempts:
                log.warning("delivery %s dead-lettered: %s", entry.request_id, error)
                await store.outbox.dead_letter(entry.id, error)
                self.activity.count(entry.channel_id, "dead")
            else:
                delay = (
                    retry_after
                    if retry_after is not None
                    else backoff_delay(entry.attempts, base=self._retry_base, cap=self._retry_cap)
                )
                await store.outbox.retry(entry.id, error, delay)
                self.activity.count(entry.channel_id, "deferred")
            return
        await store.outbox.mark_sent(entry.id, msgspec.to_builtins(result))
        self.activity.count(entry.channel_id, "sent")

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
            except Exception:
                log.exception("retention clean-up failed")


async def _stop_quietly(channel: Channel) -> None:
    try:
        with anyio.move_on_after(10, shield=True):
            await channel.stop()
    except Exception as exc:
        log.warning("channel %s did not stop cleanly: %s", channel.channel_id, error_text(exc))
