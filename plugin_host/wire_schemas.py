"""The JSON Schemas in `schemas/`: generated from `plugin_host.protocol`, and their validators.

Layout of `schemas/` (JSON Schema 2020-12, at the repo root; a wheel ships it as
`plugin_host/schemas`):

- `plugin-manifest.schema.json`        plugin.json (SPEC 4)                      hand-written
- `jsonrpc-message.schema.json`        the JSON-RPC 2.0 envelope (SPEC 3.1)      hand-written
- `bridge-event.schema.json`           BridgeEvent (SPEC 6.3), body of the bridge endpoint
- `inbound-ack.schema.json`            answer of the bridge endpoint / `event.inbound`
- `rpc/defs.schema.json`               `$defs`: one per protocol Struct
- `rpc/<method>.params.schema.json`    and `rpc/<method>.result.schema.json` for every
  method of `protocol.HOST_TO_PLUGIN` / `PLUGIN_TO_HOST` (notifications: params only);
  `$/cancelRequest` is stored as `_cancelRequest`.

Every file but the two hand-written ones is generated from the Structs
(`msgspec.json.schema_components`): `python -m plugin_host.wire_schemas --write`
(`scripts/gen-schemas`) rewrites them, `--check` fails when one drifted.

The schemas describe the complete form that senders emit (SPEC 3.1): every
field is required; an optional field is nullable and carries `"default": null`,
the value a lenient receiver reads when it is missing. `complete=False` checks
what a receiver accepts (optional fields may be missing); `missing_fields` names
every field a message leaves out.

`$id`s are identifiers, never fetched: every schema is loaded from disk into one
`referencing.Registry`, and `$ref`s resolve inside it.

Use:
    validator_for("message.send", "params").iter_errors(obj)
    validate("health", "result", obj)                    # raises WireSchemaError
    message_errors("plugin_to_host", line_bytes)         # a whole JSON-RPC message
    message_errors("plugin_to_host", response, method="initialize")  # a response: name its request
    missing_fields("plugin_to_host", message, method="health")       # ["/result/detail", ...]
    decode_bridge_event(body_bytes)                       # (BridgeEvent | None, issues)

This module imports jsonschema at import time; the SDK must not import it.
"""

from __future__ import annotations

import ast
import functools
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import msgspec
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from .protocol import HOST_TO_PLUGIN, PLUGIN_TO_HOST, BridgeEvent, InboundAck, is_rfc3339

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
DIALECT = "https://json-schema.org/draft/2020-12/schema"
HAND_WRITTEN = frozenset({"plugin-manifest.schema.json", "jsonrpc-message.schema.json"})

Part = Literal["params", "result"]
Direction = Literal["host_to_plugin", "plugin_to_host"]
SchemaIssue = dict[str, str]  # {"path": JSON pointer into the instance, "message": ...}

FORMAT_CHECKER = FormatChecker(formats=())


@FORMAT_CHECKER.checks("date-time")
def _is_date_time(value: object) -> bool:
    # Own check: jsonschema's needs the optional rfc3339-validator package.
    return not isinstance(value, str) or is_rfc3339(value)


class WireSchemaError(ValueError):
    """An instance does not match its schema; `errors` lists every issue."""

    def __init__(self, what: str, errors: list[SchemaIssue]) -> None:
        first = errors[0] if errors else {"path": "", "message": "invalid"}
        super().__init__(f"{what}: {first['path'] or '/'}: {first['message']}")
        self.errors = errors


# ---------------------------------------------------------------- generating


def _wire_types() -> list[type]:
    """Every Struct on the wire, in a stable order."""
    types: list[type] = []
    for table in (HOST_TO_PLUGIN, PLUGIN_TO_HOST):
        for pair in table.values():
            types.extend(t for t in pair if t is not None and t not in types)
    return types


