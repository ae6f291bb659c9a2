"""`GET /openapi.json`: the admin API described as data (OpenAPI 3.1)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from plugin_host.wire_schemas import wire_components

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_ERRORS = {
    "401": _error("Missing or wrong admin token"),
    "404": _error("No such plugin or version"),
}
_LIFECYCLE_ERRORS = {**_ERRORS, "409": _error("Refused in the plugin's current state")}

_PLUGIN_ID = {
    "name": "plugin_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z][a-z0-9_]{1,63}$"},
}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
_FORCE = {
    "name": "force",
    "in": "query",
    "required": False,
    "description": "uninstall even while connections use the plugin",
    "schema": {"type": "string", "enum": ["true", "false"]},
}
_SESSION_ID = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
_CONNECTION_ID = {"name": "connection_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
_TAIL = {
    "name": "tail",
    "in": "query",
    "required": False,
    "description": "number of last lines (default 200, at most 1000)",
    "schema": {"type": "integer", "minimum": 0, "maximum": 1000},
}

_TIMESTAMPS = {
    "name": "timestamps",
    "in": "query",
    "required": False,
    "description": "true: each line as {seq, at, line} (arrival time, sequence number for `after`)",
    "schema": {"type": "string", "enum": ["true", "false"]},
}
_AFTER = {
    "name": "after",
    "in": "query",
    "required": False,
    "description": "only lines whose sequence number is greater (a live tail)",
    "schema": {"type": "integer", "minimum": 0},
}
_SERIES = {"type": "array", "items": {"type": "integer", "minimum": 0}}

_SCHEMAS: dict[str, Any] = {
    "LogLine": {
        "type": "object",
        "required": ["seq", "at", "line"],
        "properties": {
            "seq": {"type": "integer"},
            "at": {"type": "string", "format": "date-time"},
            "line": {"type": "string"},
        },
    },
    "Overview": {
        "type": "object",
        "required": ["start", "minutes", "channels"],
        "properties": {
            "start": {"type": "integer", "description": "epoch second the first minute begins at"},
            "minutes": {"type": "integer"},
            "channels": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["channelId", "series"],
                    "properties": {
                        "channelId": {"type": "string"},
                        "connectionId": {"type": ["string", "null"]},
                        "kind": {"type": ["string", "null"]},
                        "displayName": {"type": "string"},
                        "series": {
                            "type": "object",
                            "description": "counts per minute, oldest first: messages in, deliveries sent, deferred, dead",
                            "properties": {"in": _SERIES, "sent": _SERIES, "deferred": _SERIES, "dead": _SERIES},
                        },
                    },
                },
            },
        },
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
                    "message": {"type": "string"},
                    "details": {"type": "object"},
                },
            }
        },
    },
    "AvailableConnector": {
        "allOf": [
            _ref("Connector"),
            {
                "type": "object",
                "required": ["pluginId", "available"],
                "properties": {"pluginId": {"type": "string"}, "available": {"type": "boolean"}},
            },
        ]
    },
    "PluginVersion": {
        "type": "object",
        "required": ["version", "sha256"],
        "properties": {
            "version": {"type": "string"},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "installedAt": {"type": "number"},
            "source": {"type": "string"},
        },
    },
    "PluginState": {
        "type": "string",
        "enum": ["stopped", "starting", "running", "degraded", "backoff", "failed", "disabled"],
    },
    "Plugin": {
        "type": "object",
        "required": [
            "id",
            "name",
            "activeVersion",
            "versions",
            "enabled",
            "state",
            "health",
            "restarts",
            "lastError",
            "connectors",
        ],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "activeVersion": {"type": ["string", "null"]},
            "runningVersion": {"type": ["string", "null"]},
            "versions": {"type": "array", "items": _ref("PluginVersion")},
            "enabled": {"type": "boolean"},
            "state": _ref("PluginState"),
            "health": {"type": ["string", "object", "null"]},
            "restarts": {"type": "integer", "minimum": 0},
            "lastError": {"type": ["string", "null"]},
            "connectors": {"type": "array", "items": _ref("Connector")},
        },
    },
    "PluginDetail": {
        "allOf": [
            _ref("Plugin"),
            {
                "type": "object",
                "required": ["counters", "latencyMs", "config", "configSchema"],
                "properties": {
                    "counters": {
                        "type": "object",
                        "required": ["restarts", "crashes", "timeouts", "protocolViolations", "oversizedMessages"],
                        "additionalProperties": {"type": "integer", "minimum": 0},
                    },
                    "latencyMs": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "properties": {
                                "count": {"type": "integer"},
                                "p50": {"type": ["number", "null"]},
                                "p99": {"type": ["number", "null"]},
                            },
                        },
                    },
                    "pid": {"type": ["integer", "null"]},
                    "startedAt": {"type": ["string", "null"], "format": "date-time"},
                    "config": {"type": "object", "description": "secret values are masked"},
                    "configSchema": {"type": "object"},
                },
            },
        ]
    },
    "InstallResult": {
        "type": "object",
        "required": ["id", "version", "sha256", "created", "plugin"],
        "properties": {
            "id": {"type": "string"},
            "version": {"type": "string"},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "created": {"type": "boolean"},
            "plugin": _ref("Plugin"),
        },
    },
    "ActivateRequest": {
        "type": "object",
        "required": ["version"],
        "properties": {"version": {"type": "string", "minLength": 1}},
    },
    "PluginConfig": {"type": "object", "description": "validated against the plugin's configSchema"},
    "SessionStart": {
        "type": "object",
        "required": ["kind"],
        "properties": {
            "kind": {"type": "string", "minLength": 1},
            "displayName": {"type": "string"},
            "options": {"type": "object"},
        },
    },
    "SessionInput": {"type": "object", "required": ["input"], "properties": {"input": {}}},
    "ConnectorSession": {
        "type": "object",
        "required": ["session", "connection"],
        "properties": {"session": {"type": "object"}, "connection": {"type": ["object", "null"]}},
    },
    "Connection": {
        "type": "object",
        "required": ["connectionId", "kind", "status"],
        "properties": {
            "connectionId": {"type": "string"},
            "kind": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["pending", "pairing", "connected", "disconnected", "error", "revoked"],
            },
            "pluginId": {"type": "string"},
            "channelId": {"type": "string"},
            "accountId": {"type": "string"},
            "displayName": {"type": "string"},
            "error": {"type": ["string", "null"]},
            "hasCredentials": {"type": "boolean"},
            "webhookUrl": {"type": "string", "description": "present when CHANNEL_RUNTIME_PUBLIC_URL is set"},
        },
        "description": "never contains credentials",
    },
    "Channel": {
        "type": "object",
        "required": ["channelId", "kind", "state"],
        "properties": {
            "channelId": {"type": "string"},
            "kind": {"type": "string"},
            "mode": {"type": ["string", "null"]},
            "state": {"type": "string"},
            "lastError": {"type": ["string", "null"]},
            "startedAt": {},
        },
    },
    "Node": {
        "type": "object",
        "required": ["nodeId", "self", "live", "leases"],
        "properties": {
            "nodeId": {"type": "string"},
            "instance": {"type": ["string", "null"], "description": "the process holding the leases"},
            "self": {"type": "boolean", "description": "the host that answered"},
            "live": {"type": "boolean", "description": "its heartbeat has not run out"},
            "startedAt": {"type": ["number", "null"]},
            "heartbeatAt": {"type": ["number", "null"]},
            "expiresAt": {"type": ["number", "null"]},
            "info": {"type": "object"},
            "leases": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["connectionId", "epoch", "expiresAt"],
                    "properties": {
                        "connectionId": {"type": "string"},
                        "epoch": {"type": "integer", "minimum": 1},
                        "expiresAt": {"type": "number"},
                    },
                },
            },
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Ready": {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"type": "string", "enum": ["ready", "not_ready"]},
            "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
        },
    },
}

# Wire shapes are not written here: they are generated from the protocol Structs (plugin_host.protocol),
# the one definition that schemas/ is generated from too.
_WIRE = wire_components(_REF + "{name}")
_SCHEMAS.update(
    {"Connector": _WIRE["ConnectorDescriptor"], "BridgeEvent": _WIRE["BridgeEvent"], "InboundAck": _WIRE["InboundAck"]}
)


def _plugin_action(summary: str, op_id: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "operationId": op_id,
            "tags": ["plugins"],
            "parameters": [_PLUGIN_ID],
            "responses": {"200": _json(_ref("PluginDetail"), "The plugin after the change"), **_LIFECYCLE_ERRORS},
        }
    }


_PATHS: dict[str, Any] = {
    "/api/plugins": {
        "get": {
            "summary": "List installed plugins",
            "operationId": "listPlugins",
            "tags": ["plugins"],
            "responses": {
                "200": _json({"type": "array", "items": _ref("Plugin")}, "Installed plugins"),
                "401": _ERRORS["401"],
            },
        },
        "post": {
            "summary": "Install a plugin zip",
            "operationId": "installPlugin",
            "tags": ["plugins"],
            "requestBody": {
                "required": True,
                "description": "the plugin zip, at most 50 MiB",
                "content": {
                    "application/zip": {"schema": {"type": "string", "contentMediaType": "application/zip"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {"file": {"type": "string", "contentMediaType": "application/zip"}},
                        }
                    },
                },
            },
            "responses": {
                "201": _json(_ref("InstallResult"), "Installed a new version"),
                "200": _json(_ref("InstallResult"), "The same bytes were already installed"),
                "400": _error("The zip breaks a package rule (the code names it)"),
                "401": _ERRORS["401"],
                "409": _error("The same id and version is installed with different bytes"),
                "413": _error("The upload is larger than 50 MiB"),
                "415": _error("Neither a zip body nor multipart/form-data"),
            },
        },
    },
    "/api/plugins/{plugin_id}": {
        "get": {
            "summary": "One plugin with its counters",
            "operationId": "getPlugin",
            "tags": ["plugins"],
            "parameters": [_PLUGIN_ID],
            "responses": {"200": _json(_ref("PluginDetail"), "The plugin"), **_ERRORS},
        },
        "delete": {
            "summary": "Uninstall a plugin (every version)",
            "operationId": "uninstallPlugin",
            "tags": ["plugins"],
            "parameters": [_PLUGIN_ID, _FORCE],
            "responses": {
                "204": {"description": "Uninstalled"},
                **_LIFECYCLE_ERRORS,
                "400": _error("Bad query parameter"),
            },
        },
    },
    "/api/plugins/{plugin_id}/enable": _plugin_action("Enable and start a plugin", "enablePlugin"),
    "/api/plugins/{plugin_id}/disable": _plugin_action("Stop and disable a plugin", "disablePlugin"),
    "/api/plugins/{plugin_id}/restart": _plugin_action("Restart a plugin (closes its circuit)", "restartPlugin"),
    "/api/plugins/{plugin_id}/activate": {
        "post": {
            "summary": "Activate an installed version (hot swap)",
            "operationId": "activateVersion",
            "tags": ["plugins"],
            "parameters": [_PLUGIN_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ActivateRequest")}}},
            "responses": {
                "200": _json(_ref("PluginDetail"), "The new version runs"),
                "400": _error("The body is not JSON"),
                "413": _error("The body is larger than 1 MiB"),
                "422": _error("The body has no version"),
                **_LIFECYCLE_ERRORS,
            },
        }
    },
    "/api/plugins/{plugin_id}/versions/{version}": {
        "delete": {
            "summary": "Uninstall one version",
            "operationId": "uninstallVersion",
            "tags": ["plugins"],
            "parameters": [_PLUGIN_ID, _VERSION, _FORCE],
            "responses": {
                "200": _json(_ref("PluginDetail"), "The plugin without that version"),
                "400": _error("Bad query parameter"),
                **_LIFECYCLE_ERRORS,
            },
        }
    },
    "/api/plugins/{plugin_id}/logs": {
        "get": {
            "summary": "Last stderr lines of the plugin, redacted",
            "operationId": "pluginLogs",
            "tags": ["plugins"],
            "parameters": [_PLUGIN_ID, _TAIL, _TIMESTAMPS, _AFTER],
            "responses": {
                "200": _json(
                    {
                        "oneOf": [
                            {"type": "array", "items": {"type": "string"}},
                            {"type": "array", "items": _ref("LogLine")},
                        ]
                    },
                    "Log lines: text, or {seq, at, line} with timestamps=true",
                ),
                "400": _error("Bad tail"),
                **_ERRORS,
            },
        }
    },
    "/api/plugins/{plugin_id}/config": {
        "put": {
            "summary": "Set the plugin's admin config (restarts it)",
            "operationId": "setPluginConfig",
            "tags": ["plugins"],
            "parameters": [_PLUGIN_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("PluginConfig")}}},
            "responses": {
                "200": _json(_ref("PluginDetail"), "Config saved"),
                "400": _error("The body is not a JSON object"),
                "413": _error("The body is larger than 1 MiB"),
                "422": _error("The config does not match the configSchema (details.errors)"),
                **_ERRORS,
            },
        }
    },
    "/api/connectors": {
        "get": {
            "summary": "Connector descriptors of the enabled plugins",
            "operationId": "listConnectors",
            "tags": ["connectors"],
            "responses": {
                "200": _json({"type": "array", "items": _ref("AvailableConnector")}, "Connectors"),
                "401": _ERRORS["401"],
            },
        }
    },
    "/api/connector-sessions": {
        "post": {
            "summary": "Start connector onboarding (QR login, bot install)",
            "operationId": "startConnectorSession",
            "tags": ["connectors"],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SessionStart")}}},
            "responses": {
                "201": _json(_ref("ConnectorSession"), "Session started"),
                "400": _error("The body is not a JSON object"),
                "413": _error("The body is larger than 1 MiB"),
                "422": _error("A field is invalid"),
                **_LIFECYCLE_ERRORS,
                "503": _error("The plugin of that kind is unavailable"),
            },
        }
    },
    "/api/connector-sessions/{session_id}": {
        "get": {
            "summary": "One connector session with its connection",
            "operationId": "getConnectorSession",
            "tags": ["connectors"],
            "parameters": [_SESSION_ID],
            "responses": {"200": _json(_ref("ConnectorSession"), "The session"), **_ERRORS},
        }
    },
    "/api/connector-sessions/{session_id}/events": {
        "get": {
            "summary": "Server-Sent Events of the session's updates",
            "operationId": "connectorSessionEvents",
            "tags": ["connectors"],
            "parameters": [_SESSION_ID],
            "responses": {
                "200": {
                    "description": "An event stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                **_ERRORS,
            },
        }
    },
    "/api/connector-sessions/{session_id}/input": {
        "post": {
            "summary": "Send user input (e.g. a verification code) to the session",
            "operationId": "connectorSessionInput",
            "tags": ["connectors"],
            "parameters": [_SESSION_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SessionInput")}}},
            "responses": {
                "200": _json(_ref("ConnectorSession"), "The session after the input"),
                "400": _error("The body is not a JSON object"),
                "413": _error("The body is larger than 1 MiB"),
                "422": _error("input is missing"),
                **_LIFECYCLE_ERRORS,
                "503": _error("The plugin is unavailable"),
            },
        }
    },
    "/api/connector-sessions/{session_id}/cancel": {
        "post": {
            "summary": "Cancel the session",
            "operationId": "cancelConnectorSession",
            "tags": ["connectors"],
            "parameters": [_SESSION_ID],
            "responses": {
                "200": _json(_ref("ConnectorSession"), "Cancelled"),
                **_LIFECYCLE_ERRORS,
                "503": _error("The plugin is unavailable"),
            },
        }
    },
    "/api/connections": {
        "get": {
            "summary": "Connections (never their credentials)",
            "operationId": "listConnections",
            "tags": ["connections"],
            "responses": {
                "200": _json({"type": "array", "items": _ref("Connection")}, "Connections"),
                "401": _ERRORS["401"],
            },
        }
    },
    "/api/connections/{connection_id}": {
        "get": {
            "summary": "One connection",
            "operationId": "getConnection",
            "tags": ["connections"],
            "parameters": [_CONNECTION_ID],
            "responses": {"200": _json(_ref("Connection"), "The connection"), **_ERRORS},
        }
    },
    "/api/connections/{connection_id}/logout": {
        "post": {
            "summary": "Log out and revoke the connection",
            "operationId": "logoutConnection",
            "tags": ["connections"],
            "parameters": [_CONNECTION_ID],
            "responses": {
                "200": _json(_ref("Connection"), "Revoked"),
                **_LIFECYCLE_ERRORS,
                "503": _error("The plugin is unavailable"),
            },
        }
    },
    "/api/channels": {
        "get": {
            "summary": "Runtime channels",
            "operationId": "listChannels",
            "tags": ["channels"],
            "responses": {"200": _json({"type": "array", "items": _ref("Channel")}, "Channels"), "401": _ERRORS["401"]},
        }
    },
    "/api/nodes": {
        "get": {
            "summary": "Hosts sharing the store, with the connection leases each holds (SPEC 10)",
            "operationId": "listNodes",
            "tags": ["channels"],
            "responses": {"200": _json({"type": "array", "items": _ref("Node")}, "Nodes"), "401": _ERRORS["401"]},
        }
    },
    "/api/deliveries": {
        "get": {
            "summary": "Outbox and inbox dead letters",
            "operationId": "listDeliveries",
            "tags": ["channels"],
            "parameters": [
                {"name": "status", "in": "query", "required": False, "schema": {"type": "string", "enum": ["failed"]}}
            ],
            "responses": {
                "200": _json({"type": "array", "items": {"type": "object"}}, "Dead letters"),
                "400": _error("Unknown status"),
                "401": _ERRORS["401"],
            },
        }
    },
    "/api/channel-connector-bridge/events": {
        "post": {
            "summary": "Deliver an inbound event from an external connector sidecar",
            "operationId": "bridgeEvent",
            "tags": ["bridge"],
            "security": [{"bridgeToken": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("BridgeEvent")}}},
            "responses": {
                "200": _json(_ref("InboundAck"), "Accepted (or a completed duplicate)"),
                "409": _json(_ref("InboundAck"), "Still processing: retry after retryAfterSeconds"),
                "400": _error("The body is not JSON"),
                "401": _error("Missing or wrong bridge token, or no bridge token configured"),
                "404": _error("Unknown or revoked connection"),
                "413": _error("The body is larger than 1 MiB"),
                "422": _error("The event does not match the BridgeEvent schema"),
            },
        }
    },
    "/webhooks/{connection_id}": {
        method: {
            "summary": "Platform webhook, forwarded to the plugin's webhook.handle",
            "operationId": f"webhook{method.title()}",
            "tags": ["webhooks"],
            "security": [],
            "parameters": [_CONNECTION_ID],
            "responses": {
                "default": {"description": "The plugin's answer"},
                "404": _error("Unknown connection"),
                "413": _error("The body is larger than 1 MiB"),
                "503": _error("The plugin is unavailable"),
            },
        }
        for method in ("get", "post", "put", "patch", "delete", "options")
    },
    "/api/overview": {
        "get": {
            "summary": "Messages and delivery outcomes per minute over the last hour, per connection (this server's)",
            "operationId": "overview",
            "tags": ["channels"],
            "responses": {"200": _json(_ref("Overview"), "Per-minute counts"), "401": _ERRORS["401"]},
        }
    },
    "/": {
        "get": {
            "summary": "Redirect to the admin page",
            "operationId": "root",
            "tags": ["page"],
            "security": [],
            "responses": {"307": {"description": "To /admin"}},
        }
    },
    "/admin/static/{name}": {
        "get": {
            "summary": "The admin page's script and style",
            "operationId": "adminStatic",
            "tags": ["page"],
            "security": [],
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "admin.js or admin.css"}, "404": {"description": "No such file"}},
        }
    },
    "/healthz": {
        "get": {
            "summary": "Liveness",
            "operationId": "healthz",
            "tags": ["operations"],
            "security": [],
            "responses": {"200": _json(_ref("Health"), "Alive")},
        }
    },
    "/readyz": {
        "get": {
            "summary": "Readiness: host (and runtime) started, state store answers",
            "operationId": "readyz",
            "tags": ["operations"],
            "security": [],
            "responses": {"200": _json(_ref("Ready"), "Ready"), "503": _json(_ref("Ready"), "Not ready")},
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (admin token unless configured open)",
            "operationId": "metrics",
            "tags": ["operations"],
            "responses": {
                "200": {"description": "Prometheus text", "content": {"text/plain": {"schema": {"type": "string"}}}},
                "401": _ERRORS["401"],
            },
        }
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "channel-runtime admin API",
        "version": "1",
        "description": "Plugin lifecycle, connectors, health and metrics. Errors: "
        '{"error": {"code", "message", "details"}}.',
    },
    "servers": [{"url": "/"}],
    "security": [{"adminToken": []}],
    "paths": _PATHS,
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {
            "adminToken": {"type": "http", "scheme": "bearer"},
            "bridgeToken": {"type": "http", "scheme": "bearer", "description": "CHANNEL_RUNTIME_BRIDGE_TOKEN"},
        },
    },
}


def openapi_document(root_path: str = "") -> dict[str, Any]:
    if not root_path:
        return OPENAPI
    return {**OPENAPI, "servers": [{"url": root_path}]}


async def openapi_json(request: Request) -> Response:
    return JSONResponse(openapi_document(request.scope.get("root_path", "")))
