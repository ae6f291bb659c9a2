"""Connections and connector sessions (SPEC 6.5): onboarding through a plugin, without restarts.

start_session → connection `pairing` → plugin `session.start` → `session.update`
notifications → on `connected`: credentials stored encrypted, connection
`connected`, `add_channel` (the channel runs at once). Logout → plugin
`connection.logout` → `remove_channel` → `revoked`.

The owner is an `Application`: the channel runtime (`serve`) or a sidecar (SPEC 11,
which passes the application's own connection and channel ids). A kind no local
plugin provides is onboarded through a remote sidecar when one is configured
(`remote.SidecarClient`); such connections carry `plugin_id = REMOTE_PROVIDER`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import segno
from anyio.streams.memory import MemoryObjectSendStream

from plugin_host.errors import METHOD_NOT_FOUND, UNAVAILABLE, Refusal, RpcError
from plugin_host.locks import KeyedLock
from plugin_host.protocol import (
    TERMINAL_SESSION_STATUSES,
    ConnectionInfo,
    ConnectionStatusParams,
    SessionStartParams,
    SessionUpdate,
)
from plugin_host.redact import is_secret_name, redact

from .config import ChannelConfig
from .remote import REMOTE_PROVIDER, SidecarClient, SidecarError
from .store.base import ConnectionRecord, ConnectorSessionRecord, Lease

if TYPE_CHECKING:
    from plugin_host.host import PluginHost

    from .application import Application

log = logging.getLogger(__name__)

_FAILED_STATUSES = frozenset({"expired", "error", "cancelled"})
# credentials a plugin hands over (session.update): encrypted and handed back on every resume
MAX_CREDENTIALS_BYTES = 64 * 1024
_LIVE_CONNECTION_STATUSES = ("pending", "pairing", "connected", "disconnected", "error")
_SUBSCRIBER_BUFFER = 64
REMOTE_SESSION_POLL_SECONDS = 1.5  # how often the progress of a remote sidecar's session is read


class OnboardingError(Refusal):
    """A refused onboarding or connection operation."""


def public_options(options: dict[str, Any]) -> dict[str, Any]:
    """Options as stored and shown: secret-looking values never leave the plugin call."""
    return {k: v for k, v in options.items() if not is_secret_name(k)}


def connection_view(record: ConnectionRecord) -> dict[str, Any]:
    view = msgspec.to_builtins(record)
    view["options"] = public_options(view.get("options") or {})
    return view


def with_qr_image(view: dict[str, Any]) -> dict[str, Any]:
    """SPEC 6.5: a `qrCode` without `qrImage` gets an SVG data URI rendered by the host.

    A code no QR symbol can hold turns the view into an error: the session ends clearly
    instead of waiting for a scan that cannot happen.
    """
    code = view.get("qrCode")
    if code and not view.get("qrImage"):
        view = dict(view)
        try:
            view["qrImage"] = segno.make(str(code), error="m").svg_data_uri(scale=4, border=2)
        except ValueError:  # segno.DataOverflowError: too long for any QR version
            view.update(
                status="error",
                qrCode=None,
                error=f"the plugin's qrCode is too long to render as a QR code ({len(str(code))} characters)",
            )
    return view


class ConnectionManager:
    def __init__(
        self,
        runtime: Application,
        host: PluginHost,
        *,
        remote: SidecarClient | None = None,
        call_timeout: float | None = None,
    ) -> None:
        self.runtime = runtime
        self.host = host
        self.remote = remote
        # the timeout of each onboarding call to a plugin (None: the manifest's per-method timeouts)
        self.call_timeout = call_timeout
        self._subscribers: dict[str, set[MemoryObjectSendStream[dict[str, Any]]]] = {}
        self._session_locks = KeyedLock()
        self._connection_locks = KeyedLock()  # connect, revoke and status changes of one connection in turn
        # per session: how many plugin updates were applied; a call's answer older than one is not applied
        self._update_seq: dict[str, int] = {}
        self._tg: anyio.abc.TaskGroup | None = None  # the owner's: hand-overs and remote session polls
        # several hosts (SPEC 10): what each plugin process was handed and still has to let go
        self._handed: dict[str, set[str]] = {}
        self._unreleased: dict[str, set[str]] = {}

    # ---------------------------------------------------------------- lifecycle

    async def start(self, task_group: anyio.abc.TaskGroup | None = None) -> None:
        """Materialise every connected connection as a running channel.

        `task_group` (the owner's) runs the manager's background work: handing
        connections over to their plugins, following sessions of a remote sidecar.
        """
        self._tg = task_group
        for record in await self.runtime.store.connections.list(status="connected"):
            try:
                await self.runtime.add_channel(record.channel_id, self._channel_config(record))
            except Exception as exc:
                log.warning("connection %s: channel did not start: %s", record.connection_id, redact(str(exc)))
        if self.remote is not None:
            for session in await self.runtime.store.sessions.list():
                if session.plugin_id == REMOTE_PROVIDER and session.status not in TERMINAL_SESSION_STATUSES:
                    self._follow_remote(session.session_id)

    async def stop(self) -> None:
        self._tg = None
        for streams in self._subscribers.values():
            for stream in streams:
                stream.close()
        self._subscribers.clear()

    # ---------------------------------------------------------------- what the plugin host asks

    async def connection_info(self, record: ConnectionRecord) -> ConnectionInfo:
        """What a plugin is handed to serve a connection (`initialize`, `connection.resume`), credentials included."""
        return ConnectionInfo(
            connection_id=record.connection_id,
            channel_id=record.channel_id,
            kind=record.kind,
            account_id=record.account_id,
            display_name=record.display_name,
            options=dict(record.options),
            credentials=await self.runtime.store.connections.get_credentials(record.connection_id),
        )

    async def connection_infos(self, plugin_id: str) -> list[ConnectionInfo]:
        """Connections a (re)starting plugin resumes through `initialize`, with their credentials.

        Several hosts: only those this host holds the lease of (SPEC 10).
        """
        if not self.runtime.started:
            return []
        records = await self.runtime.store.connections.list(plugin_id=plugin_id, status="connected")
        leases = self.runtime.leases
        if leases is not None:
            records = [r for r in records if leases.owns(r.connection_id)]
            # a (re)started process serves exactly these, and has nothing to let go
            self._handed[plugin_id] = {r.connection_id for r in records}
            self._unreleased.pop(plugin_id, None)
        return [await self.connection_info(record) for record in records]

    async def usage(self, plugin_id: str) -> int:
        if not self.runtime.started:
            return 0
        records = await self.runtime.store.connections.list(plugin_id=plugin_id)
        return sum(1 for r in records if r.status in _LIVE_CONNECTION_STATUSES)

    # ---------------------------------------------------------------- sessions

    async def start_session(
        self,
        kind: str,
        display_name: str = "",
        options: dict[str, Any] | None = None,
        *,
        connection_id: str | None = None,
        channel_id: str | None = None,
    ) -> dict[str, Any]:
        """A new onboarding session; `connection_id` (a sidecar's application chooses it) reuses or creates
        that connection, and `channel_id` names its channel (default: the connection id)."""
        options = options or {}
        plugin_id = self.host.plugin_for_kind(kind)
        if plugin_id is None and self.remote is not None:
            return await self._start_remote_session(kind, display_name, options, connection_id, channel_id)
        if plugin_id is None:
            raise OnboardingError("unknown_kind", f"no enabled plugin provides connector kind {kind!r}", status=404)
        if self.host.supervisor(plugin_id) is None:
            raise OnboardingError("plugin_unavailable", f"plugin {plugin_id} is not running", status=503)
        store = self.runtime.store
        connection = await self._pairing_connection(kind, plugin_id, display_name, options, connection_id, channel_id)
        session = await store.sessions.create(connection_id=connection.connection_id, kind=kind, plugin_id=plugin_id)
        hidden = [v for k, v in options.items() if is_secret_name(k) and isinstance(v, str)]
        self.host.redactor(plugin_id).add(*hidden)  # an app secret the admin typed never shows in its logs
        params = SessionStartParams(
            session_id=session.session_id,
            kind=kind,
            connection_id=connection.connection_id,
            channel_id=connection.channel_id,
            display_name=display_name,
            options=options,
        )
        seq = self._update_seq.get(session.session_id, 0)
        try:
            view = await self.host.client(plugin_id).session_start(params, timeout=self.call_timeout)
        except RpcError as exc:
            message = redact(self.host.redactor(plugin_id)(exc.message), hidden)
            await store.sessions.update(
                session.session_id,
                status="error",
                view={"sessionId": session.session_id, "kind": kind, "status": "error", "error": message},
            )
            await store.connections.update_status(connection.connection_id, "error", message)
            await self._publish(session.session_id)
            raise OnboardingError(
                "session_start_failed",
                f"plugin {plugin_id} could not start the session: {message}",
                status=503 if exc.code == UNAVAILABLE else 502,
            ) from None
        await self._apply_view(session.session_id, msgspec.to_builtins(view), from_call=True, call_seq=seq)
        return await self._current_view(session.session_id)

    async def _pairing_connection(
        self,
        kind: str,
        plugin_id: str,
        display_name: str,
        options: dict[str, Any],
        connection_id: str | None,
        channel_id: str | None,
    ) -> ConnectionRecord:
        """The connection a new session pairs: a new one, or the named one again (a new login for it)."""
        store = self.runtime.store
        existing = await store.connections.get(connection_id) if connection_id else None
        if existing is None:
            return await store.connections.create(
                kind=kind,
                plugin_id=plugin_id,
                channel_id=channel_id or None,
                display_name=display_name,
                options=public_options(options),
                status="pairing",
                connection_id=connection_id,
            )
        if (existing.kind, existing.plugin_id) != (kind, plugin_id):
            raise OnboardingError(
                "connection_conflict",
                f"connection {existing.connection_id} is a {existing.kind} connection of {existing.plugin_id}",
                {"connectionId": existing.connection_id, "kind": existing.kind},
                status=409,
            )
        await store.connections.update(
            existing.connection_id,
            channel_id=channel_id or None,
            display_name=display_name or None,
            options=public_options(options),
        )
        return await store.connections.update_status(existing.connection_id, "pairing")

    async def _start_remote_session(
        self,
        kind: str,
        display_name: str,
        options: dict[str, Any],
        connection_id: str | None,
        channel_id: str | None,
    ) -> dict[str, Any]:
        """Onboard through the remote sidecar: its session id becomes this session's id."""
        assert self.remote is not None
        store = self.runtime.store
        connection = await self._pairing_connection(
            kind, REMOTE_PROVIDER, display_name, options, connection_id, channel_id
        )
        try:
            view = await self.remote.start_session(
                kind=kind,
                connection_id=connection.connection_id,
                channel_id=connection.channel_id,
                display_name=display_name,
                options=options,
            )
        except SidecarError as exc:
            await store.connections.update_status(connection.connection_id, "error", exc.message)
            raise
        session = await store.sessions.create(
            connection_id=connection.connection_id,
            kind=kind,
            plugin_id=REMOTE_PROVIDER,
            session_id=str(view["sessionId"]),
        )
        await self._apply_view(session.session_id, view, from_call=True)
        self._follow_remote(session.session_id)
        return await self._current_view(session.session_id)

    def _follow_remote(self, session_id: str) -> None:
        """Poll a remote sidecar's session until it ends, so its progress reaches subscribers and the store."""
        if self._tg is not None:
            self._tg.start_soon(self._poll_remote, session_id)

    async def _poll_remote(self, session_id: str) -> None:
        store = self.runtime.store
        while self.remote is not None:
            await self.runtime.clock.sleep(REMOTE_SESSION_POLL_SECONDS)
            session = await store.sessions.get(session_id)
            if session is None or session.status in TERMINAL_SESSION_STATUSES:
                return
            try:
                await self._apply_view(session_id, await self.remote.get_session(session_id), from_call=True)
            except SidecarError as exc:
                log.warning("session %s: the sidecar did not answer: %s", session_id, redact(exc.message))
            except Exception:
                log.exception("session %s: following the sidecar's session failed", session_id)

    async def session_view(self, session_id: str) -> dict[str, Any]:
        """The session and its connection; a live session of a remote sidecar is read from it first."""
        session = await self.runtime.store.sessions.get(session_id)
        if (
            session is not None
            and session.plugin_id == REMOTE_PROVIDER
            and session.status not in TERMINAL_SESSION_STATUSES
            and self.remote is not None
        ):
            try:
                await self._apply_view(session_id, await self.remote.get_session(session_id), from_call=True)
            except SidecarError as exc:
                log.warning("session %s: the sidecar did not answer: %s", session_id, exc.message)
        return await self._current_view(session_id)

    async def _current_view(self, session_id: str) -> dict[str, Any]:
        store = self.runtime.store
        session = await store.sessions.get(session_id)
        if session is None:
            raise OnboardingError("session_not_found", f"no connector session {session_id}", status=404)
        connection = await store.connections.get(session.connection_id)
        return {
            "session": _session_view(session),
            "connection": connection_view(connection) if connection else None,
        }

    async def session_input(self, session_id: str, value: Any) -> dict[str, Any]:
        session = await self._live_session(session_id)
        if session.plugin_id == REMOTE_PROVIDER:
            raise OnboardingError(
                "session_input_unsupported",
                "a sidecar's sessions take no input (SPEC 11 has no such route)",
                status=409,
            )
        seq = self._update_seq.get(session_id, 0)
        try:
            view = await self.host.client(session.plugin_id).session_input(session_id, value, timeout=self.call_timeout)
        except RpcError as exc:
            raise OnboardingError(
                "session_input_failed", self.host.redactor(session.plugin_id)(exc.message), status=502
            ) from None
        await self._apply_view(session_id, msgspec.to_builtins(view), from_call=True, call_seq=seq)
        return await self._current_view(session_id)

    async def cancel_session(self, session_id: str) -> dict[str, Any]:
        session = await self._live_session(session_id)
        try:
            if session.plugin_id == REMOTE_PROVIDER and self.remote is not None:
                await self.remote.cancel_session(session_id)
            else:
                await self.host.client(session.plugin_id).session_cancel(session_id, timeout=self.call_timeout)
        except (RpcError, SidecarError) as exc:
            log.warning("plugin %s did not cancel session %s: %s", session.plugin_id, session_id, redact(exc.message))
        view = dict(session.view) or {"sessionId": session_id, "kind": session.kind}
        view["status"] = "cancelled"
        await self._apply_view(session_id, view, from_call=False)
        return await self._current_view(session_id)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, session_id: str
    ) -> AsyncIterator[tuple[dict[str, Any], anyio.abc.ObjectReceiveStream[dict[str, Any]]]]:
        """The current view and a stream of the views that follow (closed when the manager stops).

        A subscriber that falls `_SUBSCRIBER_BUFFER` views behind is dropped: its stream ends.
        """
        current = await self._current_view(session_id)
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](_SUBSCRIBER_BUFFER)
        self._subscribers.setdefault(session_id, set()).add(send)
        try:
            yield current, receive
        finally:
            subscribers = self._subscribers.get(session_id)
            if subscribers is not None:
                subscribers.discard(send)
                if not subscribers:
                    self._subscribers.pop(session_id, None)
            send.close()
            receive.close()

    async def on_session_update(self, plugin_id: str, update: SessionUpdate) -> None:
        session = await self.runtime.store.sessions.get(update.session_id)
        if session is None or session.plugin_id != plugin_id:
            log.warning("plugin %s updated an unknown session", plugin_id)
            return
        view = msgspec.to_builtins(update)
        credentials = view.pop("credentials", None)
        view.pop("connectionId", None)
        if credentials:
            size = len(msgspec.json.encode(credentials))
            if size > MAX_CREDENTIALS_BYTES:
                log.warning(
                    "plugin %s: credentials of session %s refused (%d bytes)", plugin_id, update.session_id, size
                )
                credentials = None
                view.update(
                    status="error",
                    error=f"the plugin handed over {size} bytes of credentials; the limit is {MAX_CREDENTIALS_BYTES}",
                )
        await self._apply_view(update.session_id, view, from_call=False, credentials=credentials)

    async def _apply_view(
        self,
        session_id: str,
        view: dict[str, Any],
        *,
        from_call: bool,
        credentials: dict[str, Any] | None = None,
        call_seq: int | None = None,
    ) -> None:
        """Record a session view: from the plugin's update (`from_call=False`) or a call's answer.

        `call_seq` is the update count when the call was made: an update applied while
        the call ran is newer than its answer, which then does not overwrite it
        (unless the answer ends the session).
        """
        store = self.runtime.store
        async with self._session_locks(session_id):
            session = await store.sessions.get(session_id)
            if session is None:
                return
            if session.status in TERMINAL_SESSION_STATUSES and not (
                session.status == "connected" and view.get("status") == "connected" and not from_call
            ):
                # a late answer or update must not undo a finished session; only a connected
                # session hears "connected" again (the credentials may follow the call's answer)
                return
            if (
                call_seq is not None
                and self._update_seq.get(session_id, 0) != call_seq
                and view.get("status") not in TERMINAL_SESSION_STATUSES
            ):
                return  # the plugin already reported something newer than this answer
            if not from_call:
                self._update_seq[session_id] = self._update_seq.get(session_id, 0) + 1
            # the plugin's words, stored and shown: every secret it was handed is masked
            redactor = self.host.redactor(session.plugin_id)
            view = with_qr_image(redactor.value({**view, "sessionId": session_id, "kind": session.kind}))
            status = str(view.get("status") or session.status)
            await store.sessions.update(session_id, status=status, view=view)
            connection_id = session.connection_id
            if status == "connected":
                await self._connected(connection_id, view, credentials)
            elif status in _FAILED_STATUSES:
                reason = view.get("error") or f"session {status}"
                await store.connections.update_status(connection_id, "error", redactor(str(reason)))
            if status in TERMINAL_SESSION_STATUSES:
                self._update_seq.pop(session_id, None)
        await self._publish(session_id)

    async def _connected(self, connection_id: str, view: dict[str, Any], credentials: dict[str, Any] | None) -> None:
        async with self._connection_locks(connection_id):
            await self._connect(connection_id, view, credentials)

    async def _connect(self, connection_id: str, view: dict[str, Any], credentials: dict[str, Any] | None) -> None:
        store = self.runtime.store
        current = await store.connections.get(connection_id)
        if current is None or current.status == "revoked":
            return  # logout is final: a late update cannot bring the connection back
        first = current.status != "connected"
        leases = self.runtime.leases
        fence = None
        if leases is not None and (first or credentials):
            # the login happened here, with this host's plugin: this host serves the account now
            lease = await leases.take(connection_id)
            fence = leases.fence(connection_id, lease.epoch)
        if credentials:
            await store.connections.set_credentials(connection_id, credentials, fence=fence)
        record = await store.connections.update(
            connection_id,
            account_id=view.get("accountId") or None,
            display_name=view.get("displayName") or None,
        )
        record = await store.connections.update_status(connection_id, "connected")
        try:
            await self.runtime.add_channel(record.channel_id, self._channel_config(record))
        except Exception as exc:
            await store.connections.update_status(connection_id, "error", redact(f"channel did not start: {exc}"))
            return
        if (first or credentials) and record.plugin_id != REMOTE_PROVIDER:
            # in the background: this runs inside the plugin's own notification, which must not wait on it
            if self._tg is not None:
                self._tg.start_soon(self._hand_over, record)
            else:
                await self._hand_over(record)

    async def _hand_over(self, record: ConnectionRecord) -> None:
        """`connection.resume`: the plugin serves the connection from now on, with its stored credentials."""
        current = await self.runtime.store.connections.get(record.connection_id)
        if current is None or current.status != "connected":
            return  # revoked (or expired) meanwhile: nothing to hand over
        try:
            await self.host.client(record.plugin_id).resume(await self.connection_info(current))
            self._handed.setdefault(record.plugin_id, set()).add(record.connection_id)
        except RpcError as exc:
            if exc.code == METHOD_NOT_FOUND:  # a plugin without resume learnt it through its own session
                self._handed.setdefault(record.plugin_id, set()).add(record.connection_id)
            else:
                log.warning(
                    "plugin %s did not take over connection %s: %s; it gets it at its next start",
                    record.plugin_id,
                    record.connection_id,
                    self.host.redactor(record.plugin_id)(exc.message),
                )

    async def _publish(self, session_id: str) -> None:
        subscribers = self._subscribers.get(session_id)
        if not subscribers:
            return
        view = await self._current_view(session_id)
        for stream in list(subscribers):
            try:
                stream.send_nowait(view)
            except anyio.WouldBlock:
                stream.close()  # a subscriber that does not read is dropped, never waited for
                subscribers.discard(stream)

    async def _live_session(self, session_id: str) -> ConnectorSessionRecord:
        session = await self.runtime.store.sessions.get(session_id)
        if session is None:
            raise OnboardingError("session_not_found", f"no connector session {session_id}", status=404)
        if session.status in TERMINAL_SESSION_STATUSES:
            raise OnboardingError("session_finished", f"session {session_id} is already {session.status}", status=409)
        return session

    # ---------------------------------------------------------------- connections

    async def list_connections(self) -> list[dict[str, Any]]:
        return [connection_view(r) for r in await self.runtime.store.connections.list()]

    async def get_connection(self, connection_id: str) -> dict[str, Any]:
        record = await self.runtime.store.connections.get(connection_id)
        if record is None:
            raise OnboardingError("connection_not_found", f"no connection {connection_id}", status=404)
        return connection_view(record)

    async def logout(self, connection_id: str) -> dict[str, Any]:
        store = self.runtime.store
        record = await store.connections.get(connection_id)
        if record is None:
            raise OnboardingError("connection_not_found", f"no connection {connection_id}", status=404)
        if record.status != "revoked":
            try:
                if record.plugin_id == REMOTE_PROVIDER and self.remote is not None:
                    await self.remote.logout(connection_id)
                else:
                    await self.host.client(record.plugin_id).logout(connection_id, timeout=self.call_timeout)
            except (RpcError, SidecarError) as exc:
                # revoking locally must not depend on the plugin being up; it must at least stop serving it
                log.warning("plugin %s: logout of %s failed: %s", record.plugin_id, connection_id, redact(exc.message))
                if record.plugin_id != REMOTE_PROVIDER:
                    await self._release_quietly(record)
            async with self._connection_locks(connection_id):
                await self._revoke(record)
        return await self.get_connection(connection_id)

    async def _release_quietly(self, record: ConnectionRecord) -> None:
        try:
            await self.host.client(record.plugin_id).release(record.connection_id)
        except RpcError as exc:
            log.info("plugin %s: release of %s: %s", record.plugin_id, record.connection_id, redact(exc.message))

    async def on_connection_status(self, plugin_id: str, params: ConnectionStatusParams) -> None:
        store = self.runtime.store
        async with self._connection_locks(params.connection_id):
            record = await store.connections.get(params.connection_id)
            if record is None or record.plugin_id != plugin_id or record.status == "revoked":
                return
            redactor = self.host.redactor(plugin_id)
            if params.status == "revoked":
                await self._revoke(record, redactor(params.error) if params.error else None)
                return
            await store.connections.update_status(
                record.connection_id, params.status, redactor(params.error) if params.error else None
            )

    async def _revoke(self, record: ConnectionRecord, error: str | None = None) -> None:
        """Revoked first (a `connected` arriving meanwhile finds it final), then forgotten; hold its lock."""
        store = self.runtime.store
        await store.connections.update_status(record.connection_id, "revoked", redact(error) if error else None)
        await self.runtime.remove_channel(record.channel_id)
        await store.connections.set_credentials(record.connection_id, {})
        await store.plugin_state.drop(record.plugin_id, record.connection_id)  # a revoked account is forgotten

    # ---------------------------------------------------------------- several hosts (SPEC 10)

    def serving(self, connection_id: str) -> bool:
        """This host holds the connection's lease and its plugin process has it (sends may go out)."""
        leases = self.runtime.leases
        if leases is None:
            return True
        return leases.owns(connection_id) and any(connection_id in handed for handed in self._handed.values())

    async def sync_channels(self, records: list[ConnectionRecord]) -> None:
        """Channels follow the shared store: another host's new connection runs here too, a revoked one stops.

        Every host runs every connected connection's channel (its handler's replies
        are built anywhere); only the lease holder hands it to its plugin and sends.
        """
        running = self.runtime.channels
        for record in records:
            if record.status == "connected" and record.channel_id not in running:
                try:
                    await self.runtime.add_channel(record.channel_id, self._channel_config(record))
                except Exception as exc:
                    log.warning("connection %s: channel did not start: %s", record.connection_id, exc)
            elif record.status == "revoked" and record.channel_id in running:
                await self.runtime.remove_channel(record.channel_id)

    async def on_leases_changed(self, gained: list[Lease], lost: list[str]) -> None:
        """Hand gained connections to their plugin (`connection.resume`), take lost ones back (`.release`).

        A plugin that answers -32601 restarts with its new set. Hand-overs a plugin
        missed (it was starting) are retried at every tick until they land.
        """
        store = self.runtime.store
        leases = self.runtime.leases
        restart: set[str] = set()
        for connection_id in lost:
            for plugin_id, handed in self._handed.items():
                if connection_id in handed:
                    handed.discard(connection_id)
                    self._unreleased.setdefault(plugin_id, set()).add(connection_id)
        for plugin_id, pending in list(self._unreleased.items()):
            for connection_id in sorted(pending):
                if leases is not None and leases.owns(connection_id):
                    pending.discard(connection_id)  # ours again: nothing to let go
                    continue
                outcome = await self._call_plugin(plugin_id, "release", connection_id)
                if outcome != "retry":
                    pending.discard(connection_id)
                if outcome == "restart":
                    restart.add(plugin_id)
            if not pending:
                self._unreleased.pop(plugin_id, None)
        owned = leases.owned if leases is not None else {}
        for connection_id in sorted(owned):
            record = await store.connections.get(connection_id)
            if record is None or record.status != "connected":
                continue
            handed = self._handed.setdefault(record.plugin_id, set())
            fresh = any(lease.connection_id == connection_id for lease in gained)
            if connection_id in handed and not fresh:
                continue
            outcome = await self._call_plugin(record.plugin_id, "resume", record)
            if outcome == "done":
                handed.add(connection_id)
                self.runtime.wake()  # its deliveries may go out from here now
            elif outcome == "restart":
                restart.add(record.plugin_id)
        if leases is not None and leases.leaving:
            return  # the host stops its plugins next: no restarts
        for plugin_id in sorted(restart):
            try:
                await self.host.restart(plugin_id)  # initialize hands it exactly its connections now
            except Exception as exc:
                log.warning("plugin %s did not restart with its new connections: %s", plugin_id, exc)

    async def _call_plugin(self, plugin_id: str, action: str, target: ConnectionRecord | str) -> str:
        """`done`, `restart` (the plugin does not know the method) or `retry` (not running now)."""
        client = self.host.client(plugin_id)
        try:
            if isinstance(target, str):
                await client.release(target)
            else:
                await client.resume(await self.connection_info(target))
        except RpcError as exc:
            if exc.code == METHOD_NOT_FOUND:
                return "restart"
            if exc.code == UNAVAILABLE:
                # not running: a start hands it exactly its connections; a starting one is asked again
                return "retry" if self.host.supervisor(plugin_id) is not None else "done"
            log.warning("plugin %s: connection.%s failed: %s", plugin_id, action, redact(exc.message))
            return "retry"
        return "done"

    def _channel_config(self, record: ConnectionRecord) -> ChannelConfig:
        if record.plugin_id == REMOTE_PROVIDER:
            if self.remote is None:
                raise OnboardingError(
                    "sidecar_not_configured", f"connection {record.connection_id} needs its sidecar", status=503
                )
            return self.remote.channel_config(record)
        return ChannelConfig.for_connection(
            plugin_id=record.plugin_id,
            connection_id=record.connection_id,
            connector_kind=record.kind,
            account_id=record.account_id,
            display_name=record.display_name,
        )


def _session_view(session: ConnectorSessionRecord) -> dict[str, Any]:
    view = {"sessionId": session.session_id, "kind": session.kind, "instructions": [], "metadata": {}}
    view.update(session.view)
    view["status"] = session.status
    view["connectionId"] = session.connection_id
    return view
