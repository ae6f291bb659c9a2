"""Plugin lifecycle through the HTTP API, with real plugin processes and a real SQLite home."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from tests.support.admin import (
    ADMIN_TOKEN,
    BRIDGE_TOKEN,
    SECRET_CONFIG_VALUE,
    SECRET_SCHEMA,
    assert_error_shape,
    plugin_zip,
    running,
)

pytestmark = pytest.mark.anyio

ZIP = {"Content-Type": "application/zip"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): look at its state
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


async def test_lifecycle_install_enable_restart_swap_disable_uninstall(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    src = tmp_path / "src"
    src.mkdir()
    v1 = plugin_zip(src, "1.0.0", configSchema=SECRET_SCHEMA)
    v1_other_bytes = plugin_zip(src, "1.0.0", description="same version, other bytes", configSchema=SECRET_SCHEMA)
    v2 = plugin_zip(src, "1.1.0", configSchema=SECRET_SCHEMA)
    broken = plugin_zip(src, "1.2.0", broken=True, configSchema=SECRET_SCHEMA)
    bodies: list[str] = []

    async with running(tmp_path / "home") as (app, http):

        async def call(method: str, url: str, **kw):
            response = await http.request(method, url, **kw)
            bodies.append(response.text)
            return response

        # install: 201 new, 200 same bytes, 409 other bytes
        r = await call("POST", "/api/plugins", content=v1, headers=ZIP)
        assert r.status_code == 201, r.text
        assert r.json()["id"] == "echo" and r.json()["created"] is True
        sha = hashlib.sha256(v1).hexdigest()
        assert r.json()["sha256"] == sha and r.json()["plugin"]["versions"][0]["sha256"] == sha
        r = await call("POST", "/api/plugins", files={"file": ("echo.zip", v1, "application/zip")})
        assert r.status_code == 200, r.text
        assert r.json()["created"] is False
        r = await call("POST", "/api/plugins", content=v1_other_bytes, headers=ZIP)
        assert r.status_code == 409
        assert assert_error_shape(r)["code"] == "version_conflict"
        assert r.json()["error"]["details"]["installedSha256"] == sha

        r = await call("GET", "/api/plugins")
        assert [p["id"] for p in r.json()] == ["echo"]
        assert r.json()[0]["state"] == "disabled"

        # enable: running
        r = await call("POST", "/api/plugins/echo/enable")
        assert r.status_code == 200, r.text
        plugin = r.json()
        assert plugin["state"] == "running" and plugin["runningVersion"] == "1.0.0"
        pid1 = plugin["pid"]
        assert _alive(pid1)
        assert set(plugin["counters"]) >= {"restarts", "crashes", "timeouts", "protocolViolations", "oversizedMessages"}

        # restart: another process
        r = await call("POST", "/api/plugins/echo/restart")
        assert r.status_code == 200, r.text
        pid2 = r.json()["pid"]
        assert pid2 != pid1 and r.json()["state"] == "running"

        # hot swap to 1.1.0: new pid, answers
        r = await call("POST", "/api/plugins", content=v2, headers=ZIP)
        assert r.status_code == 201
        r = await call("POST", "/api/plugins/echo/activate", json={"version": "1.1.0"})
        assert r.status_code == 200, r.text
        swapped = r.json()
        assert swapped["runningVersion"] == "1.1.0" and swapped["activeVersion"] == "1.1.0"
        pid3 = swapped["pid"]
        assert pid3 != pid2 and _alive(pid3)
        health = await app.state.host.client("echo").health()
        assert health.status == "ok"

        # a broken version: refused with a clear code, 1.1.0 keeps running
        r = await call("POST", "/api/plugins", content=broken, headers=ZIP)
        assert r.status_code == 201
        r = await call("POST", "/api/plugins/echo/activate", json={"version": "1.2.0"})
        assert r.status_code == 409
        error = assert_error_shape(r)
        assert error["code"] == "activation_failed" and "1.1.0" in error["message"]
        r = await call("GET", "/api/plugins/echo")
        assert r.json()["runningVersion"] == "1.1.0" and r.json()["pid"] == pid3 and r.json()["state"] == "running"

        # activate: bad bodies
        r = await call("POST", "/api/plugins/echo/activate", json={"version": "9.9.9"})
        assert r.status_code == 404 and assert_error_shape(r)["code"] == "version_not_found"
        r = await call("POST", "/api/plugins/echo/activate", json={"nope": 1})
        assert r.status_code == 422
        r = await call(
            "POST", "/api/plugins/echo/activate", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400 and assert_error_shape(r)["code"] == "invalid_json"

        # config: 422 with schema errors that never echo a secret value; saved config masked
        r = await call("PUT", "/api/plugins/echo/config", json={"apiToken": 987654321987, "retries": -1})
        assert r.status_code == 422
        error = assert_error_shape(r)
        assert error["code"] == "invalid_config" and error["details"]["errors"]
        assert "987654321987" not in r.text
        r = await call("PUT", "/api/plugins/echo/config", json={"apiToken": SECRET_CONFIG_VALUE, "retries": 2})
        assert r.status_code == 200, r.text
        assert r.json()["config"] == {"apiToken": "[REDACTED]", "retries": 2}
        # the schema served to forms marks what the host masks: by a flag or by the name alone
        served = r.json()["configSchema"]["properties"]
        assert [k for k, v in served.items() if v.get("writeOnly")] == ["apiToken", "signingKey"]
        assert r.json()["state"] == "running"
        # sending the masked value back keeps the secret
        r = await call("PUT", "/api/plugins/echo/config", json={"apiToken": "[REDACTED]", "retries": 3})
        assert r.status_code == 200
        assert app.state.host.registry.get("echo").config == {"apiToken": SECRET_CONFIG_VALUE, "retries": 3}

        # logs: bounded tail
        r = await call("GET", "/api/plugins/echo/logs", params={"tail": "5"})
        assert r.status_code == 200 and isinstance(r.json(), list) and len(r.json()) <= 5
        r = await call("GET", "/api/plugins/echo/logs", params={"tail": "lots"})
        assert r.status_code == 400

        # uninstall the running active version: refused while enabled
        r = await call("DELETE", "/api/plugins/echo/versions/1.1.0")
        assert r.status_code == 409 and assert_error_shape(r)["code"] == "version_active"
        r = await call("DELETE", "/api/plugins/echo/versions/1.0.0")
        assert r.status_code == 200
        assert [v["version"] for v in r.json()["versions"]] == ["1.1.0", "1.2.0"]

        # disable: stopped, process gone
        r = await call("POST", "/api/plugins/echo/disable")
        assert r.status_code == 200 and r.json()["state"] == "disabled"
        assert not _alive(pid3)

        r = await call("DELETE", "/api/plugins/echo")
        assert r.status_code == 204
        r = await call("GET", "/api/plugins/echo")
        assert r.status_code == 404 and assert_error_shape(r)["code"] == "plugin_not_found"
        assert not (tmp_path / "home" / "plugins" / "echo").exists()

    log_text = "\n".join(record.getMessage() for record in caplog.records)
    for secret in (ADMIN_TOKEN, BRIDGE_TOKEN, SECRET_CONFIG_VALUE):
        assert all(secret not in body for body in bodies)
        assert secret not in log_text


async def test_enabled_plugin_comes_back_after_a_server_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    zip_bytes = plugin_zip(tmp_path, "1.0.0")
    async with running(home) as (app, http):
        assert (await http.post("/api/plugins", content=zip_bytes, headers=ZIP)).status_code == 201
        r = await http.post("/api/plugins/echo/enable")
        first_pid = r.json()["pid"]
    assert not _alive(first_pid)

    async with running(home) as (app, http):
        r = await http.get("/api/plugins/echo")
        assert r.status_code == 200
        assert r.json()["state"] == "running" and r.json()["enabled"] is True
        assert r.json()["pid"] != first_pid and _alive(r.json()["pid"])
        r = await http.get("/api/connectors")
        assert r.json() == [
            {
                "kind": "echo",
                "displayName": "Echo",
                "authType": "credentials",
                "capabilities": ["receive_text", "send_text", "direct_messages"],
                "optionsSchema": None,
                "pluginId": "echo",
                "available": True,
            }
        ]


async def test_unknown_plugin_and_bad_parameters(tmp_path: Path) -> None:
    async with running(tmp_path / "home") as (app, http):
        for method, url in [
            ("GET", "/api/plugins/nope"),
            ("POST", "/api/plugins/nope/enable"),
            ("POST", "/api/plugins/nope/restart"),
            ("DELETE", "/api/plugins/nope"),
            ("GET", "/api/plugins/nope/logs"),
            ("DELETE", "/api/plugins/nope/versions/1.0.0"),
        ]:
            r = await http.request(method, url)
            assert r.status_code == 404, (method, url, r.text)
            assert assert_error_shape(r)["code"] == "plugin_not_found"
        r = await http.delete("/api/plugins/nope", params={"force": "maybe"})
        assert r.status_code == 400 and assert_error_shape(r)["code"] == "invalid_parameter"
        r = await http.get("/api/nothing-here")
        assert r.status_code == 404 and assert_error_shape(r)["code"] == "not_found"
        r = await http.patch("/api/plugins")
        assert r.status_code == 405 and assert_error_shape(r)["code"] == "method_not_allowed"


LOGGING_MAIN = """\
import sys
sys.stderr.write("first line token=abcdef0123456789abcdef\\n")
sys.stderr.write("second line\\n")
sys.stderr.flush()
from echo_plugin.echo import plugin
plugin.run()
"""


async def test_logs_with_timestamps_and_a_live_tail_after_a_sequence_number(tmp_path: Path) -> None:
    from plugin_host.package import pack_directory
    from tests.support import eventually
    from tests.support.admin import plugin_source

    source = plugin_source(tmp_path, "1.0.0", plugin_id="logger")
    main = source / "echo_plugin" / "__main__.py"
    main.rename(source / "echo_plugin" / "echo.py")
    main.write_text(LOGGING_MAIN)
    archive = pack_directory(source, tmp_path / "logger.zip").read_bytes()
    async with running(tmp_path / "home") as (app, http):
        assert (await http.post("/api/plugins", content=archive, headers=ZIP)).status_code == 201
        assert (await http.post("/api/plugins/logger/enable")).status_code == 200

        async def two_lines() -> list:
            r = await http.get("/api/plugins/logger/logs", params={"timestamps": "true"})
            return r.json() if len(r.json()) >= 2 else []

        first, second = (await eventually(two_lines))[:2]
        assert set(first) == {"seq", "at", "line"} and second["seq"] > first["seq"]
        assert first["at"].endswith("Z") and first["at"][:4].isdigit()
        assert first["line"].startswith("first line") and "abcdef0123456789abcdef" not in first["line"]
        # the plain form is unchanged: redacted text lines
        plain = (await http.get("/api/plugins/logger/logs")).json()
        assert plain[:2] == [first["line"], "second line"]
        # after=seq: only what is newer
        r = await http.get("/api/plugins/logger/logs", params={"timestamps": "true", "after": str(first["seq"])})
        assert [e["line"] for e in r.json()][:1] == ["second line"]
        r = await http.get("/api/plugins/logger/logs", params={"after": str(second["seq"])})
        assert r.json() == []
        for bad in ("-1", "x", "9" * 30):
            r = await http.get("/api/plugins/logger/logs", params={"after": bad})
            assert r.status_code == 400 and assert_error_shape(r)["details"] == {"parameter": "after"}
