"""Plugin → host methods (SPEC 3.4): what the host needs from the application, and the one dispatcher.

The plugin host does not know what an inbound event or a connection *means*: the
application that owns it (the channel runtime) does. `HostServices` is that
contract, one typed method per plugin → host method; `PluginHost(services=...)`
takes one implementation (`channel_runtime.plugin_services.RuntimeServices` in the
service). `dispatch_request` / `dispatch_notification` decode each message once,
to its protocol Struct, and call the matching method; the supervisor calls them
for every message its plugin sends (`log` it answers itself).

Who answers what:

| method              | answered by                                   |
|---------------------|-----------------------------------------------|
| `event.inbound`     | `HostServices.inbound`                        |
| `session.update`    | `HostServices.session_update`                 |
| `connection.status` | `HostServices.connection_status`              |
| `state.get`         | `HostServices.state_get`                      |
| `state.put`         | `HostServices.state_put`                      |
| `log`               | `PluginSupervisor` (the plugin's own logger)  |
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from .errors import INVALID_PARAMS, METHOD_NOT_FOUND, RpcError
from .protocol import (
    BridgeEvent,
    ConnectionInfo,
    ConnectionStatusParams,
    InboundAck,
    SessionUpdate,
    StateGetParams,
    StateGetResult,
    StatePutParams,
    StatePutResult,
)

log = logging.getLogger(__name__)


class HostServices:
    """The application side of the plugin host. The defaults serve a host with no application:
    requests are refused (-32601), notifications ignored, nothing to resume."""

    async def inbound(self, plugin_id: str, event: BridgeEvent) -> InboundAck:
        raise RpcError(METHOD_NOT_FOUND, "this host takes no inbound events (no channel runtime)")

    async def session_update(self, plugin_id: str, update: SessionUpdate) -> None:
        log.debug("plugin %s: session.update ignored (no channel runtime)", plugin_id)

    async def connection_status(self, plugin_id: str, params: ConnectionStatusParams) -> None:
        log.debug("plugin %s: connection.status ignored (no channel runtime)", plugin_id)

    async def state_get(self, plugin_id: str, params: StateGetParams) -> StateGetResult:
        raise RpcError(METHOD_NOT_FOUND, "this host keeps no plugin state (no store)")

    async def state_put(self, plugin_id: str, params: StatePutParams) -> StatePutResult:
        raise RpcError(METHOD_NOT_FOUND, "this host keeps no plugin state (no store)")

    async def resumable_connections(self, plugin_id: str) -> list[ConnectionInfo]:
        """The connections a (re)starting plugin resumes through `initialize`, credentials included."""
        return []

    async def connections_in_use(self, plugin_id: str) -> int:
        """How many live connections use the plugin (uninstall is refused while any do)."""
        return 0

    async def before_stop(self) -> None:
        """The host is about to stop its plugins: hand what they serve to other hosts first (SPEC 10)."""
        return None


def _decode(raw: msgspec.Raw | None, type_: type[Any]) -> Any:
    return msgspec.json.decode(raw or b"{}", type=type_)  # a ValidationError answers -32602


async def dispatch_request(services: HostServices, plugin_id: str, method: str, raw: msgspec.Raw | None) -> Any:
    """Answer one plugin → host request; raises `RpcError` (a `msgspec.ValidationError` means -32602)."""
    if method == "event.inbound":
        from .wire_schemas import decode_bridge_event  # jsonschema words the refusals: host side only

        event, problems = decode_bridge_event(bytes(raw or b"{}"))
        if event is None:
            raise RpcError(INVALID_PARAMS, "event.inbound params are not a valid BridgeEvent", {"errors": problems})
        return await services.inbound(plugin_id, event)
    if method == "state.get":
        return await services.state_get(plugin_id, _decode(raw, StateGetParams))
    if method == "state.put":
        return await services.state_put(plugin_id, _decode(raw, StatePutParams))
    raise RpcError(METHOD_NOT_FOUND, f"the host does not serve {method}")


async def dispatch_notification(services: HostServices, plugin_id: str, method: str, raw: msgspec.Raw | None) -> None:
    """Act on one plugin → host notification; a malformed one is logged and dropped (it has no answer)."""
    try:
        if method == "session.update":
            await services.session_update(plugin_id, _decode(raw, SessionUpdate))
        elif method == "connection.status":
            await services.connection_status(plugin_id, _decode(raw, ConnectionStatusParams))
        else:
            log.debug("plugin %s sent an unknown notification %s", plugin_id, method)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("plugin %s sent an invalid %s notification: %s", plugin_id, method, exc)