def _complete(node: Any) -> Any:
    """The complete form (SPEC 3.1): every property required; descriptions out of nullable unions."""
    if isinstance(node, list):
        return [_complete(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _complete(v) for k, v in node.items()}
    properties = node.get("properties")
    if node.get("type") == "object" and isinstance(properties, dict):
        node["required"] = list(properties)
        for prop in properties.values():
            branches = prop.get("anyOf")
            if isinstance(branches, list) and len(branches) == 2 and {"type": "null"} in branches:
                other = next(b for b in branches if b != {"type": "null"})
                if "description" in other:
                    prop["description"] = other.pop("description")
    return node


def wire_components(ref_template: str = "#/$defs/{name}") -> dict[str, dict[str, Any]]:
    """One JSON Schema per protocol Struct, in the complete form, by Struct name.

    `ref_template` places the components: `#/$defs/{name}` for `rpc/defs.schema.json`,
    `#/components/schemas/{name}` for an OpenAPI document.
    """
    _, components = msgspec.json.schema_components(_wire_types(), ref_template=ref_template)
    return {name: _complete(schema) for name, schema in sorted(components.items())}


def schema_file(method: str, part: Part) -> str:
    """Path, relative to `schemas/`, of one method's params or result schema."""
    return f"rpc/{method.replace('$/', '_')}.{part}.schema.json"


def _file(rel: str, title: str, **body: Any) -> dict[str, Any]:
    return {"$schema": DIALECT, "$id": BASE_URI + rel, "title": title, **body}


def generated_schemas() -> dict[str, dict[str, Any]]:
    """Every generated file of `schemas/`, by path relative to it."""
    files = {
        "rpc/defs.schema.json": _file(
            "rpc/defs.schema.json",
            "Shapes of plugin protocol v1",
            description=(
                "Generated from plugin_host/protocol.py (python -m plugin_host.wire_schemas --write); do not edit."
                " SPEC 3.3-3.6, 6.3, 10; camelCase exactly as on the wire. This is the complete form senders emit:"
                " every field is present, optional ones as null. Receivers ignore unknown fields and read a missing"
                ' optional field (one with "default": null) as null.'
            ),
            **{"$defs": wire_components()},
        ),
        "bridge-event.schema.json": _file(
            "bridge-event.schema.json",
            "BridgeEvent",
            description="SPEC 6.3: body of POST /api/channel-connector-bridge/events and params of event.inbound.",
            **{"$ref": "rpc/defs.schema.json#/$defs/BridgeEvent"},
        ),
        "inbound-ack.schema.json": _file(
            "inbound-ack.schema.json",
            "InboundAck",
            description="SPEC 6.3/7.1: answer of the bridge endpoint (200, 409) and result of event.inbound.",
            **{"$ref": f"rpc/defs.schema.json#/$defs/{InboundAck.__name__}"},
        ),
    }
    for table in (HOST_TO_PLUGIN, PLUGIN_TO_HOST):
        for method, (params, result) in table.items():
            for part, struct in (("params", params), ("result", result)):
                if struct is not None:
                    rel = schema_file(method, part)  # type: ignore[arg-type]
                    files[rel] = _file(
                        rel, f"{method} {part}", **{"$ref": f"defs.schema.json#/$defs/{struct.__name__}"}
                    )
    return dict(sorted(files.items()))


def render(schema: dict[str, Any]) -> str:
    """The exact text of a schema file (stable, so that drift shows as a diff)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def drifted(directory: Path = SCHEMAS_DIR) -> list[str]:
    """Generated files of `directory` that are missing, differ, or should not be there."""
    expected = generated_schemas()
    bad = [rel for rel, schema in expected.items() if _read(directory / rel) != render(schema)]
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*.schema.json")}
    return sorted(bad + [rel for rel in present - set(expected) - HAND_WRITTEN])


def write_schemas(directory: Path = SCHEMAS_DIR) -> list[str]:
    """Rewrite every generated file (and delete stale ones); returns what changed."""
    changed = drifted(directory)
    expected = generated_schemas()
    for rel in changed:
        path = directory / rel
        if rel in expected:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render(expected[rel]), "utf-8")
        else:
            path.unlink()
    return changed


def _read(path: Path) -> str | None:
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------- loading


def schema_path(method: str, part: Part) -> Path:
    """File holding the schema of one method's params or result."""
    return SCHEMAS_DIR / schema_file(method, part)


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
    return _validator(schema_file(method, part))


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


def _missing_name(error: ValidationError) -> str | None:
    """The property a `required` error is about (jsonschema words it "'x' is a required property")."""
    if error.validator != "required" or not error.message.endswith(" is a required property"):
        return None
    try:
        name = ast.literal_eval(error.message.removesuffix(" is a required property"))
    except (ValueError, SyntaxError):
        return None
    return name if isinstance(name, str) else None


def _is_missing_optional(error: ValidationError) -> bool:
    name = _missing_name(error)
    if name is None or not isinstance(error.schema, dict):
        return False
    prop = error.schema.get("properties", {}).get(name)
    return isinstance(prop, dict) and "default" in prop


def _counts(error: ValidationError) -> bool:
    """Whether a receiver refuses for this error: a missing optional field is forgiven."""
    if not error.context:
        return not _is_missing_optional(error)
    # an anyOf/oneOf fails only if every branch still fails once the forgiven errors are gone
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0] if sub.relative_schema_path else None, []).append(sub)
    return all(any(_counts(s) for s in subs) for subs in branches.values())


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


def errors_of(
    validator: Draft202012Validator, instance: Any, *, prefix: str = "", complete: bool = True
) -> list[SchemaIssue]:
    """Every issue of `instance`, sorted by path; [] when it is valid.

    `complete=False` judges as a receiver does: a missing optional field is no issue.
    """
    issues = [_issue(e, prefix) for e in validator.iter_errors(instance) if complete or _counts(e)]
    return sorted(issues, key=lambda i: (i["path"], i["message"]))


def missing_in(validator: Draft202012Validator, instance: Any, *, prefix: str = "") -> list[str]:
    """JSON pointers of every field the complete form has and `instance` leaves out."""
    found: set[str] = set()

    def walk(errors: Iterable[ValidationError]) -> None:
        for error in errors:
            name = _missing_name(error)
            if name is not None:
                found.add(prefix + _pointer([*error.absolute_path, name]))
            if error.context:
                walk(error.context)

    walk(validator.iter_errors(instance))
    return sorted(found)


