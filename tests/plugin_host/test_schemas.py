from __future__ import annotations

import datetime
import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from plugin_host import protocol as p
from plugin_host import wire_schemas as ws

ALL_METHODS = {**p.HOST_TO_PLUGIN, **p.PLUGIN_TO_HOST}


def wire(struct: msgspec.Struct) -> Any:
    """What the peer receives: encoded by msgspec, parsed as plain JSON."""
    return json.loads(msgspec.json.encode(struct))


def issues(method: str, part: str, struct_or_obj: Any) -> list[dict[str, str]]:
    obj = wire(struct_or_obj) if isinstance(struct_or_obj, msgspec.Struct) else struct_or_obj
    return ws.errors_of(ws.validator_for(method, part), obj)


# ---------------------------------------------------------------- the schema files


def test_committed_schemas_are_what_the_structs_generate():
    """The golden test: `scripts/gen-schemas` after any change to plugin_host/protocol.py."""
    assert ws.drifted() == [], "schemas/ drifted from plugin_host/protocol.py: run scripts/gen-schemas"


def test_drift_is_detected_and_rewritten(tmp_path):
    for rel in ws.HAND_WRITTEN:
        (tmp_path / rel).write_text((ws.SCHEMAS_DIR / rel).read_text())
    assert set(ws.drifted(tmp_path)) == set(ws.generated_schemas())  # nothing generated yet
    ws.write_schemas(tmp_path)
    assert ws.drifted(tmp_path) == []
    defs = tmp_path / "rpc" / "defs.schema.json"
    defs.write_text(defs.read_text().replace('"minLength": 1', '"minLength": 2', 1))
    (tmp_path / "rpc" / "stale.params.schema.json").write_text("{}")
    assert ws.drifted(tmp_path) == ["rpc/defs.schema.json", "rpc/stale.params.schema.json"]
    assert ws.write_schemas(tmp_path) == ["rpc/defs.schema.json", "rpc/stale.params.schema.json"]
    assert ws.drifted(tmp_path) == [] and not (tmp_path / "rpc" / "stale.params.schema.json").exists()


def test_the_check_command_fails_on_drift(capsys):
    assert ws.main(["--check"]) == 0
    assert ws.main(["--bogus"]) == 2


def test_every_schema_is_a_valid_2020_12_schema():
    assert ws.check_schemas() == []
    for rel, schema in ws._all_schemas().items():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", rel
        assert schema["$id"] == ws.BASE_URI + rel, rel


def test_every_method_has_its_schema_files_and_nothing_else():
    expected = set(ws.HAND_WRITTEN) | {"bridge-event.schema.json", "inbound-ack.schema.json", "rpc/defs.schema.json"}
    for method, (_, result) in ALL_METHODS.items():
        expected.add(ws.schema_path(method, "params").relative_to(ws.SCHEMAS_DIR).as_posix())
        if result is not None:
            expected.add(ws.schema_path(method, "result").relative_to(ws.SCHEMAS_DIR).as_posix())
    assert set(ws._all_schemas()) == expected
    assert ws.schema_path("$/cancelRequest", "params").name == "_cancelRequest.params.schema.json"


def test_spec_methods_are_in_the_tables():
    assert {"connection.resume", "connection.release"} <= set(p.HOST_TO_PLUGIN)
    assert {"state.get", "state.put"} <= set(p.PLUGIN_TO_HOST)
    assert p.HOST_TO_PLUGIN["connection.resume"] == (p.ConnectionInfo, p.Empty)
    assert p.HOST_TO_PLUGIN["connection.release"] == (p.ConnectionRef, p.Empty)


def test_every_ref_resolves():
    registry = ws.registry()
    for _rel, schema in ws._all_schemas().items():
        resolver = registry.resolver(base_uri=schema["$id"])
        for ref in _refs(schema):
            resolver.lookup(ref)  # raises if unresolvable


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _structs() -> list[type]:
    seen: list[type] = []
    for pair in ALL_METHODS.values():
        seen.extend(t for t in pair if t is not None and t not in seen)
    return seen


