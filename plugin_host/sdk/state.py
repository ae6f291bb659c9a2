"""Host-kept plugin state (SPEC 3.4): `ctx.state` / `plugin.state`.

```python
cursor = await ctx.state.get("cursor", connection_id=cid, type=str)   # None when unset
await ctx.state.put("cursor", "abc", connection_id=cid)               # None deletes
await ctx.state.delete("cursor", connection_id=cid)
await plugin.state.put("settings", {"x": 1})                          # plugin-wide
```
Values live in the host's store (they follow a connection to a new plugin
version and, in SPEC 10, to another host): any JSON of at most 64 KiB, at most
10,000 keys per connection.

Fencing: for a connection, the SDK pins the lease `epoch` the host reports
when the connection is handed over (or at its first use) and sends it with
every put. A -32018 answer means this host lost the connection: the SDK stops
serving it (the on_disconnect hooks run) and raises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import FENCED, RpcError
from ..protocol import STATE_VALUE_MAX_BYTES, StateGetParams, StatePutParams, StatePutResult

if TYPE_CHECKING:
    from .plugin import Plugin

EPOCH_KEY = "sdk:epoch"  # never written: reading it only learns the connection's epoch
_NULL = b"null"


class _GetResult(msgspec.Struct):
    """`protocol.StateGetResult` with the value left raw, so it is decoded once, into the caller's type."""

    value: msgspec.Raw
    epoch: int


class HostState:
    """The plugin's host-kept state; one per plugin, usable from handlers and background tasks."""

    def __init__(self, plugin: Plugin) -> None:
        self._plugin = plugin
        self._epochs: dict[str, int] = {}

    async def get(self, key: str, *, connection_id: str | None = None, type: Any = Any) -> Any:
        """The value of `key` decoded as `type` (msgspec rules), or None when unset."""
        result: _GetResult = await self._plugin.host.call(
            "state.get", StateGetParams(key, connection_id), result_type=_GetResult
        )
        if connection_id is not None:
            self._epochs.setdefault(connection_id, result.epoch)
        raw = bytes(result.value)
        if raw == _NULL:
            return None
        return msgspec.json.decode(raw) if type is Any else msgspec.json.decode(raw, type=type)

    async def put(self, key: str, value: Any, *, connection_id: str | None = None) -> None:
        """Store `value` (any JSON-encodable value, at most 64 KiB encoded); None deletes the key."""
        encoded = msgspec.json.encode(value)
        if len(encoded) > STATE_VALUE_MAX_BYTES:
            raise ValueError(f"state value of {key!r} is {len(encoded)} bytes; the limit is {STATE_VALUE_MAX_BYTES}")
        epoch = None
        if connection_id is not None:
            epoch = self._epochs.get(connection_id)
            if epoch is None:
                epoch = await self.pin(connection_id)
        params = StatePutParams(key, msgspec.Raw(encoded), connection_id, epoch)
        try:
            await self._plugin.host.call("state.put", params, result_type=StatePutResult)
        except RpcError as exc:
            if exc.code == FENCED and connection_id is not None and self._epochs.get(connection_id) == epoch:
                await self._plugin._fenced(connection_id)
            raise

    async def delete(self, key: str, *, connection_id: str | None = None) -> None:
        await self.put(key, None, connection_id=connection_id)

    # ---------------------------------------------------------------- epochs

    def epoch(self, connection_id: str) -> int | None:
        """The epoch pinned for a connection, if any."""
        return self._epochs.get(connection_id)

    async def pin(self, connection_id: str) -> int:
        """Ask the host for the connection's current epoch and send it with every later put."""
        result: _GetResult = await self._plugin.host.call(
            "state.get", StateGetParams(EPOCH_KEY, connection_id), result_type=_GetResult
        )
        self._epochs[connection_id] = result.epoch
        return result.epoch

    def unpin(self, connection_id: str) -> None:
        self._epochs.pop(connection_id, None)
