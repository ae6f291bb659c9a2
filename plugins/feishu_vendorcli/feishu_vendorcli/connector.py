"""What the plugin process keeps: the linked apps it serves, their clients, and the redactor."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import anyio
import httpx
import msgspec

from plugin_host.clock import Clock
from plugin_host.errors import UNKNOWN_CONNECTION, RpcError
from plugin_host.redact import Redactor, redact
from plugin_host.sdk import BridgeEvent, ConnectionInfo, HostState, Plugin, StateBuckets

from .config import Account, FeishuConfig
from .events import Mapped, Notice, Route, UnknownSchema, envelope, map_event
from .longconn import LongConnection
from .openapi import OpenApi
from .webhook import WebhookVerifier

log = logging.getLogger("feishu_vendorcli")

THREAD_ROOTS_KEPT = 10_000  # in memory, per connection
THREAD_PREFIX = "thread:"
THREAD_BUCKETS = 32  # host-state keys per connection, whatever the number of threads (~500 roots each)
THREAD_RETENTION = 30 * 86_400.0  # a thread quiet for a month: a send into it without a reply target goes to the chat
_THREAD_REFRESH = 86_400.0  # an active thread's root is written again once a day, so it does not expire


class LinkedApp:
    """One connection this process serves: its app, where its events go, how they are checked."""

    def __init__(
        self, info: ConnectionInfo, account: Account, config: FeishuConfig, state: HostState, clock: Clock
    ) -> None:
        self.info = info
        self.account = account
        self.base_url = config.open_base_url(account.domain)
        self.route = Route(
            connection_id=info.connection_id,
            channel_id=info.channel_id,
            kind=info.kind,
            account_id=info.account_id or account.app_id,
            bot_open_id=account.bot_open_id,
        )
        self.verifier = WebhookVerifier(account, window_seconds=config.timestamp_window_seconds)
        self.status = "connected" if account.connection == "webhook" else "disconnected"
        self.receiver: anyio.CancelScope | None = None
        self.long_connection: LongConnection | None = None
        self.clock = clock
        # thread id -> its root message, so a send into a thread without a reply target still lands
        # there: in memory (with when it was written), and in host state so that it survives a restart
        self._thread_roots: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._threads = StateBuckets(
            state, info.connection_id, THREAD_PREFIX, buckets=THREAD_BUCKETS, retention=THREAD_RETENTION, clock=clock
        )

    @property
    def connection_id(self) -> str:
        return self.info.connection_id

    async def remember_threads(self, events: list[BridgeEvent]) -> None:
        """Keep each thread's root; a root the host cannot keep now is logged and kept in memory."""
        for event in events:
            root = event.metadata.get("rootId") or event.message_id
            if not event.thread_id or not isinstance(root, str):
                continue
            known = self._thread_roots.get(event.thread_id)
            now = self.clock.time()
            self._thread_roots[event.thread_id] = (root, now if known is None or known[0] != root else known[1])
            self._thread_roots.move_to_end(event.thread_id)
            while len(self._thread_roots) > THREAD_ROOTS_KEPT:
                self._thread_roots.popitem(last=False)
            if known is not None and known[0] == root and now - known[1] < _THREAD_REFRESH:
                continue
            try:
                await self._threads.put(event.thread_id, root)
                self._thread_roots[event.thread_id] = (root, now)
            except Exception as exc:  # in memory it serves this process; the host's copy comes with the next event
                log.warning("%s: thread root not kept by the host: %s", self.connection_id, type(exc).__name__)

    async def thread_root(self, thread_id: str | None) -> str | None:
        if not thread_id:
            return None
        known = self._thread_roots.get(thread_id)
        if known is not None:
            return known[0]
        try:
            root = await self._threads.get(thread_id, type=str)
        except Exception as exc:  # the host cannot answer now: the send goes to the chat itself
            log.warning("%s: thread root unavailable: %s", self.connection_id, type(exc).__name__)
            return None
        return root if isinstance(root, str) and root else None


def account_of(info: ConnectionInfo) -> Account:
    """The app of a connection: its credentials (written by this plugin), options as a fallback."""
    merged: dict[str, Any] = {**(info.options or {}), **(info.credentials or {})}
    try:
        return msgspec.convert(merged, Account)
    except msgspec.ValidationError as exc:
        raise RpcError(
            UNKNOWN_CONNECTION, f"connection {info.connection_id} has no usable app credentials: {exc}"
        ) from None