@pytest.mark.parametrize("struct", _structs(), ids=lambda t: t.__name__)
def test_the_complete_form_requires_every_field_and_marks_the_optional_ones(struct):
    """SPEC 3.1: every field on the wire; optional (defaulted) fields nullable with default null."""
    schema = ws.load_schema("rpc/defs.schema.json")["$defs"][struct.__name__]
    fields = msgspec.inspect.type_info(struct).fields
    assert list(schema["properties"]) == [f.encode_name for f in fields]
    assert schema["required"] == [f.encode_name for f in fields]
    for f in fields:
        prop = schema["properties"][f.encode_name]
        if f.required:
            assert "default" not in prop, f.name
        else:
            assert f.default is None and prop["default"] is None, f.name  # optional: a receiver reads null
            assert {"type": "null"} in prop.get("anyOf", []) or prop == {"default": None} | prop, f.name


def test_unknown_method_and_notification_result():
    with pytest.raises(KeyError):
        ws.validator_for("nope", "params")
    with pytest.raises(KeyError):
        ws.validator_for("initialized", "result")


def test_validators_are_cached():
    assert ws.validator_for("health", "result") is ws.validator_for("health", "result")
    assert ws.bridge_event_validator() is ws.bridge_event_validator()


# ---------------------------------------------------------------- representative instances

TS = "2026-06-02T09:30:00Z"
CONN = p.ConnectionInfo(
    connection_id="conn_1",
    channel_id="ch_1",
    kind="weixin",
    account_id="wx_1",
    display_name="Me",
    options={"a": 1},
    credentials={"token": "t"},
)
CONN_MIN = p.ConnectionInfo("c", "ch", "weixin", "", "", {}, {})
VIEW_FULL = p.ConnectorSessionView(
    session_id="cs_1",
    kind="feishu",
    status="qr_ready",
    qr_code="https://x/qr",
    qr_image="data:image/svg+xml;base64,AA==",
    instructions=["Scan"],
    account_id="acc",
    display_name="Bot",
    error=None,
    metadata={"k": "v"},
)
VIEW_MIN = p.ConnectorSessionView("cs_1", "feishu", "pending", [], {})
EVENT_FULL = p.BridgeEvent(
    event_id="ev_1",
    connection_id="conn_1",
    kind="feishu",
    peer_id="oc_1",
    message_id="m_1",
    timestamp=TS,
    delivery_attempt=2,
    channel_id="ch_1",
    account_id="acc",
    peer_type="group",
    user_id="u_1",
    thread_id="t_1",
    message_type="text",
    content="hi",
    metadata={"raw": {"x": [1, None]}},
)
EVENT_MIN = p.BridgeEvent(
    event_id="ev_1",
    connection_id="conn_1",
    kind="weixin",
    peer_id="wx_a",
    message_id="m_1",
    timestamp="2026-06-02T09:30:00.123+08:00",
    delivery_attempt=1,
    channel_id="",
    account_id="",
    peer_type="unknown",
    message_type="text",
    content="",
    metadata={},
)
SEND_FULL = p.SendRequest(
    request_id="out_ch:weixin:dm:wx_a:m1",
    connection_id="conn_1",
    channel_id="ch_1",
    kind="weixin",
    target=p.Target(peer_id="wx_a", peer_type="dm", thread_id="t", reply_to_message_id="m0"),
    content="hello",
    content_type="text",
    metadata={"finishReason": "stop"},
)
SEND_MIN = p.SendRequest("r", "c", "ch", "weixin", p.Target("wx_a", "dm"), "", "text", {})
NO_CAPABILITIES = {"webhook": False, "sessions": False}

