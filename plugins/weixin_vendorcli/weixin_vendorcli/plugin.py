"""The plugin process: SDK handlers wired to the login, receive and send logic.

- `session.start` fetches a QR code and runs a `QrLogin` in the background;
  `session.input` passes the verify code; on `confirmed` the credentials go to
  the host in `session.update`.
- The host then sends `connection.resume` (or lists the connection in
  `initialize`): `on_connect` starts that account's `Receiver`; `on_disconnect`
  and `connection.logout` stop it. Several accounts run side by side.
- `message.send` goes through the SDK's idempotency store, then `Sender`.
- Logout stops the account and tells the platform; the host drops the
  connection's state when it revokes it.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import msgspec

from plugin_host.errors import INVALID_PARAMS, UNKNOWN_CONNECTION, RpcError
from plugin_host.protocol import ConnectionRef, SessionInputParams, SessionRef, SessionStartParams
from plugin_host.sdk import (
    ConnectionInfo,
    ConnectorSessionView,
    Context,
    HealthResult,
    InitializeParams,
    Plugin,
    SendRequest,
    SendResult,
    SessionUpdate,
)

from .accounts import Account, Credentials, HostState, usable_token
from .backend import Backend, TransportError
from .config import WeixinConfig, load_config, seconds
from .ilink import IlinkHttp
from .login import QrLogin
from .outbound import Sender
from .receiver import SESSION_EXPIRED_REASON, Receiver

MAX_LOCAL_TOKENS = 10  # `local_token_list`: the vendor sends at most its ten newest tokens
FINISHED_LOGINS_KEPT = 50
_STOP_WAIT = 5.0  # how long a stop waits for the account's loop to end

log = logging.getLogger("weixin_vendorcli")
plugin = Plugin()


class Service:
    """Everything the plugin process holds, built at `initialize`."""

    def __init__(self, config: WeixinConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.sender = Sender(backend, config, plugin.clock, on_expired=self._send_expired)
        self.accounts: dict[str, Account] = {}
        self.receivers: dict[str, tuple[Receiver, anyio.CancelScope, anyio.Event]] = {}
        self.logins: dict[str, QrLogin] = {}

    # ---------------------------------------------------------------- accounts

    async def connect(self, info: ConnectionInfo) -> None:
        await self.disconnect(info.connection_id)
        try:
            credentials = msgspec.convert(info.credentials, Credentials)
        except msgspec.ValidationError:
            log.warning("connection %s has no usable Weixin credentials", info.connection_id)
            await plugin.host.connection_status(info.connection_id, "error", "no usable credentials: log in again")
            return
        if not usable_token(credentials.bot_token):
            log.warning("connection %s: its bot token cannot be sent in an HTTP header", info.connection_id)
            await plugin.host.connection_status(
                info.connection_id, "error", "the stored bot token is not usable (not visible ASCII): log in again"
            )
            return
        account = Account(info.connection_id, info.channel_id, credentials, _state(), plugin.clock)
        self.accounts[info.connection_id] = account
        receiver = Receiver(account, self.backend, self.config, plugin.clock, plugin.host)
        done = anyio.Event()
        scope = plugin.start_background(self._receive, receiver, done, name=f"receive-{info.connection_id}")
        self.receivers[info.connection_id] = (receiver, scope, done)
        log.info("account %s: receiving (connection %s)", credentials.ilink_bot_id, info.connection_id)

    async def disconnect(self, connection_id: str) -> Account | None:
        """Stop the account's loop and wait (briefly) until it has stopped writing state."""
        account = self.accounts.pop(connection_id, None)
        running = self.receivers.pop(connection_id, None)
        if running is not None:
            _, scope, done = running
            scope.cancel()
            with anyio.move_on_after(_STOP_WAIT):
                await done.wait()
        return account

    async def logout(self, connection_id: str) -> None:
        """Stop the account and tell the platform; the host drops the connection's state as it revokes it."""
        account = await self.disconnect(connection_id)
        if account is None:  # not served here (never resumed, or expired before a restart)
            return
        with anyio.move_on_after(seconds(self.config.api_timeout_ms)):
            try:
                await self.backend.notify(account.credentials, "notifystop")
            except TransportError as exc:
                log.info("account %s: notifystop failed (%s); logged out anyway", account.account_id, exc.message)

    async def _receive(self, receiver: Receiver, done: anyio.Event) -> None:
        try:
            with anyio.move_on_after(seconds(self.config.api_timeout_ms)):
                try:
                    await self.backend.notify(receiver.account.credentials, "notifystart")
                except Exception as exc:  # a courtesy call: whatever went wrong, receiving starts anyway
                    message = exc.message if isinstance(exc, TransportError) else type(exc).__name__
                    log.info("account %s: notifystart failed (%s)", receiver.account.account_id, message)
            await receiver.run()
        finally:
            done.set()

    async def _send_expired(self, account: Account) -> None:
        running = self.receivers.get(account.connection_id)
        if running is not None:
            await running[0].expired()
        else:
            account.status = "expired"
            await plugin.host.connection_status(account.connection_id, "error", SESSION_EXPIRED_REASON)

    def account(self, connection_id: str) -> Account:
        account = self.accounts.get(connection_id)
        if account is None:
            raise RpcError(UNKNOWN_CONNECTION, f"connection {connection_id} is not served by this plugin")
        return account

    # ---------------------------------------------------------------- logins

    async def start_login(self, params: SessionStartParams) -> ConnectorSessionView:
        current = self.accounts.get(params.connection_id)
        if current is not None:  # a re-login: only this account's token may come back as `binded_redirect`
            tokens = [current.credentials.bot_token]
        else:
            tokens = [a.credentials.bot_token for a in self.accounts.values()][-MAX_LOCAL_TOKENS:]

        async def publish(view: ConnectorSessionView, credentials: Credentials | None) -> None:
            update = SessionUpdate(
                **msgspec.structs.asdict(view),
                connection_id=params.connection_id,
                credentials=msgspec.to_builtins(credentials) if credentials is not None else None,
            )
            await plugin.host.session_update(update)

        login = QrLogin(
            session_id=params.session_id,
            connection_id=params.connection_id,
            display_name=params.display_name,
            backend=self.backend,
            config=self.config,
            clock=plugin.clock,
            publish=publish,
            local_tokens=tokens,
            relogin=current is not None,
        )
        try:
            view = await login.start()
        except TransportError as exc:
            raise RpcError(exc.code, f"Weixin gave no QR code: {exc.message}", exc.data) from None
        self._prune_logins()
        self.logins[params.session_id] = login
        plugin.start_background(login.run, name=f"login-{params.session_id}")
        return view

    def login(self, session_id: str) -> QrLogin:
        login = self.logins.get(session_id)
        if login is None:
            raise RpcError(INVALID_PARAMS, f"unknown session {session_id}")
        return login

    def _prune_logins(self) -> None:
        finished = [sid for sid, login in self.logins.items() if login.finished]
        for sid in finished[: max(0, len(finished) - FINISHED_LOGINS_KEPT)]:
            del self.logins[sid]

    def health(self) -> HealthResult:
        statuses = {cid: ("error" if a.status == "expired" else "connected") for cid, a in self.accounts.items()}
        return HealthResult("ok", connections=statuses)