class Feishu:
    """The plugin's state: config, one HTTP client, the Open Platform calls, the linked apps."""

    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin
        self.config = FeishuConfig()
        self.redactor = Redactor()
        self.apps: dict[str, LinkedApp] = {}
        self._http: httpx.AsyncClient | None = None
        self._api: OpenApi | None = None

    @property
    def clock(self) -> Clock:
        return self.plugin.clock

    def configure(self, config: dict[str, Any]) -> None:
        self.config = FeishuConfig.load(config)

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.config.http_timeout_seconds, follow_redirects=False)
        return self._http

    @property
    def api(self) -> OpenApi:
        if self._api is None:
            self._api = OpenApi(
                self.http,
                self.clock,
                refresh_margin=self.config.token_refresh_margin_seconds,
                timeout=self.config.http_timeout_seconds,
            )
        return self._api

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def redact(self, text: str) -> str:
        """Known app secrets, the tokens in use, and anything token-shaped (older tokens) masked."""
        return redact(self.redactor(text), self.api.current_tokens() if self._api is not None else ())

    # ---------------------------------------------------------------- linked apps

    def app(self, connection_id: str) -> LinkedApp:
        app = self.apps.get(connection_id)
        if app is None:
            raise RpcError(UNKNOWN_CONNECTION, f"unknown connection {connection_id}")
        return app

    async def serve(self, info: ConnectionInfo) -> LinkedApp:
        """Start serving a connection (idempotent: a second resume replaces the first)."""
        account = account_of(info)
        self.redactor.add(*account.secrets())
        await self.stop_serving(info.connection_id)
        app = LinkedApp(info, account, self.config, self.plugin.state, self.clock)
        self.apps[info.connection_id] = app
        if account.connection == "websocket":
            app.long_connection = LongConnection(
                app_id=account.app_id,
                app_secret=account.app_secret,
                base_url=app.base_url,
                clock=self.clock,
                on_event=lambda payload: self.on_stream_event(app, payload),
                on_status=lambda status, error: self.on_stream_status(app, status, error),
                redact=self.redact,
                initial_backoff=self.config.reconnect_initial_seconds,
                max_backoff=self.config.reconnect_max_seconds,
                ack_timeout=self.config.event_ack_timeout_seconds,
                name=info.connection_id,
            )
            app.receiver = self.plugin.start_background(app.long_connection.run, name=f"longconn {info.connection_id}")
        log.info("serving %s (app %s, %s)", info.connection_id, account.app_id, account.connection)
        return app

    async def stop_serving(self, connection_id: str) -> LinkedApp | None:
        app = self.apps.pop(connection_id, None)
        if app is not None and app.receiver is not None:
            app.receiver.cancel()
        return app

    async def forget(self, connection_id: str) -> bool:
        """Logout: stop receiving and drop the app's credentials and token from memory."""
        app = await self.stop_serving(connection_id)
        self.api.forget(connection_id)
        return app is not None

    # ---------------------------------------------------------------- inbound

    def note(self, app: LinkedApp, mapped: Mapped | None = None, notice: Notice | None = None) -> None:
        notice = notice or (mapped.notice if mapped else None)
        if notice is not None:
            log.info(
                "%s: %s chat %s %s",
                app.connection_id,
                notice.what,
                notice.chat_id,
                self.redact(msgspec.json.encode(notice.detail).decode()),
            )

    async def on_stream_event(self, app: LinkedApp, payload: bytes) -> bool:
        """One event from the long connection; True when the host has it (so the platform may forget it)."""
        try:
            mapped = map_event(envelope(msgspec.json.decode(payload)), app.route)
        except (ValueError, RecursionError) as exc:  # not JSON, too deep, or an unknown schema
            reason = str(exc) if isinstance(exc, UnknownSchema) else type(exc).__name__
            log.warning("%s: long-connection event dropped: %s", app.connection_id, reason)
            return True  # acknowledged: a redelivery would be just as unreadable
        self.note(app, mapped)
        await app.remember_threads(mapped.events)
        for event in mapped.events:
            ack = await self.plugin.host.inbound(event)
            if not (ack.accepted or ack.duplicate or ack.pending):
                log.warning("%s: the host did not accept event %s", app.connection_id, event.event_id)
                return False
        return True

    async def on_stream_status(self, app: LinkedApp, status: str, error: str | None) -> None:
        if self.apps.get(app.connection_id) is not app:
            return  # stopped meanwhile
        if status == app.status and error is None:
            return
        app.status = status
        if error:
            log.warning("%s: %s", app.connection_id, self.redact(error))
        await self.plugin.host.connection_status(app.connection_id, status, self.redact(error) if error else None)  # type: ignore[arg-type]