POSITIVE: dict[tuple[str, str], list[msgspec.Struct]] = {
    ("initialize", "params"): [
        p.InitializeParams(
            protocol_version=1,
            host=p.NameVersion("channel-runtime", "0.1.0"),
            plugin=p.PluginRef("weixin_vendorcli", "1.0.0"),
            state_dir="/tmp/s",
            config={"baseUrl": "http://x"},
            connections=[CONN],
        ),
        p.InitializeParams(1, p.NameVersion("h", "1"), p.PluginRef("ab", "1.0.0"), {}, "/s", [CONN_MIN]),
    ],
    ("initialize", "result"): [
        p.InitializeResult(
            protocol_version=1,
            plugin=p.NameVersion("Weixin", "1.0.0"),
            connectors=[
                p.ConnectorDescriptor("weixin", "Weixin", "qr", ["send_text"]),
                p.ConnectorDescriptor(
                    "feishu",
                    "Feishu",
                    "credentials",
                    [],
                    {"type": "object", "properties": {"appSecret": {"type": "string", "writeOnly": True}}},
                ),
            ],
            capabilities={"webhook": False, "sessions": True, "extra": [1]},
        ),
        p.InitializeResult(1, p.NameVersion("W", "1"), [], NO_CAPABILITIES),
    ],
    ("initialized", "params"): [p.Empty()],
    ("health", "params"): [p.Empty()],
    ("health", "result"): [
        p.HealthResult(status="ok"),
        p.HealthResult(status="degraded", detail="slow", connections={"conn_1": "connected"}),
    ],
    ("session.start", "params"): [
        p.SessionStartParams("cs_1", "feishu", "conn_1", "ch_1", "Bot", {"mode": "link", "appId": "cli_x"}),
        p.SessionStartParams("cs_1", "weixin", "conn_1", "ch_1", "", {}),
    ],
    ("session.start", "result"): [VIEW_FULL, VIEW_MIN],
    ("session.get", "params"): [p.SessionRef("cs_1")],
    ("session.get", "result"): [VIEW_FULL, VIEW_MIN],
    ("session.input", "params"): [
        p.SessionInputParams("cs_1", "123456"),
        p.SessionInputParams("cs_1", None),
        p.SessionInputParams("cs_1", {"code": 1}),
    ],
    ("session.input", "result"): [VIEW_FULL],
    ("session.cancel", "params"): [p.SessionRef("cs_1")],
    ("session.cancel", "result"): [p.Empty()],
    ("connection.logout", "params"): [p.ConnectionRef("conn_1")],
    ("connection.logout", "result"): [p.Empty()],
    ("connection.resume", "params"): [CONN, CONN_MIN],
    ("connection.resume", "result"): [p.Empty()],
    ("connection.release", "params"): [p.ConnectionRef("conn_1")],
    ("connection.release", "result"): [p.Empty()],
    ("message.send", "params"): [SEND_FULL, SEND_MIN],
    ("message.send", "result"): [p.SendResult(False), p.SendResult(duplicate=True, provider_message_id="om_1")],
    ("webhook.handle", "params"): [
        p.WebhookParams(
            "conn_1", "POST", "/webhooks/conn_1", "a=1", {"content-type": "application/json"}, "eyJhIjoxfQ=="
        ),
        p.WebhookParams("conn_1", "GET", "/", "", {}, ""),
    ],
    ("webhook.handle", "result"): [
        p.WebhookResult(p.WebhookResponse(200, {}, ""), []),
        p.WebhookResult(
            p.WebhookResponse(200, {"Content-Type": "text/plain"}, "AAEC", "base64"), [EVENT_FULL, EVENT_MIN]
        ),
    ],
    ("shutdown", "params"): [p.Empty()],
    ("shutdown", "result"): [p.Empty()],
    ("$/cancelRequest", "params"): [p.CancelParams(7), p.CancelParams("req-7")],
    ("event.inbound", "params"): [EVENT_FULL, EVENT_MIN],
    ("event.inbound", "result"): [
        p.InboundAck(accepted=True, duplicate=False, pending=True),
        p.InboundAck(accepted=False, duplicate=False, pending=True, retry_after_seconds=5),
    ],
    ("session.update", "params"): [
        p.SessionUpdate(
            session_id="cs_1",
            kind="weixin",
            status="connected",
            instructions=[],
            metadata={},
            connection_id="conn_1",
            account_id="wx_1",
            credentials={"botToken": "x"},
        ),
        p.SessionUpdate("cs_1", "weixin", "scanned", [], {}, connection_id="conn_1"),
    ],
    ("connection.status", "params"): [
        p.ConnectionStatusParams("conn_1", "connected"),
        p.ConnectionStatusParams("conn_1", "error", "session expired"),
    ],
    ("log", "params"): [p.LogParams("info", "started"), p.LogParams("error", "boom", {"attempt": 2})],
    ("state.get", "params"): [p.StateGetParams("cursor", "conn_1"), p.StateGetParams("settings")],
    ("state.get", "result"): [p.StateGetResult({"a": [1]}, 3), p.StateGetResult(None, 0)],
    ("state.put", "params"): [
        p.StatePutParams("cursor", "abc", "conn_1", 3),
        p.StatePutParams("cursor", None, "conn_1"),
        p.StatePutParams("settings", {"x": 1}),
    ],
    ("state.put", "result"): [p.StatePutResult(3)],
}


