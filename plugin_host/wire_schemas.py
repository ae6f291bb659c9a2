"""Validators for the JSON Schemas in `schemas/` (the language-neutral copy of the wire shapes).

Layout of `schemas/` (JSON Schema 2020-12, one source of truth at the repo root):

- `plugin-manifest.schema.json`        plugin.json (SPEC 4)
- `jsonrpc-message.schema.json`        the JSON-RPC 2.0 envelope (SPEC 3.1)
- `bridge-event.schema.json`           BridgeEvent (SPEC 6.3), body of the bridge endpoint
- `inbound-ack.schema.json`            answer of the bridge endpoint / `event.inbound`
- `rpc/defs.schema.json`               shared `$defs` (ConnectorDescriptor, SendRequest, ...)
- `rpc/<method>.params.schema.json`    and `rpc/<method>.result.schema.json` for every
  method of `protocol.HOST_TO_PLUGIN` / `PLUGIN_TO_HOST` (notifications: params only);
  `$/cancelRequest` is stored as `_cancelRequest`.

`$id`s are identifiers, never fetched: every schema is loaded from disk into one
`referencing.Registry`, and `$ref`s resolve inside it.

Use:
    validator_for("message.send", "params").iter_errors(obj)
    validate("health", "result", obj)                    # raises WireSchemaError
    message_errors("plugin_to_host", line_bytes)         # a whole JSON-RPC message
    message_errors("plugin_to_host", response, method="initialize")  # a response: name its request
    bridge_event_validator().is_valid(body)

This module imports jsonschema at import time; the SDK must not import it.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from .protocol import HOST_TO_PLUGIN, PLUGIN_TO_HOST, BridgeEvent

# the repository's schemas/ (editable install), else the copy a wheel ships as plugin_host/schemas
SCHEMAS_DIR = next(
    (
        d
        for d in (Path(__file__).resolve().parents[1] / "schemas", Path(__file__).resolve().parent / "schemas")
        if (d / "plugin-manifest.schema.json").is_file()
    ),
    Path(__file__).resolve().parent / "schemas",
)
BASE_URI = "https://channel-runtime.local/schemas/"

Part = Literal["params", "result"]
Direction = Literal["host_to_plugin", "plugin_to_host"]
SchemaIssue = dict[str, str]  # {"path": JSON pointer into the instance, "message": ...}

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$", re.ASCII)

FORMAT_CHECKER = FormatChecker(formats=())


@FORMAT_CHECKER.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    # Own check: jsonschema's needs the optional rfc3339-validator package.
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        return False
    datetime.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    return True


class WireSchemaError(ValueError):
    """An instance does not match its schema; `errors` lists every issue."""

    def __init__(self, what: str, errors: list[SchemaIssue]) -> None:
        first = errors[0] if errors else {"path": "", "message": "invalid"}
        super().__init__(f"{what}: {first['path'] or '/'}: {first['message']}")
        self.errors = errors


# ---------------------------------------------------------------- loading


def schema_path(method: str, part: Part) -> Path:
    """File holding the schema of one method's params or result."""
    return SCHEMAS_DIR / "rpc" / f"{method.replace('$/', '_')}.{part}.schema.json"


@functools.cache
def _all_schemas() -> dict[str, dict[str, Any]]:
    """Every schema under `schemas/`, by path relative to it (e.g. `rpc/defs.schema.json`)."""
    return {
        p.relative_to(SCHEMAS_DIR).as_posix(): json.loads(p.read_text("utf-8"))
        for p in sorted(SCHEMAS_DIR.rglob("*.schema.json"))
    }


@functools.cache
def registry() -> Registry:
    """All schemas, keyed by `$id`, so that `$ref`s resolve without any network access."""
    resources: list[tuple[str, Resource[Any]]] = []
    for rel, schema in _all_schemas().items():
        uri = schema.get("$id", BASE_URI + rel)
        resources.append((uri, DRAFT202012.create_resource(schema)))
    return Registry().with_resources(resources).crawl()


def load_schema(rel: str) -> dict[str, Any]:
    """The parsed schema file `schemas/<rel>`; KeyError if there is none."""
    return _all_schemas()[rel]


@functools.cache
def _validator(rel: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(rel), registry=registry(), format_checker=FORMAT_CHECKER)


def methods(direction: Direction) -> dict[str, tuple[type, type | None]]:
    """Methods whose requests travel in `direction`, with their (params, result) Structs."""
    return HOST_TO_PLUGIN if direction == "host_to_plugin" else PLUGIN_TO_HOST


def validator_for(method: str, part: Part) -> Draft202012Validator:
    """Cached validator of one method's params or result.

    KeyError for a method not in protocol v1, or for the result of a notification.
    """
    table = HOST_TO_PLUGIN if method in HOST_TO_PLUGIN else PLUGIN_TO_HOST
    if method not in table:
        raise KeyError(f"{method!r} is not a method of protocol v1")
    if part == "result" and table[method][1] is None:
        raise KeyError(f"{method!r} is a notification: it has no result")
    return _validator(schema_path(method, part).relative_to(SCHEMAS_DIR).as_posix())


def manifest_validator() -> Draft202012Validator:
    return _validator("plugin-manifest.schema.json")


def envelope_validator() -> Draft202012Validator:
    return _validator("jsonrpc-message.schema.json")


def bridge_event_validator() -> Draft202012Validator:
    return _validator("bridge-event.schema.json")


def inbound_ack_validator() -> Draft202012Validator:
    return _validator("inbound-ack.schema.json")


# ---------------------------------------------------------------- checking


