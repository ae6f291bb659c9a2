"""The channel runtime's answers to plugin → host methods (SPEC 3.4): `RuntimeServices`.

`ChannelRuntime` binds one to its plugin host when it is built (a `Sidecar` too: its
`ingest` forwards instead); see `plugin_host.services` for the table of who answers
which method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plugin_host.errors import FENCED, INVALID_PARAMS, UNKNOWN_CONNECTION, RpcError
from plugin_host.protocol import (
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
from plugin_host.services import HostServices

from .store import FencedError, StateLimitError

if TYPE_CHECKING:
    from .application import Application
    from .connections import ConnectionManager


class RuntimeServices(HostServices):
    def __init__(self, runtime: Application, connections: ConnectionManager) -> None:
        self._runtime = runtime
        self._connections = connections

    async def inbound(self, plugin_id: str, event: BridgeEvent) -> InboundAck:
        from .runtime import IngestError

        try:
            result = await self._runtime.ingest(event, plugin_id=plugin_id)
        except IngestError as exc:
            raise RpcError(UNKNOWN_CONNECTION, exc.message) from None
        return result.ack

    async def session_update(self, plugin_id: str, update: SessionUpdate) -> None:
        await self._connections.on_session_update(plugin_id, update)

    async def connection_status(self, plugin_id: str, params: ConnectionStatusParams) -> None:
        await self._connections.on_connection_status(plugin_id, params)

    async def resumable_connections(self, plugin_id: str) -> list[ConnectionInfo]:
        return await self._connections.connection_infos(plugin_id)

    async def connections_in_use(self, plugin_id: str) -> int:
        return await self._connections.usage(plugin_id)

    # ---------------------------------------------------------------- host-kept plugin state

    async def state_get(self, plugin_id: str, params: StateGetParams) -> StateGetResult:
        await self._check_scope(plugin_id, params.connection_id)
        value = await self._runtime.store.plugin_state.get(plugin_id, params.connection_id, params.key)
        return StateGetResult(value=value, epoch=await self._epoch(params.connection_id))

    async def state_put(self, plugin_id: str, params: StatePutParams) -> StatePutResult:
        await self._check_scope(plugin_id, params.connection_id)
        epoch = await self._epoch(params.connection_id)
        if params.epoch is not None and params.epoch < epoch:
            raise _fenced(params.connection_id, epoch, params.epoch)
        leases = self._runtime.leases
        # several hosts: the write lands only while this host holds the lease, checked with the write
        fence = leases.fence(params.connection_id, params.epoch) if leases and params.connection_id else None
        try:
            await self._runtime.store.plugin_state.put(
                plugin_id, params.connection_id, params.key, params.value, fence=fence
            )
        except StateLimitError as exc:
            raise RpcError(INVALID_PARAMS, str(exc), {"limit": exc.limit}) from None
        except FencedError as exc:
            raise _fenced(params.connection_id, exc.epoch, params.epoch) from None
        return StatePutResult(epoch=epoch)

    async def _check_scope(self, plugin_id: str, connection_id: str | None) -> None:
        if connection_id is None:
            return
        record = await self._runtime.store.connections.get(connection_id)
        if record is None or record.plugin_id != plugin_id or record.status == "revoked":
            raise RpcError(UNKNOWN_CONNECTION, f"plugin {plugin_id} has no connection {connection_id}")

    async def _epoch(self, connection_id: str | None) -> int:
        """The connection's lease epoch (SPEC 10); 0 for plugin-wide values and on a single host."""
        leases = self._runtime.leases
        if connection_id is None or leases is None:
            return 0
        held = leases.epoch(connection_id)
        if held is not None:
            return held
        lease = await self._runtime.store.leases.get(connection_id)
        return lease.epoch if lease is not None else 0

    async def before_stop(self) -> None:
        """The plugin host stops next: other hosts take this host's connections over now (SPEC 10)."""
        await self._runtime.hand_over()


def _fenced(connection_id: str | None, epoch: int, carried: int | None) -> RpcError:
    return RpcError(
        FENCED,
        f"this host no longer serves connection {connection_id} (epoch {epoch}, this write carries {carried})",
        {"epoch": epoch},
    )