def test_positive_cases_cover_every_method_and_part():
    expected = {(m, "params") for m in ALL_METHODS} | {(m, "result") for m, (_, r) in ALL_METHODS.items() if r}
    assert set(POSITIVE) == expected


@pytest.mark.parametrize("key", POSITIVE, ids=[f"{m}.{part}" for m, part in POSITIVE])
def test_structs_validate_and_go_out_complete(key):
    method, part = key
    params_type, result_type = ALL_METHODS[method]
    for struct in POSITIVE[key]:
        assert isinstance(struct, params_type if part == "params" else result_type)
        assert issues(method, part, struct) == [], struct
        # SPEC 3.1: every field is on the wire, an unset optional one as null
        assert list(wire(struct)) == [f.encode_name for f in msgspec.inspect.type_info(type(struct)).fields]
        assert ws.missing_in(ws.validator_for(method, part), wire(struct)) == []
        # what goes out decodes back to the same value
        assert msgspec.json.decode(msgspec.json.encode(struct), type=type(struct)) == struct


def test_optional_fields_accept_null():
    view = wire(VIEW_MIN) | {"qrCode": None, "qrImage": None, "accountId": None, "displayName": None, "error": None}
    assert issues("session.get", "result", view) == []
    event = wire(EVENT_FULL) | {"userId": None, "threadId": None}
    assert ws.errors_of(ws.bridge_event_validator(), event) == []
    assert issues("message.send", "result", {"duplicate": False, "providerMessageId": None}) == []
    assert issues("health", "result", {"status": "ok", "detail": None, "connections": None}) == []


def test_a_missing_optional_field_is_named_and_forgiven_by_receivers_only():
    health = {"status": "ok"}
    validator = ws.validator_for("health", "result")
    assert {e["path"] for e in ws.errors_of(validator, health)} == {""}  # the complete form wants both
    assert ws.errors_of(validator, health, complete=False) == []
    assert ws.missing_in(validator, health) == ["/connections", "/detail"]
    # nested, inside a list and inside a nullable field
    result = wire(POSITIVE[("webhook.handle", "result")][1])
    del result["events"][0]["threadId"]
    del result["response"]["bodyEncoding"]
    validator = ws.validator_for("webhook.handle", "result")
    assert ws.missing_in(validator, result) == ["/events/0/threadId", "/response/bodyEncoding"]
    assert ws.errors_of(validator, result, complete=False) == []
    # a missing required field is never forgiven
    del result["events"][1]["metadata"]
    assert [e["path"] for e in ws.errors_of(validator, result, complete=False)] == ["/events/1"]
    assert "/events/1/metadata" in ws.missing_in(validator, result)
    descriptor = wire(POSITIVE[("initialize", "result")][0])
    del descriptor["connectors"][0]["optionsSchema"]
    message = {"jsonrpc": "2.0", "id": 1, "result": descriptor}
    assert ws.missing_fields("plugin_to_host", message, method="initialize") == ["/result/connectors/0/optionsSchema"]
    assert ws.message_errors("plugin_to_host", message, method="initialize", complete=False) == []
    assert ws.message_errors("plugin_to_host", message, method="initialize")


def test_receivers_decode_a_missing_optional_field_as_null_and_refuse_a_missing_required_one():
    assert msgspec.json.decode(b'{"status": "ok"}', type=p.HealthResult) == p.HealthResult("ok", None, None)
    with pytest.raises(msgspec.ValidationError, match="instructions"):
        msgspec.json.decode(
            b'{"sessionId": "s", "kind": "k", "status": "pending", "metadata": {}}', type=p.ConnectorSessionView
        )
    with pytest.raises(msgspec.ValidationError, match="peerType"):
        msgspec.convert({"peerId": "p"}, p.Target)


def _without(obj: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != key}