def _pointer(parts: Iterable[Any]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _issue(error: ValidationError, prefix: str) -> SchemaIssue:
    # oneOf/anyOf failures say little; the most relevant sub-error says what to fix.
    if error.context:
        error = best_match(error.context) or error
    message = error.message
    if error.validator in ("pattern", "not") and isinstance(error.schema, dict) and "description" in error.schema:
        # a regex says little to a plugin author; the rule's description says what is expected
        message = f"{error.instance!r} is not valid: {error.schema['description']}"
    path = prefix + _pointer(error.absolute_path)
    return {"path": path, "message": message}


def errors_of(validator: Draft202012Validator, instance: Any, *, prefix: str = "") -> list[SchemaIssue]:
    """Every issue of `instance`, sorted by path; [] when it is valid."""
    issues = [_issue(e, prefix) for e in validator.iter_errors(instance)]
    return sorted(issues, key=lambda i: (i["path"], i["message"]))


def validate(method: str, part: Part, instance: Any) -> None:
    """Raise WireSchemaError unless `instance` is valid params/result of `method`."""
    errors = errors_of(validator_for(method, part), instance)
    if errors:
        raise WireSchemaError(f"{method} {part}", errors)


def message_errors(direction: Direction, message: Any, *, method: str | None = None) -> list[SchemaIssue]:
    """Issues of one JSON-RPC message travelling in `direction`; [] when it is valid.

    `message` is the decoded object, or the raw line (bytes/str). Requests and
    notifications are checked against the methods sent in that direction. A
    result answers a request that travelled the other way: pass that request's
    `method` to check the result too (without it only the envelope is checked).
    Error responses are checked as envelopes.
    """
    if isinstance(message, (bytes, bytearray, memoryview, str)):
        try:
            message = msgspec.json.decode(message)
        except msgspec.DecodeError as exc:
            return [{"path": "", "message": f"not JSON: {exc}"}]
    envelope = errors_of(envelope_validator(), message)
    if envelope:
        return envelope
    if "method" in message:
        name = message["method"]
        table = methods(direction)
        if name not in table:
            return [{"path": "/method", "message": f"{name!r} is not a {direction.replace('_', ' ')} method"}]
        is_notification = table[name][1] is None
        if is_notification and "id" in message:
            return [{"path": "/id", "message": f"{name!r} is a notification and must not carry an id"}]
        if not is_notification and "id" not in message:
            return [{"path": "", "message": f"{name!r} is a request and needs an id"}]
        return errors_of(validator_for(name, "params"), message.get("params", {}), prefix="/params")
    if "result" in message and method is not None:
        answered = methods("plugin_to_host" if direction == "host_to_plugin" else "host_to_plugin")
        if method not in answered or answered[method][1] is None:
            return [{"path": "", "message": f"{method!r} is not a request answered {direction.replace('_', ' ')}"}]
        return errors_of(validator_for(method, "result"), message["result"], prefix="/result")
    return []


def validate_message(direction: Direction, message: Any, *, method: str | None = None) -> None:
    """Raise WireSchemaError unless `message` is a valid protocol v1 message (see message_errors)."""
    errors = message_errors(direction, message, method=method)
    if errors:
        raise WireSchemaError(f"{direction} message", errors)


def check_schemas() -> list[str]:
    """Paths of schema files that are not valid 2020-12 schemas (for tests and CI)."""
    bad = []
    for rel, schema in _all_schemas().items():
        try:
            Draft202012Validator.check_schema(schema)
        except Exception:
            bad.append(rel)
    return bad


# ---------------------------------------------------------------- fast BridgeEvent decoding

_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class _StrictBridgeEvent(msgspec.Struct, rename="camel"):
    """bridge-event.schema.json as a msgspec type: every required field, no defaults.

    It accepts a subset of what the schema accepts (msgspec is stricter on a few
    JSON corners, e.g. `1.0` as an integer); whatever it refuses goes to the schema.
    """

    event_id: _NonEmpty
    timestamp: Annotated[str, msgspec.Meta(pattern=_RFC3339.pattern)]
    delivery_attempt: Annotated[int, msgspec.Meta(ge=1)]
    connection_id: _NonEmpty
    channel_id: str
    kind: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    account_id: str
    peer_id: _NonEmpty
    peer_type: Literal["dm", "group", "channel", "unknown"]
    message_id: _NonEmpty
    message_type: _NonEmpty
    content: str
    metadata: dict[str, Any]
    user_id: str | None = None
    thread_id: str | None = None


_strict_event_decoder = msgspec.json.Decoder(_StrictBridgeEvent)


def decode_bridge_event(data: bytes | Any) -> tuple[BridgeEvent | None, list[SchemaIssue]]:
    """A BridgeEvent from raw JSON bytes (or a decoded value) with exactly the schema's verdict.

    The common, valid case is decided by msgspec from the bytes; only input it
    refuses is judged by jsonschema, which also words the errors.
    """
    try:
        if isinstance(data, (bytes, bytearray, memoryview, str)):
            strict = _strict_event_decoder.decode(data)
        else:
            strict = msgspec.convert(data, _StrictBridgeEvent)
        if _is_date_time(strict.timestamp):  # False or ValueError: the schema words the error
            return BridgeEvent(**msgspec.structs.asdict(strict)), []
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        pass
    if isinstance(data, (bytes, bytearray, memoryview, str)):
        try:
            data = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            return None, [{"path": "", "message": f"not JSON: {exc}"}]
    issues = errors_of(bridge_event_validator(), data)
    if issues:
        return None, issues
    return msgspec.convert(data, BridgeEvent, strict=False), []