_service: Service | None = None


def service() -> Service:
    if _service is None:
        raise RpcError(INVALID_PARAMS, "the plugin is not initialized")
    return _service


def _state() -> HostState:
    return plugin.state


def make_backend(config: WeixinConfig, state_dir: str) -> Backend:
    if config.mode == "vendor_cli":
        from plugin_host.sdk import VendorRunner

        from .vendor_cli import VendorCli

        return VendorCli(config, VendorRunner(state_dir))
    return IlinkHttp(config)


# ---------------------------------------------------------------- handlers


@plugin.on_initialize
async def initialize(ctx: Context, params: InitializeParams) -> None:
    global _service
    # httpx logs every request URL at INFO, and a QR status URL holds the polling handle
    for name in ("httpx", "httpcore", "plugin_host.sdk.vendor"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        config = load_config(params.config)
    except msgspec.ValidationError as exc:
        raise RpcError(INVALID_PARAMS, f"invalid Weixin config: {exc}") from None
    if _service is not None:
        await _service.backend.aclose()
    _service = Service(config, make_backend(config, params.state_dir))


@plugin.on_connect
async def on_connect(ctx: Context, info: ConnectionInfo) -> None:
    await service().connect(info)


@plugin.on_disconnect
async def on_disconnect(ctx: Context, connection_id: str) -> None:
    await service().disconnect(connection_id)


@plugin.on_shutdown
async def shutdown(ctx: Context) -> None:
    if _service is not None:
        await _service.backend.aclose()


@plugin.method("session.start")
async def start_session(ctx: Context, params: SessionStartParams) -> ConnectorSessionView:
    return await service().start_login(params)


@plugin.method("session.get")
async def get_session(ctx: Context, params: SessionRef) -> ConnectorSessionView:
    return service().login(params.session_id).view


@plugin.method("session.input")
async def session_input(ctx: Context, params: SessionInputParams) -> ConnectorSessionView:
    return service().login(params.session_id).input(params.input)


@plugin.method("session.cancel")
async def cancel_session(ctx: Context, params: SessionRef) -> dict[str, Any]:
    service().login(params.session_id).cancel()
    return {}


@plugin.method("connection.logout")
async def logout(ctx: Context, params: ConnectionRef) -> dict[str, Any]:
    await service().logout(params.connection_id)
    return {}


@plugin.method("message.send", idempotent=True)
async def send(ctx: Context, params: SendRequest) -> SendResult:
    svc = service()
    return await svc.sender.send(svc.account(params.connection_id), params)


@plugin.method("health")
async def health(ctx: Context, params: object) -> HealthResult:
    return service().health() if _service is not None else HealthResult("ok")
