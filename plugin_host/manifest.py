"""The plugin manifest, `plugin.json` (SPEC 4), with every default of the spec."""
from __future__ import annotations

from typing import Any, Literal

import msgspec

from .protocol import ConnectorDescriptor

MANIFEST_NAME = "plugin.json"
MAX_MANIFEST_BYTES = 64 * 1024


class _M(msgspec.Struct, rename="camel", forbid_unknown_fields=False):
    pass


class Runtime(_M):
    type: Literal["python", "command"]
    module: str | None = None
    command: list[str] | None = None


class Timeouts(_M):
    handshake_ms: int = 5000
    health_ms: int = 2000
    call_ms: int = 10000
    methods: dict[str, int] = msgspec.field(default_factory=dict)

    def for_method(self, method: str) -> float:
        """Timeout in seconds for one call of `method`."""
        return self.methods.get(method, self.call_ms) / 1000.0


class Limits(_M):
    max_concurrency: int = 16
    max_message_bytes: int = 524_288


class Manifest(_M):
    manifest_version: int
    id: str
    name: str
    version: str
    protocol_version: int
    runtime: Runtime
    connectors: list[ConnectorDescriptor]
    description: str = ""
    config_schema: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})
    env: list[str] = msgspec.field(default_factory=list)
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    limits: Limits = msgspec.field(default_factory=Limits)
    health_interval_ms: int = 10000
