from __future__ import annotations

import json
import subprocess
import sys

import pytest

from plugin_host.manifest import MAX_MANIFEST_BYTES, Manifest, ManifestError, load_manifest
from tests.support.zips import manifest

FULL = {
    "manifestVersion": 1,
    "id": "feishu_vendorcli",
    "name": "Feishu / Lark",
    "version": "1.0.0",
    "description": "Feishu/Lark bots: create by QR scan or link an existing app",
    "protocolVersion": 1,
    "runtime": {"type": "python", "module": "feishu_vendorcli"},
    "connectors": [
        {
            "kind": "feishu",
            "displayName": "Feishu/Lark",
            "authType": "plugin_install",
            "capabilities": ["receive_text", "send_text", "groups"],
        }
    ],
    "configSchema": {"type": "object", "properties": {}},
    "env": ["FEISHU_VENDOR_INSTALL_COMMAND"],
    "timeouts": {"handshakeMs": 5000, "healthMs": 2000, "callMs": 10000, "methods": {"session.start": 120000}},
    "limits": {"maxConcurrency": 16, "maxMessageBytes": 524288},
    "healthIntervalMs": 10000,
}


def load(obj) -> Manifest:
    return load_manifest(json.dumps(obj).encode())


def refused(obj) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        load(obj)
    return info.value


def test_spec_example_loads():
    m = load(FULL)
    assert (m.id, m.version, m.runtime.type, m.runtime.module) == (
        "feishu_vendorcli",
        "1.0.0",
        "python",
        "feishu_vendorcli",
    )
    assert m.connectors[0].auth_type == "plugin_install"
    assert m.timeouts.for_method("session.start") == 120.0
    assert m.env == ["FEISHU_VENDOR_INSTALL_COMMAND"]


def test_minimal_manifest_gets_spec_defaults():
    m = load(manifest())
    assert m.description == ""
    assert m.config_schema == {"type": "object", "properties": {}}
    assert m.env == []
    assert (m.timeouts.handshake_ms, m.timeouts.health_ms, m.timeouts.call_ms) == (5000, 2000, 10000)
    assert m.timeouts.for_method("health") == 10.0
    assert (m.limits.max_concurrency, m.limits.max_message_bytes) == (16, 524288)
    assert m.health_interval_ms == 10000


def test_command_runtime():
    m = load(manifest(runtime={"type": "command", "command": ["node", "./plugin.js"]}))
    assert m.runtime.command == ["node", "./plugin.js"]


def test_unknown_top_level_fields_are_allowed():
    assert load(manifest(futureField={"x": 1})).id == "demo_plugin"


def test_utf8_bom_is_tolerated():
    assert load_manifest(b"\xef\xbb\xbf" + json.dumps(manifest()).encode()).id == "demo_plugin"


@pytest.mark.parametrize("version", ["1.0.0", "0.0.1", "10.20.30", "1.0.0-alpha.1", "1.0.0+build.5", "1.0.0-rc.1+x"])
def test_semver_accepted(version):
    assert load(manifest(version=version)).version == version


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "01.0.0", "1.0.0-", "1.0.0-01", "1.0.0+", ""])
def test_semver_refused(version):
    assert refused(manifest(version=version)).errors[0]["path"] == "/version"


@pytest.mark.parametrize("plugin_id", ["a", "A_b", "1abc", "ab-c", "a" * 65, "ab c"])
def test_bad_ids(plugin_id):
    err = refused(manifest(id=plugin_id))
    assert err.code == "manifest_schema"
    assert err.errors[0]["path"] == "/id"
    assert "lower-case" in err.errors[0]["message"]  # the rule, not a regex


@pytest.mark.parametrize(
    "required", ["manifestVersion", "id", "name", "version", "protocolVersion", "runtime", "connectors"]
)
def test_required_fields(required):
    err = refused(manifest(**{required: None}))
    assert err.code == "manifest_schema"
    assert any(required in e["message"] for e in err.errors)


