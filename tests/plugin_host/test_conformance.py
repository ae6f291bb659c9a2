"""`plugin check`: passes on plugins/echo, fails clearly on broken plugins (made here, in tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plugin_host.conformance import CHECKS, run_checks
from plugin_host.package import pack_directory

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]

# a minimal hand-written plugin (no SDK); each broken variant changes one behaviour
_BASE = r"""
import json, sys, time
MODE = {mode!r}

def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()

def ask_host(mid, method, params):
    # the answer is the next line: the host has nothing else to say during initialize
    send({{"jsonrpc": "2.0", "id": mid, "method": method, "params": params}})
    return json.loads(sys.stdin.readline())

for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        send({{"jsonrpc": "2.0", "id": None, "error": {{"code": -32700, "message": "parse error"}}}})
        continue
    if not isinstance(msg, dict) or "method" not in msg:
        send({{"jsonrpc": "2.0", "id": msg.get("id") if isinstance(msg, dict) else None,
              "error": {{"code": -32600, "message": "invalid request"}}}})
        continue
    method, mid = msg["method"], msg.get("id")
    if mid is None:
        continue
    if method == "initialize":
        if MODE == "silent":
            continue
        version = 2 if MODE == "wrong_version" else 1
        if MODE == "uses_state":
            put = ask_host("p1", "state.put", {{"key": "k", "value": [1], "connectionId": None, "epoch": None}})
            got = ask_host("p2", "state.get", {{"key": "k", "connectionId": None}})
            if put.get("result") != {{"epoch": 0}} or got.get("result") != {{"value": [1], "epoch": 0}}:
                send({{"jsonrpc": "2.0", "id": mid, "error": {{"code": -32603, "message": repr((put, got))}}}})
                continue
        if MODE == "garbage":
            sys.stdout.write("Loading plugin... done\n")
        if MODE == "non_ascii":  # a JSON array, not an object; its first 120 bytes end inside a character
            sys.stdout.buffer.write(json.dumps(["x" + "\u00e9" * 100], ensure_ascii=False).encode() + b"\n")
            sys.stdout.buffer.flush()
        connector = {{"kind": "handmade", "displayName": "Handmade", "authType": "credentials", "capabilities": []}}
        if MODE != "incomplete":
            connector["optionsSchema"] = None
        send({{"jsonrpc": "2.0", "id": mid, "result": {{"protocolVersion": version,
              "plugin": {{"name": "broken", "version": "1.0.0"}}, "connectors": [connector], "capabilities": {{}}}}}})
    elif method == "health":
        if MODE == "bad_health":
            send({{"jsonrpc": "2.0", "id": mid, "result": {{"status": "fine"}}}})
        elif MODE == "incomplete" and isinstance(msg.get("params"), dict):
            send({{"jsonrpc": "2.0", "id": mid, "result": {{"status": "ok"}}}})
        elif isinstance(msg.get("params"), dict) or MODE == "lenient":
            send({{"jsonrpc": "2.0", "id": mid, "result": {{"status": "ok", "detail": None, "connections": None}}}})
        else:
            send({{"jsonrpc": "2.0", "id": mid, "error": {{"code": -32602, "message": "params"}}}})
    elif method == "shutdown":
        send({{"jsonrpc": "2.0", "id": mid, "result": {{}}}})
    elif MODE == "unknown_ok":
        send({{"jsonrpc": "2.0", "id": mid, "result": {{}}}})
    else:
        send({{"jsonrpc": "2.0", "id": mid, "error": {{"code": -32601, "message": "no such method"}}}})
if MODE == "ignores_eof":
    while True:
        time.sleep(1)
"""


def make_plugin(tmp_path: Path, mode: str) -> Path:
    folder = tmp_path / mode
    (folder / "handmade").mkdir(parents=True)
    (folder / "handmade" / "__init__.py").write_text("")
    (folder / "handmade" / "__main__.py").write_text(_BASE.format(mode=mode))
    manifest = {
        "manifestVersion": 1,
        "id": "handmade",
        "name": "Handmade",
        "version": "1.0.0",
        "protocolVersion": 1,
        "runtime": {"type": "python", "module": "handmade"},
        "connectors": [{"kind": "handmade", "displayName": "Handmade", "authType": "credentials"}],
        "timeouts": {"handshakeMs": 1500, "healthMs": 1000},
    }
    (folder / "plugin.json").write_text(json.dumps(manifest))
    return folder


def _by_name(report) -> dict[str, object]:
    return {c.name: c for c in report.checks}


async def test_echo_plugin_passes_every_check() -> None:
    report = await run_checks(REPO / "plugins" / "echo")
    assert report.passed, report.render()
    assert [c.name for c in report.checks] == CHECKS
    assert all(c.ok for c in report.checks)


async def test_a_well_behaved_handmade_plugin_passes_also_as_a_zip(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, "good")
    archive = pack_directory(folder, tmp_path / "good.zip")
    report = await run_checks(archive)
    assert report.passed, report.render()


async def test_the_check_answers_state_requests_like_a_host(tmp_path: Path) -> None:
    report = await run_checks(make_plugin(tmp_path, "uses_state"))
    assert report.passed, report.render()


async def test_each_field_a_plugin_leaves_out_is_named(tmp_path: Path) -> None:
    report = await run_checks(make_plugin(tmp_path, "incomplete"))
    checks = _by_name(report)
    # a host reads missing optional fields as null: everything else passes, the omission is reported
    assert [name for name, c in checks.items() if c.ok is False] == ["every field"], report.render()
    reason = checks["every field"].reason
    assert "answer to 'initialize' leaves out /result/connectors/0/optionsSchema" in reason
    assert "answer to 'health' leaves out /result/connections, /result/detail" in reason


@pytest.mark.parametrize(
    ("mode", "failed", "reason"),
    [
        ("silent", "initialize", "no answer within 1500 ms"),
        ("wrong_version", "initialize", "protocolVersion 2; expected 1"),
        ("garbage", "stdout", "not JSON on stdout: 'Loading plugin... done'"),
        ("non_ascii", "stdout", "not a JSON-RPC message object on stdout: '[\"x\u00e9\u00e9"),
        ("bad_health", "health", "does not match the schema"),
        ("unknown_ok", "unknown method", "expected error -32601"),
        ("lenient", "malformed input", "answered with a result"),
        ("ignores_eof", "exit on EOF", "still running"),
    ],
)
async def test_broken_plugins_fail_clearly(tmp_path: Path, mode: str, failed: str, reason: str) -> None:
    report = await run_checks(make_plugin(tmp_path, mode))
    assert not report.passed
    check = _by_name(report)[failed]
    assert check.ok is False and reason in check.reason, report.render()
    assert f"FAIL  {failed}: " in report.render()


async def test_package_rules_fail_first(tmp_path: Path) -> None:
    folder = make_plugin(tmp_path, "good")
    (folder / "plugin.json").write_text('{"id": "Bad Id"}')
    report = await run_checks(folder)
    checks = _by_name(report)
    assert checks["package"].ok is False and "manifest" in checks["package"].reason
    assert checks["spawn"].ok is None  # skipped
    report = await run_checks(tmp_path / "missing")
    assert not report.passed


async def test_a_plain_node_plugin_passes_every_check() -> None:
    report = await run_checks(REPO / "tests" / "plugins" / "node_complete")
    assert report.passed, report.render()
    assert all(c.ok for c in report.checks)