def validate(method: str, part: Part, instance: Any) -> None:
    """Raise WireSchemaError unless `instance` is valid params/result of `method`."""
    errors = errors_of(validator_for(method, part), instance)
    if errors:
        raise WireSchemaError(f"{method} {part}", errors)


def _message_target(
    direction: Direction, message: Any, method: str | None
) -> tuple[list[SchemaIssue], Draft202012Validator | None, Any, str]:
    """Envelope issues, or the validator, instance and path prefix of a message's params/result."""
    if isinstance(message, (bytes, bytearray, memoryview, str)):
        try:
            message = msgspec.json.decode(message)
        except msgspec.DecodeError as exc:
            return [{"path": "", "message": f"not JSON: {exc}"}], None, None, ""
    envelope = errors_of(envelope_validator(), message)
    if envelope:
        return envelope, None, None, ""
    if "method" in message:
        name = message["method"]
        table = methods(direction)
        if name not in table:
            return (
                [{"path": "/method", "message": f"{name!r} is not a {direction.replace('_', ' ')} method"}],
                None,
                None,
                "",
            )
        is_notification = table[name][1] is None
        if is_notification and "id" in message:
            return [{"path": "/id", "message": f"{name!r} is a notification and must not carry an id"}], None, None, ""
        if not is_notification and "id" not in message:
            return [{"path": "", "message": f"{name!r} is a request and needs an id"}], None, None, ""
        return [], validator_for(name, "params"), message.get("params", {}), "/params"
    if "result" in message and method is not None:
        answered = methods("plugin_to_host" if direction == "host_to_plugin" else "host_to_plugin")
        if method not in answered or answered[method][1] is None:
            return (
                [{"path": "", "message": f"{method!r} is not a request answered {direction.replace('_', ' ')}"}],
                None,
                None,
                "",
            )
        return [], validator_for(method, "result"), message["result"], "/result"
    return [], None, None, ""


def message_errors(
    direction: Direction, message: Any, *, method: str | None = None, complete: bool = True
) -> list[SchemaIssue]:
    """Issues of one JSON-RPC message travelling in `direction`; [] when it is valid.

    `message` is the decoded object, or the raw line (bytes/str). Requests and
    notifications are checked against the methods sent in that direction. A
    result answers a request that travelled the other way: pass that request's
    `method` to check the result too (without it only the envelope is checked).
    Error responses are checked as envelopes. `complete=False` forgives missing
    optional fields (what a receiver accepts).
    """
    issues, validator, instance, prefix = _message_target(direction, message, method)
    if validator is None:
        return issues
    return errors_of(validator, instance, prefix=prefix, complete=complete)


def missing_fields(direction: Direction, message: Any, *, method: str | None = None) -> list[str]:
    """JSON pointers (e.g. `/result/connectors/0/capabilities`) of every field a message leaves out."""
    _, validator, instance, prefix = _message_target(direction, message, method)
    return [] if validator is None else missing_in(validator, instance, prefix=prefix)


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

_event_decoder = msgspec.json.Decoder(BridgeEvent)


def decode_bridge_event(data: bytes | Any) -> tuple[BridgeEvent | None, list[SchemaIssue]]:
    """A BridgeEvent from raw JSON bytes (or a decoded value), with exactly the schema's verdict
    as a receiver applies it (`complete=False`: a missing userId or threadId reads as null).

    The common, valid case is decided by msgspec (the Struct carries the schema's
    constraints); only input it refuses is judged by jsonschema, which also words
    the errors. msgspec is stricter on a few JSON corners (e.g. `1.0` as an
    integer): what the schema accepts there is converted leniently.
    """
    try:
        if isinstance(data, (bytes, bytearray, memoryview, str)):
            event = _event_decoder.decode(data)
        else:
            event = msgspec.convert(data, BridgeEvent)
        if is_rfc3339(event.timestamp):  # the pattern passed; the date must exist too
            return event, []
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    if isinstance(data, (bytes, bytearray, memoryview, str)):
        try:
            data = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            return None, [{"path": "", "message": f"not JSON: {exc}"}]
    issues = errors_of(bridge_event_validator(), data, complete=False)
    if issues:
        return None, issues
    return msgspec.convert(data, BridgeEvent, strict=False), []


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """`--write` regenerates schemas/ from the Structs; `--check` (the default) fails on drift."""
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--check"], ["--write"]):
        print("usage: python -m plugin_host.wire_schemas [--check | --write]", file=sys.stderr)
        return 2
    if args == ["--write"]:
        for rel in write_schemas():
            print(f"wrote schemas/{rel}")
        return 0
    stale = drifted()
    for rel in stale:
        print(f"schemas/{rel} is not what plugin_host/protocol.py generates", file=sys.stderr)
    if stale:
        print("run scripts/gen-schemas", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