NEGATIVE = [
    ("initialize", "params", _without(wire(POSITIVE[("initialize", "params")][0]), "stateDir"), ""),
    ("initialize", "params", wire(POSITIVE[("initialize", "params")][0]) | {"protocolVersion": 0}, "/protocolVersion"),
    (
        "initialize",
        "result",
        wire(POSITIVE[("initialize", "result")][0])
        | {"connectors": [{"kind": "w", "displayName": "W", "authType": "password"}]},
        "/connectors/0/authType",
    ),
    ("health", "result", {"status": "fine"}, "/status"),
    ("session.get", "result", wire(VIEW_MIN) | {"status": "done"}, "/status"),
    ("session.get", "result", _without(wire(VIEW_MIN), "sessionId"), ""),
    ("session.start", "params", {"sessionId": "cs", "kind": "w", "connectionId": "c"}, ""),
    ("session.cancel", "params", {}, ""),
    ("message.send", "params", _without(wire(SEND_FULL), "requestId"), ""),
    ("message.send", "params", wire(SEND_FULL) | {"requestId": ""}, "/requestId"),
    ("message.send", "params", wire(SEND_FULL) | {"target": {"peerId": "x", "peerType": "room"}}, "/target/peerType"),
    ("message.send", "result", {"duplicate": "yes"}, "/duplicate"),
    (
        "webhook.handle",
        "params",
        wire(POSITIVE[("webhook.handle", "params")][0]) | {"headers": {"Content-Type": "x"}},
        "/headers",
    ),
    ("webhook.handle", "params", wire(POSITIVE[("webhook.handle", "params")][1]) | {"body": "not base64!"}, "/body"),
    (
        "webhook.handle",
        "result",
        {"response": {"status": 200, "body": "", "bodyEncoding": "hex"}},
        "/response/bodyEncoding",
    ),
    ("$/cancelRequest", "params", {"id": None}, "/id"),
    ("event.inbound", "params", wire(EVENT_FULL) | {"peerType": "private"}, "/peerType"),
    ("event.inbound", "params", wire(EVENT_FULL) | {"timestamp": "yesterday"}, "/timestamp"),
    ("event.inbound", "params", wire(EVENT_FULL) | {"timestamp": "2026-13-02T09:30:00Z"}, "/timestamp"),
    ("event.inbound", "params", wire(EVENT_FULL) | {"deliveryAttempt": 0}, "/deliveryAttempt"),
    ("event.inbound", "params", _without(wire(EVENT_FULL), "messageId"), ""),
    ("event.inbound", "result", {"duplicate": True}, ""),
    ("session.update", "params", _without(wire(POSITIVE[("session.update", "params")][0]), "connectionId"), ""),
    ("session.update", "params", wire(POSITIVE[("session.update", "params")][0]) | {"status": "online"}, "/status"),
    ("connection.status", "params", {"connectionId": "c", "status": "gone"}, "/status"),
    ("log", "params", {"level": "trace", "message": "x"}, "/level"),
    ("log", "params", {"level": "info"}, ""),
    ("log", "params", {"level": "info", "message": "x"}, ""),  # fields: null, never left out
    ("connection.resume", "params", _without(wire(CONN), "credentials"), ""),
    ("connection.release", "params", {"connectionId": ""}, "/connectionId"),
    ("state.get", "params", {"key": "", "connectionId": None}, "/key"),
    ("state.get", "result", {"value": 1}, ""),
    ("state.put", "params", {"key": "k", "value": 1, "connectionId": "c", "epoch": -1}, "/epoch"),
    ("state.put", "params", {"key": "k" * 513, "value": 1, "connectionId": None, "epoch": None}, "/key"),
    ("state.put", "params", {"key": "k", "connectionId": None, "epoch": None}, ""),  # value: null deletes, but is sent
    ("state.put", "result", {"epoch": "1"}, "/epoch"),
]


@pytest.mark.parametrize(
    "method, part, obj, path", NEGATIVE, ids=[f"{n[0]}.{n[1]}-{i}" for i, n in enumerate(NEGATIVE)]
)
def test_invalid_instances_fail(method, part, obj, path):
    errors = issues(method, part, obj)
    assert errors, obj
    assert path in [e["path"] for e in errors]
    with pytest.raises(ws.WireSchemaError) as err:
        ws.validate(method, part, obj)
    assert err.value.errors == errors


