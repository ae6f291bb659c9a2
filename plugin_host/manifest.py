"""The plugin manifest, `plugin.json` (SPEC 4), with every default of the spec.

`load_manifest(bytes) -> Manifest` checks it against `schemas/plugin-manifest.schema.json`
(through `plugin_host.wire_schemas`, imported lazily) and raises `ManifestError`.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .errors import Refusal
from .protocol import AuthType, ConnectorDescriptor

MANIFEST_NAME = "plugin.json"
MAX_MANIFEST_BYTES = 64 * 1024
# nesting of the whole document: far beyond any real manifest, far below Python's recursion limit
MAX_MANIFEST_DEPTH = 64


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


class OutboundLimits(_M):
    """SPEC 4 / 6.4: what the platform tolerates (enforced by the host's dispatcher); None = no limit."""

    per_peer_per_minute: int | None = None
    per_connection_per_minute: int | None = None
    min_interval_ms: int | None = None
    reply_window_seconds: int | None = None
    max_replies_per_inbound: int | None = None


class Limits(_M):
    max_concurrency: int = 16
    max_message_bytes: int = 524_288
    outbound: OutboundLimits = msgspec.field(default_factory=OutboundLimits)


class ManifestConnector(_M):
    """A connector as plugin.json declares it: `capabilities` and `optionsSchema` may be left out."""

    kind: str
    display_name: str
    auth_type: AuthType
    capabilities: list[str] = msgspec.field(default_factory=list)
    options_schema: dict[str, Any] | None = None

    def descriptor(self) -> ConnectorDescriptor:
        """The wire shape announced for it (SPEC 3.5)."""
        return ConnectorDescriptor(self.kind, self.display_name, self.auth_type, self.capabilities, self.options_schema)


class Permissions(_M):
    """What a plugin asks for beyond its sandbox (docs/SECURITY.md): shown to the admin before enabling."""

    network: bool = True  # false: the plugin runs in an empty network namespace
    read_paths: list[str] = msgspec.field(default_factory=list)  # extra absolute paths it may read

    def view(self, env: list[str]) -> dict[str, Any]:
        """As the API shows it: with the host variables (`env`) the plugin may see."""
        return {"network": self.network, "readPaths": list(self.read_paths), "env": list(env)}


class Manifest(_M):
    manifest_version: int
    id: str
    name: str
    version: str
    protocol_version: int
    runtime: Runtime
    connectors: list[ManifestConnector]
    description: str = ""
    config_schema: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})
    env: list[str] = msgspec.field(default_factory=list)
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    limits: Limits = msgspec.field(default_factory=Limits)
    health_interval_ms: int = 10000
    permissions: Permissions = msgspec.field(default_factory=Permissions)

    @property
    def permissions_view(self) -> dict[str, Any]:
        return self.permissions.view(self.env)


class ManifestError(Refusal):
    """plugin.json is refused; `code` names the rule, `details["errors"]` lists schema issues ({path, message})."""

    @property
    def errors(self) -> list[dict[str, str]]:
        return list(self.details.get("errors", []))


_BOM = b"\xef\xbb\xbf"


def load_manifest(data: bytes) -> Manifest:
    """Parse and validate plugin.json (SPEC 4): size, JSON, schema, configSchema, then decode.

    Raises ManifestError with code `manifest_too_large`, `manifest_invalid_json` or
    `manifest_schema`.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            "manifest_too_large", f"{MANIFEST_NAME} is {len(data)} bytes; the limit is {MAX_MANIFEST_BYTES}"
        )
    try:
        obj = msgspec.json.decode(data.removeprefix(_BOM))
        too_deep = _depth_over(obj, MAX_MANIFEST_DEPTH)
    except msgspec.DecodeError as exc:
        raise ManifestError("manifest_invalid_json", f"{MANIFEST_NAME} is not valid JSON: {exc}") from None
    except RecursionError:  # deeper than msgspec decodes
        too_deep = True
    if too_deep:
        raise ManifestError(
            "manifest_invalid_json", f"{MANIFEST_NAME} is nested deeper than {MAX_MANIFEST_DEPTH} levels"
        )

    # jsonschema costs tens of milliseconds to import; plugins import this module on cold start.
    from .wire_schemas import errors_of, manifest_validator

    errors = errors_of(manifest_validator(), obj)
    if not errors:
        errors = _config_schema_errors(obj.get("configSchema")) + _duplicate_kinds(obj["connectors"])
    if errors:
        first = errors[0]
        raise ManifestError(
            "manifest_schema",
            f"{MANIFEST_NAME} does not match the manifest schema: {first['path'] or '/'}: {first['message']}",
            {"errors": errors},
        )
    try:
        return msgspec.convert(obj, Manifest)
    except msgspec.ValidationError as exc:  # the schema should have caught it; keep one error shape anyway
        raise ManifestError(
            "manifest_schema", f"{MANIFEST_NAME}: {exc}", {"errors": [{"path": "", "message": str(exc)}]}
        ) from None


def _depth_over(value: Any, limit: int) -> bool:
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return False


def _config_schema_errors(config_schema: Any) -> list[dict[str, str]]:
    if config_schema is None:
        return []
    from jsonschema import Draft202012Validator

    from .config_schema import schema_problems
    from .wire_schemas import errors_of

    problems = schema_problems(config_schema)
    if problems:
        return problems

    meta = Draft202012Validator(Draft202012Validator.META_SCHEMA)
    return [
        {"path": e["path"], "message": f"configSchema is not a valid JSON Schema: {e['message']}"}
        for e in errors_of(meta, config_schema, prefix="/configSchema")
    ]


def _duplicate_kinds(connectors: list[dict[str, Any]]) -> list[dict[str, str]]:
    seen: set[str] = set()
    errors = []
    for i, connector in enumerate(connectors):
        kind = connector["kind"]
        if kind in seen:
            errors.append({"path": f"/connectors/{i}/kind", "message": f"connector kind {kind!r} is declared twice"})
        seen.add(kind)
    return errors
