"""The plugin author's SDK (SPEC 5.5).

```python
from plugin_host.sdk import Plugin

plugin = Plugin()

@plugin.method("message.send", idempotent=True)
async def send(ctx, params): ...

if __name__ == "__main__":
    plugin.run()
```
Imports only msgspec, anyio, the standard library and the light `plugin_host`
modules. The idempotency store, the vendor command runner and the test harness
load on first use, so a plugin pays for them (sqlite3 included) only if it uses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import RpcError
from ..protocol import (
    BridgeEvent,
    ConnectionInfo,
    ConnectorDescriptor,
    ConnectorSessionView,
    HealthResult,
    InboundAck,
    InitializeParams,
    SendRequest,
    SendResult,
    SessionUpdate,
    WebhookParams,
    WebhookResponse,
    WebhookResult,
)
from .context import Context, HostClient
from .plugin import Plugin, configure_logging

if TYPE_CHECKING:
    from .idempotency import Begin, SendIdempotencyStore
    from .testing import PluginHarness
    from .vendor import VendorCommand, VendorCommandError, VendorResult, VendorRunner

_LAZY = {
    "Begin": "idempotency",
    "SendIdempotencyStore": "idempotency",
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
    "ConnectorDescriptor",
    "ConnectorSessionView",
    "Context",
    "HealthResult",
    "HostClient",
    "InboundAck",
    "InitializeParams",
    "Plugin",
    "PluginHarness",
    "RpcError",
    "SendIdempotencyStore",
    "SendRequest",
    "SendResult",
    "SessionUpdate",
    "VendorCommand",
    "VendorCommandError",
    "VendorResult",
    "VendorRunner",
    "WebhookParams",
    "WebhookResponse",
    "WebhookResult",
    "configure_logging",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
