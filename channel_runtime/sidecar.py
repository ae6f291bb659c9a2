"""Sidecar mode (SPEC 11): the plugin host's application side for a remote application.

`Sidecar` is what `ChannelRuntime` is for `serve`, without the handler: it owns the
store (in `CONNECTOR_HOME`), the connections (`ConnectionManager`, with the
application's own connection ids) and the plugin services (`RuntimeServices`, whose
`event.inbound` lands in `ingest` here), and instead of an inbox it keeps a durable
forward queue that the `Forwarder` delivers to the application's bridge. Sends come
in over HTTP (`/send`) and go to the plugin through `send`, deduped by
`connectionId + requestId` with the 60 s rules of SPEC 3.6 / 6.3.

Start order: the sidecar first (the store opens; starting plugins ask it for the
connections they resume), then the plugin host; stop in reverse.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import httpx
import msgspec

from plugin_host.clock import Clock, SystemClock
from plugin_host.errors import TIMED_OUT, RpcError
from plugin_host.lifetime import owned_task_group
from plugin_host.protocol import BridgeEvent, InboundAck, SendRequest, SendResult

from .config import ChannelConfig
from .connections import ConnectionManager
from .events import EventHub
from .forwarder import Forwarder
from .plugin_services import RuntimeServices
from .runtime import IngestError, IngestResult, ingest_connection
from .store import Store, open_application_store
from .store.base import RETRY_AFTER_SECONDS, error_text

if TYPE_CHECKING:
    from plugin_host.host import PluginHost

    from .channels import Channel
    from .leases import LeaseKeeper

log = logging.getLogger(__name__)
# the plugin may still be sending it (it did not answer in time): SPEC 11's in-progress rules apply;
# a plugin that died mid-call answers the retry itself from its own SPEC 3.6 records
_OUTCOME_UNKNOWN = frozenset({TIMED_OUT})

# delivered events are kept this long, so that a plugin's repeat of one is still known (the
# application's own bridge dedupe covers the rest); far shorter than the dedupe's 7 days
FORWARDED_RETENTION = 24 * 3600.0


class SendInProgress(Exception):
    """The same `connectionId + requestId` is being sent (updated under 60 s ago): retry after a while."""

    def __init__(self, retry_after_seconds: int = RETRY_AFTER_SECONDS) -> None:
        super().__init__(f"this request is being sent; retry after {retry_after_seconds} s")
        self.retry_after_seconds = retry_after_seconds


class Sidecar(anyio.AsyncContextManagerMixin):
    def __init__(
        self,
        *,
        plugin_host: PluginHost,
        store: str | Store = "memory://",
        bridge_base_url: str | None = None,
        bridge_token: str | None = None,
        clock: Clock | None = None,
        home: Path | str | None = None,
        secret_key: str | None = None,
        command_timeout: float | None = None,
        forward_concurrency: int = 32,
        forward_retry_base: float = 0.5,
        forward_retry_cap: float = 30.0,
        forward_lease: float = 60.0,
        retention_interval: float = 3600.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.plugin_host = plugin_host
        self.clock = clock or SystemClock()
        self.home = Path(home) if home is not None else None
        self._store_spec = store
        self._store: Store | None = store if isinstance(store, Store) else None
        self._secret_key = secret_key
        # CONNECTOR_COMMAND_TIMEOUT_SECONDS: the timeout of each plugin call made for a connector-API
        # request (session.start/cancel, connection.logout, message.send); None: the manifest's
        self.command_timeout = command_timeout
        self._retention_interval = retention_interval

        def forwarder(store: Store) -> Forwarder:
            return Forwarder(
                store,
                bridge_base_url=bridge_base_url,
                bridge_token=bridge_token,
                clock=self.clock,
                concurrency=forward_concurrency,
                retry_base=forward_retry_base,
                retry_cap=forward_retry_cap,
                lease=forward_lease,
                transport=transport,
            )

        self._make_forwarder = forwarder
        self._forwarder: Forwarder | None = None
        self._started = False
        self.sends: Counter[str] = Counter()  # outcome -> count, for the metrics
        self.events = EventHub(clock=self.clock)
        self.connections = ConnectionManager(self, plugin_host, call_timeout=command_timeout)
        plugin_host.bind_services(RuntimeServices(self, self.connections))

    # ---------------------------------------------------------------- the Application face

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the sidecar is not started")
        return self._store

    @property
    def started(self) -> bool:
        return self._started

    @property
    def forwarder(self) -> Forwarder:
        if self._forwarder is None:
            raise RuntimeError("the sidecar is not started")
        return self._forwarder

    async def add_channel(self, channel_id: str, config: ChannelConfig) -> None:
        """No channels here: a connected account is served by its plugin, sends come over `/send`."""

    async def remove_channel(self, channel_id: str) -> None:
        """No channels here (see `add_channel`)."""

    def connection_lost(self, channel_id: str, reason: str) -> None:
        """No outbox here: the application's own sends find out from the plugin's answers."""

    async def connection_restored(self, channel_id: str) -> int:
        return 0  # nothing waits here for an account (see `connection_lost`)

    @property
    def channels(self) -> Mapping[str, Channel]:
        return {}

    # a sidecar is one host with its own store (SPEC 11): no leases, nothing to hand over

    @property
    def leases(self) -> LeaseKeeper | None:
        return None

    def wake(self) -> None:
        return None

    async def hand_over(self) -> None:
        return None

    async def serving_host(self, connection_id: str) -> str | None:
        return None

    # ---------------------------------------------------------------- lifetime

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[Sidecar]:
        if self._store is None:
            self._store = await self._open_store()
        try:
            # the one consumer of its queue: work claimed before a crash is handed out again at once
            await self._store.forward.release_claims()
            self._forwarder = self._make_forwarder(self._store)
            async with owned_task_group() as tg:
                self._started = True
                try:
                    await self.connections.start(tg)
                    await tg.start(self._forwarder.run)
                    tg.start_soon(self._retention_loop)
                    yield self
                finally:
                    self._started = False
                    with anyio.CancelScope(shield=True):
                        await self.connections.stop()
        finally:
            self._started = False
            if self._store is not None and not isinstance(self._store_spec, Store):
                with anyio.CancelScope(shield=True):
                    await self._store.aclose()
                self._store = None

    async def start(self) -> None:
        """`async with sidecar:` for owners that cannot nest; call `stop()` from the same task."""
        if not self._started:
            await self.__aenter__()

    async def stop(self) -> None:
        if self._started:
            await self.__aexit__(None, None, None)

    async def _open_store(self) -> Store:
        return await open_application_store(
            str(self._store_spec), clock=self.clock, home=self.home, secret_key=self._secret_key
        )

    # ---------------------------------------------------------------- inbound: queue, then forward

    async def ingest(self, event: BridgeEvent, *, plugin_id: str | None = None) -> IngestResult:
        """Commit a plugin's or a webhook's event to the forward queue; the ack means it is durable."""
        store = self.store
        connection = await ingest_connection(store, event, plugin_id)
        if not event.channel_id or not event.account_id:  # the application's ids, as it named them
            event = msgspec.structs.replace(
                event,
                channel_id=event.channel_id or connection.channel_id,
                account_id=event.account_id or connection.account_id,
            )
        if not await store.forward.enqueue(event):
            return IngestResult(200, InboundAck(accepted=True, duplicate=True, pending=False))
        self.forwarder.wake()
        return IngestResult(200, InboundAck(accepted=True, duplicate=False, pending=True))

    # ---------------------------------------------------------------- outbound: /send

    async def send(self, request: SendRequest) -> SendResult:
        """Send through the connection's plugin, once per `connectionId + requestId`.

        A completed duplicate answers its original result (`duplicate: true`) and sends
        nothing; one in progress and updated under 60 s ago raises `SendInProgress`; a
        stale or failed one is sent again. Raises IngestError (404) for an unknown or
        revoked connection and `RpcError` for the plugin's refusals.
        """
        store = self.store
        connection = await store.connections.get(request.connection_id)
        if connection is None or connection.status == "revoked":
            raise IngestError("unknown_connection", f"no connection {request.connection_id}", status=404)
        begin = await store.send_dedupe.begin(request.connection_id, request.request_id)
        if begin.outcome == "duplicate":
            self.sends["duplicate"] += 1
            original = msgspec.convert(begin.result or {}, SendResult)
            return msgspec.structs.replace(original, duplicate=True)
        if begin.outcome == "in_progress":
            self.sends["in_progress"] += 1
            raise SendInProgress()
        try:
            result = await self.plugin_host.client(connection.plugin_id).send(request, timeout=self.command_timeout)
        except RpcError as exc:
            if exc.code not in _OUTCOME_UNKNOWN:  # refused: nothing went out, the next delivery sends again
                with anyio.CancelScope(shield=True):
                    await store.send_dedupe.fail(begin.record.dedupe_key, error_text(exc))
            # else the plugin may have sent it: the record stays processing (409, sent again once stale)
            self.sends["failed"] += 1
            raise
        await store.send_dedupe.complete(begin.record.dedupe_key, msgspec.to_builtins(result))
        self.sends["sent"] += 1
        return result

    # ---------------------------------------------------------------- housekeeping

    async def _retention_loop(self) -> None:
        while True:
            await self.clock.sleep(self._retention_interval)
            try:
                await self.store.forward.prune(FORWARDED_RETENTION)
                await self.store.send_dedupe.prune()
            except Exception:
                log.exception("retention clean-up failed")