def test_bridge_event_requires_every_spec_field():
    # The bridge endpoint's body (SPEC 6.3): optional only userId and threadId, which a receiver reads as null.
    full = wire(EVENT_FULL)
    for field in full:
        assert ws.errors_of(ws.bridge_event_validator(), _without(full, field)), field
        forgiven = not ws.errors_of(ws.bridge_event_validator(), _without(full, field), complete=False)
        assert forgiven == (field in ("userId", "threadId")), field


def test_inbound_ack_schema():
    v = ws.inbound_ack_validator()
    assert v.is_valid(wire(p.InboundAck(accepted=True, duplicate=True, pending=False)))
    assert v.is_valid({"accepted": False, "duplicate": False, "pending": True, "retryAfterSeconds": 5})
    assert not v.is_valid({"accepted": True, "duplicate": False, "pending": False, "retryAfterSeconds": -1})
    assert not v.is_valid({"accepted": True, "duplicate": False, "pending": False})  # retryAfterSeconds: null


# ---------------------------------------------------------------- whole messages


def test_messages_in_each_direction():
    init = wire(POSITIVE[("initialize", "params")][0])
    assert (
        ws.message_errors("host_to_plugin", {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init}) == []
    )
    assert ws.message_errors("host_to_plugin", b'{"jsonrpc":"2.0","method":"initialized","params":{}}') == []
    assert ws.message_errors("host_to_plugin", '{"jsonrpc":"2.0","method":"$/cancelRequest","params":{"id":3}}') == []
    # a plugin answers initialize: the result is checked against the request's method
    result = {"jsonrpc": "2.0", "id": 1, "result": wire(POSITIVE[("initialize", "result")][0])}
    assert ws.message_errors("plugin_to_host", result, method="initialize") == []
    assert ws.message_errors("plugin_to_host", result | {"result": {"protocolVersion": 1}}, method="initialize")
    # the host answers event.inbound
    ack = {"jsonrpc": "2.0", "id": "p-1", "result": wire(p.InboundAck(accepted=True, duplicate=False, pending=True))}
    assert ws.message_errors("host_to_plugin", ack, method="event.inbound") == []
    error = {
        "jsonrpc": "2.0",
        "id": 4,
        "error": {"code": -32010, "message": "in progress", "data": {"retryAfterSeconds": 5}},
    }
    assert ws.message_errors("plugin_to_host", error) == []
    assert (
        ws.message_errors("plugin_to_host", {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "x"}})
        == []
    )
    log = {"jsonrpc": "2.0", "method": "log", "params": {"level": "info", "message": "hi", "fields": None}}
    assert ws.message_errors("plugin_to_host", log) == []
    ws.validate_message("plugin_to_host", log)
    log["params"].pop("fields")
    assert ws.missing_fields("plugin_to_host", log) == ["/params/fields"]
    assert ws.message_errors("plugin_to_host", log, complete=False) == []


@pytest.mark.parametrize(
    "direction, message, method",
    [
        ("host_to_plugin", b"not json", None),
        ("host_to_plugin", {"jsonrpc": "1.0", "id": 1, "method": "health", "params": {}}, None),
        ("host_to_plugin", {"jsonrpc": "2.0", "id": 1, "method": "health", "result": {}}, None),
        ("host_to_plugin", {"jsonrpc": "2.0", "id": 1.5, "method": "health"}, None),
        ("host_to_plugin", {"jsonrpc": "2.0", "id": 1, "method": "event.inbound", "params": wire(EVENT_FULL)}, None),
        ("host_to_plugin", {"jsonrpc": "2.0", "method": "health", "params": {}}, None),
        ("host_to_plugin", {"jsonrpc": "2.0", "id": 2, "method": "initialized", "params": {}}, None),
        ("host_to_plugin", {"jsonrpc": "2.0", "id": 2, "method": "session.get", "params": {}}, None),
        ("plugin_to_host", {"jsonrpc": "2.0", "id": 2, "result": {"status": "fine"}}, "health"),
        ("plugin_to_host", {"jsonrpc": "2.0", "id": 2, "error": {"message": "no code"}}, None),
        ("plugin_to_host", [{"jsonrpc": "2.0", "method": "log", "params": {"level": "info", "message": "x"}}], None),
    ],
    ids=[
        "not_json",
        "jsonrpc_1",
        "method_and_result",
        "float_id",
        "wrong_direction",
        "request_without_id",
        "notification_with_id",
        "bad_params",
        "bad_result",
        "error_without_code",
        "batch",
    ],
)
def test_invalid_messages(direction, message, method):
    assert ws.message_errors(direction, message, method=method)
    with pytest.raises(ws.WireSchemaError):
        ws.validate_message(direction, message, method=method)