BAD = {
    "manifest_version_2": ({"manifestVersion": 2}, "/manifestVersion"),
    "protocol_version_2": ({"protocolVersion": 2}, "/protocolVersion"),
    "runtime_type": ({"runtime": {"type": "java", "module": "x"}}, "/runtime/type"),
    "python_without_module": ({"runtime": {"type": "python"}}, "/runtime"),
    "python_bad_module": ({"runtime": {"type": "python", "module": "a-b"}}, "/runtime/module"),
    "python_with_command": ({"runtime": {"type": "python", "module": "a", "command": ["x"]}}, "/runtime/command"),
    "command_empty": ({"runtime": {"type": "command", "command": []}}, "/runtime/command"),
    "command_empty_arg": ({"runtime": {"type": "command", "command": [""]}}, "/runtime/command/0"),
    "command_escapes": ({"runtime": {"type": "command", "command": ["./bin/../../x"]}}, "/runtime/command/0"),
    "runtime_typo": ({"runtime": {"type": "python", "module": "a", "modul": "b"}}, "/runtime"),
    "no_connectors": ({"connectors": []}, "/connectors"),
    "bad_kind": ({"connectors": [{"kind": "Feishu", "displayName": "F", "authType": "qr"}]}, "/connectors/0/kind"),
    "bad_auth": ({"connectors": [{"kind": "f", "displayName": "F", "authType": "oauth"}]}, "/connectors/0/authType"),
    "no_display_name": ({"connectors": [{"kind": "f", "authType": "qr"}]}, "/connectors/0"),
    "capability_not_string": (
        {"connectors": [{"kind": "f", "displayName": "F", "authType": "qr", "capabilities": [1]}]},
        "/connectors/0/capabilities/0",
    ),
    "duplicate_kind": ({"connectors": [{"kind": "f", "displayName": "F", "authType": "qr"}] * 2}, "/connectors/1/kind"),
    "env_lower": ({"env": ["path"]}, "/env/0"),
    "env_host_secret": ({"env": ["CHANNEL_RUNTIME_SECRET_KEY"]}, "/env/0"),
    "timeout_zero": ({"timeouts": {"callMs": 0}}, "/timeouts/callMs"),
    "timeout_huge": ({"timeouts": {"handshakeMs": 3_600_001}}, "/timeouts/handshakeMs"),
    "timeout_float": ({"timeouts": {"healthMs": 1.5}}, "/timeouts/healthMs"),
    "method_timeout": ({"timeouts": {"methods": {"session.start": -1}}}, "/timeouts/methods/session.start"),
    "timeout_typo": ({"timeouts": {"handshakeMS": 10}}, "/timeouts"),
    "concurrency": ({"limits": {"maxConcurrency": 0}}, "/limits/maxConcurrency"),
    "concurrency_huge": ({"limits": {"maxConcurrency": 1025}}, "/limits/maxConcurrency"),
    "message_small": ({"limits": {"maxMessageBytes": 1023}}, "/limits/maxMessageBytes"),
    "message_huge": ({"limits": {"maxMessageBytes": 16 * 2**20 + 1}}, "/limits/maxMessageBytes"),
    "health_interval": ({"healthIntervalMs": 99}, "/healthIntervalMs"),
    "config_schema_not_object": ({"configSchema": []}, "/configSchema"),
    "config_schema_invalid": (
        {"configSchema": {"type": "object", "properties": {"a": {"type": 5}}}},
        "/configSchema/properties/a/type",
    ),
    "description_not_string": ({"description": 5}, "/description"),
}


@pytest.mark.parametrize("overrides, path", BAD.values(), ids=BAD.keys())
def test_schema_failures_name_the_field(overrides, path):
    err = refused(manifest(**overrides))
    assert err.code == "manifest_schema"
    assert path in [e["path"] for e in err.errors], err.errors
    assert path in err.message or err.errors[0]["path"] in err.message


def test_limits_at_the_edges_are_accepted():
    m = load(
        manifest(
            limits={"maxConcurrency": 1024, "maxMessageBytes": 1024},
            healthIntervalMs=100,
            timeouts={"callMs": 3_600_000},
        )
    )
    assert m.limits.max_concurrency == 1024


def test_not_an_object():
    assert refused([1, 2]).code == "manifest_schema"


@pytest.mark.parametrize("data", [b"", b"{", b"{'a': 1}", b"\xff\xfe{}", b'{"a": 1} trailing'])
def test_invalid_json(data):
    with pytest.raises(ManifestError) as err:
        load_manifest(data)
    assert err.value.code == "manifest_invalid_json"


def test_too_large():
    data = json.dumps(manifest(description="x")).encode()
    data = data[:-1] + b" " * (MAX_MANIFEST_BYTES - len(data) + 1) + b"}"
    with pytest.raises(ManifestError) as err:
        load_manifest(data)
    assert err.value.code == "manifest_too_large"
    assert load_manifest(data[: MAX_MANIFEST_BYTES - 1] + b"}") is not None  # exactly at the limit is fine


def test_import_stays_light():
    # plugins import plugin_host modules on cold start; jsonschema must load only when validating
    code = "import sys, plugin_host.manifest; print('jsonschema' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_outbound_limits_are_parsed_and_null_means_no_limit() -> None:
    weixin = {"perPeerPerMinute": 6, "minIntervalMs": 1000, "replyWindowSeconds": 86400, "maxRepliesPerInbound": 10}
    limits = load({**FULL, "limits": {"outbound": {**weixin, "perConnectionPerMinute": None}}}).limits.outbound
    assert (limits.per_peer_per_minute, limits.min_interval_ms) == (6, 1000)
    assert (limits.reply_window_seconds, limits.max_replies_per_inbound) == (86400, 10)
    assert limits.per_connection_per_minute is None
    default = load(FULL).limits.outbound  # SPEC 4: absent = no limit at all
    assert default == type(default)() and default.per_peer_per_minute is None


@pytest.mark.parametrize(
    "outbound", [{"perPeerPerMinute": 0}, {"minIntervalMs": -1}, {"replyWindowSeconds": "1d"}, {"burst": 3}]
)
def test_outbound_limits_out_of_range_are_refused(outbound: dict) -> None:
    error = refused({**FULL, "limits": {"outbound": outbound}})
    assert error.code == "manifest_schema" and any("/limits/outbound" in e["path"] for e in error.errors)
