"""The plugin author's SDK (SPEC 5.5).

```python
from plugin_host.sdk import Plugin

plugin = Plugin()

@plugin.on_connect
async def connect(ctx, info: ConnectionInfo): ...     # serve an account: start its receive loop

@plugin.method("message.send", idempotent=True)      # SPEC 3.6 dedupe, records in host-kept state
async def send(ctx, params: SendRequest) -> SendResult: ...

if __name__ == "__main__":
    plugin.run()
```
`ctx.state` / `plugin.state` is host-kept state (SPEC 3.4); `plugin.connections` the
connections this process serves. Every wire shape is a Struct of `plugin_host.protocol`
(re-exported here): a required field cannot be left out, and what the SDK sends
carries every field (SPEC 3.1).

Imports only msgspec, anyio, the standard library and the light `plugin_host`
modules. The idempotency store, the state buckets (`StateBuckets`), the child
process helper (`spawn`), the vendor command runner and the test harness load on
first use, so a plugin pays for them only if it uses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import RpcError
from ..protocol import (
    BridgeEvent,
    ConnectionInfo,
    ConnectionRef,
    ConnectorDescriptor,
    ConnectorSessionView,
    HealthResult,
    InboundAck,
    InitializeParams,
    SendRequest,
    SendResult,
    SessionInputParams,
    SessionRef,
    SessionStartParams,
    SessionUpdate,
    Target,
    WebhookParams,
    WebhookResponse,
    WebhookResult,
)
from .context import Context, HostClient
from .plugin import Plugin, configure_logging
from .state import HostState

if TYPE_CHECKING:
    from .buckets import StateBuckets
    from .idempotency import Begin, SendIdempotencyStore
    from .process import GroupProcess, LaunchPlan, spawn
    from .testing import MemoryState, PluginHarness
    from .vendor import VendorCommand, VendorCommandError, VendorResult, VendorRunner

_LAZY = {
    "Begin": "idempotency",
    "GroupProcess": "process",
    "LaunchPlan": "process",
    "StateBuckets": "buckets",
    "spawn": "process",
    "SendIdempotencyStore": "idempotency",
    "MemoryState": "testing",
    "VendorCommand": "vendor",
    "VendorCommandError": "vendor",
    "VendorResult": "vendor",
    "VendorRunner": "vendor",
    "PluginHarness": "testing",
}

__all__ = [
    "Begin",
    "BridgeEvent",
    "ConnectionInfo",
    "ConnectionRef",
    "ConnectorDescriptor",
    "ConnectorSessionView",
    "Context",
    "GroupProcess",
    "HealthResult",
    "HostClient",
    "HostState",
    "InboundAck",
    "InitializeParams",
    "LaunchPlan",
    "MemoryState",
    "Plugin",
    "PluginHarness",
    "RpcError",
    "SendIdempotencyStore",
    "SendRequest",
    "SendResult",
    "SessionInputParams",
    "SessionRef",
    "SessionStartParams",
    "SessionUpdate",
    "StateBuckets",
    "Target",
    "VendorCommand",
    "VendorCommandError",
    "VendorResult",
    "VendorRunner",
    "WebhookParams",
    "WebhookResponse",
    "WebhookResult",
    "configure_logging",
    "spawn",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