# ---------------------------------------------------------------- generated shapes

ident = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
text = st.text(max_size=30)
opt_text = st.none() | text
kind = st.from_regex(r"\A[a-z][a-z0-9_]{0,10}\Z")
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(text, children, max_size=3),
    max_leaves=8,
)
json_object = st.dictionaries(text, json_value, max_size=4)
timestamp = st.builds(
    lambda dt, frac, tz: dt.strftime("%Y-%m-%dT%H:%M:%S") + frac + tz,
    st.datetimes(min_value=datetime.datetime(1900, 1, 1)),
    st.sampled_from(["", ".5", ".123456"]),
    st.sampled_from(["Z", "z", "+00:00", "-05:30", "+14:00"]),
)

bridge_events = st.builds(
    p.BridgeEvent,
    event_id=ident,
    connection_id=ident,
    kind=kind,
    peer_id=ident,
    message_id=ident,
    timestamp=timestamp,
    delivery_attempt=st.integers(1, 10**6),
    channel_id=text,
    account_id=text,
    peer_type=st.sampled_from(["dm", "group", "channel", "unknown"]),
    user_id=opt_text,
    thread_id=opt_text,
    message_type=st.sampled_from(["text", "image", "file"]),
    content=text,
    metadata=json_object,
)
targets = st.builds(
    p.Target,
    peer_id=ident,
    peer_type=st.sampled_from(["dm", "group", "channel", "unknown"]),
    thread_id=opt_text,
    reply_to_message_id=opt_text,
)
send_requests = st.builds(
    p.SendRequest,
    request_id=ident,
    connection_id=ident,
    channel_id=ident,
    kind=kind,
    target=targets,
    content=text,
    content_type=st.sampled_from(["text", "markdown"]),
    metadata=json_object,
)
session_views = st.builds(
    p.ConnectorSessionView,
    session_id=ident,
    kind=kind,
    status=st.sampled_from(
        [
            "pending",
            "qr_ready",
            "scanned",
            "confirmed",
            "installing",
            "waiting_for_user",
            "connected",
            "expired",
            "error",
            "cancelled",
        ]
    ),
    qr_code=opt_text,
    qr_image=opt_text,
    instructions=st.lists(text, max_size=3),
    account_id=opt_text,
    display_name=opt_text,
    error=opt_text,
    metadata=json_object,
)
descriptors = st.builds(
    p.ConnectorDescriptor,
    kind=kind,
    display_name=text,
    auth_type=st.sampled_from(["qr", "plugin_install", "credentials"]),
    capabilities=st.lists(st.sampled_from(["receive_text", "send_text", "groups", "threads"])),
    options_schema=st.none() | st.just({"type": "object", "properties": {"secret": {"writeOnly": True}}}),
)
initialize_results = st.builds(
    p.InitializeResult,
    protocol_version=st.just(1),
    plugin=st.builds(p.NameVersion, text, text),
    connectors=st.lists(descriptors, max_size=3),
    capabilities=st.fixed_dictionaries({}, optional={"webhook": st.booleans(), "sessions": st.booleans()}),
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(bridge_events)
def test_generated_bridge_events_validate(event):
    obj = wire(event)
    assert ws.errors_of(ws.bridge_event_validator(), obj) == []
    assert issues("event.inbound", "params", obj) == []


@FAST
@given(send_requests)
def test_generated_send_requests_validate(request):
    assert issues("message.send", "params", request) == []


@FAST
@given(session_views)
def test_generated_session_views_validate(view):
    assert issues("session.get", "result", view) == []
    update = p.SessionUpdate(**{f: getattr(view, f) for f in view.__struct_fields__}, connection_id="conn_1")
    assert issues("session.update", "params", update) == []


@FAST
@given(initialize_results)
def test_generated_initialize_results_validate(result):
    assert issues("initialize", "result", result) == []


@FAST
@given(bridge_events, st.sampled_from(["eventId", "peerType", "timestamp", "deliveryAttempt", "kind"]))
def test_generated_bridge_events_with_a_broken_field_fail(event, field):
    broken = {"eventId": "", "peerType": "room", "timestamp": "not a time", "deliveryAttempt": 0, "kind": "Bad Kind"}
    obj = wire(event) | {field: broken[field]}
    assert {e["path"] for e in ws.errors_of(ws.bridge_event_validator(), obj)} == {f"/{field}"}


def test_metaschema_is_the_2020_12_one():
    assert Draft202012Validator.META_SCHEMA["$id"] == "https://json-schema.org/draft/2020-12/schema"


# ---------------------------------------------------------------- the manifest: hand-written schema, checked


def _manifest_levels() -> list[tuple[type, dict[str, Any]]]:
    from plugin_host import manifest as m

    schema = ws.load_schema("plugin-manifest.schema.json")
    props = schema["properties"]
    return [
        (m.Manifest, schema),
        (m.Runtime, props["runtime"]),
        (m.Timeouts, props["timeouts"]),
        (m.Limits, props["limits"]),
        (m.ManifestConnector, props["connectors"]["items"]),
    ]


@pytest.mark.parametrize("struct, schema", _manifest_levels(), ids=lambda v: getattr(v, "__name__", ""))
def test_the_manifest_schema_and_the_manifest_structs_name_the_same_fields(struct, schema):
    """plugin-manifest.schema.json stays hand-written (if/then rules, refused typos); this keeps it the Structs' twin."""
    fields = msgspec.inspect.type_info(struct).fields
    assert set(schema["properties"]) == {f.encode_name for f in fields}
    assert set(schema.get("required", [])) == {f.encode_name for f in fields if f.required}


def test_a_manifest_connector_is_announced_as_the_wire_descriptor():
    from plugin_host.manifest import ManifestConnector

    item = ws.load_schema("plugin-manifest.schema.json")["properties"]["connectors"]["items"]["properties"]
    wire_schema = ws.load_schema("rpc/defs.schema.json")["$defs"]["ConnectorDescriptor"]["properties"]
    assert set(item) == set(wire_schema)
    assert item["kind"]["pattern"] == wire_schema["kind"]["pattern"]
    assert sorted(item["authType"]["enum"]) == sorted(wire_schema["authType"]["enum"])
    declared = msgspec.convert({"kind": "k", "displayName": "K", "authType": "qr"}, ManifestConnector)
    assert declared.descriptor() == p.ConnectorDescriptor("k", "K", "qr", [], None)
    assert (
        issues(
            "initialize",
            "result",
            {**wire(POSITIVE[("initialize", "result")][1]), "connectors": [wire(declared.descriptor())]},
        )
        == []
    )


def test_the_openapi_document_carries_the_generated_wire_shapes():
    from admin_api.openapi import OPENAPI

    components = OPENAPI["components"]["schemas"]
    defs = ws.load_schema("rpc/defs.schema.json")["$defs"]
    # the same shapes as schemas/ (none of them refers to another component)
    assert components["BridgeEvent"] == defs["BridgeEvent"]
    assert components["InboundAck"] == defs["InboundAck"]
    assert components["Connector"] == defs["ConnectorDescriptor"]
    assert components["BridgeEvent"]["required"] == [
        f.encode_name for f in msgspec.inspect.type_info(p.BridgeEvent).fields
    ]


def test_a_receiver_forgives_a_missing_optional_field_inside_a_nullable_union():
    inner = {
        "type": "object",
        "properties": {
            "a": {"type": "string"},
            "b": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        },
        "required": ["a", "b"],
    }
    validator = Draft202012Validator({"type": "object", "properties": {"x": {"anyOf": [inner, {"type": "null"}]}}})
    assert ws.errors_of(validator, {"x": {"a": "1"}})
    assert ws.errors_of(validator, {"x": {"a": "1"}}, complete=False) == []
    assert ws.errors_of(validator, {"x": {"b": None}}, complete=False)  # `a` is required for good
    assert ws.missing_in(validator, {"x": {"a": "1"}}) == ["/x/b"]
