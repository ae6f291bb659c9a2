"""Malformed inputs are 4xx answers and bad lines, never 500s or a dead reader (issue 14, finding 7).

Through a real `serve` and the hostile plugin (tests/plugins/hostile).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from plugin_host.package import pack_directory
from tests.support import REPO, ServeProcess, wait_for, zips
from tests.support.zips import Entry

ADMIN = "adm1n-" + "m" * 40
AUTH = {"Authorization": f"Bearer {ADMIN}"}
ZIP = {**AUTH, "Content-Type": "application/zip"}

pytestmark = pytest.mark.slow


def test_malformed_inputs_through_a_real_serve(tmp_path: Path) -> None:
    src = tmp_path / "hostile"
    shutil.copytree(REPO / "tests" / "plugins" / "hostile", src, ignore=shutil.ignore_patterns("__pycache__"))
    hostile = pack_directory(src, tmp_path / "hostile.zip").read_bytes()
    server = ServeProcess(tmp_path / "home", cwd=tmp_path, env={"CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN})
    try:
        server.wait_ready()
        base = server.base

        # packages: a 3,000-deep plugin.json, an entry name over 255 bytes
        deep = b'{"a":' * 3000 + b"1" + b"}" * 3000
        answer = httpx.post(
            base + "/api/plugins", content=zips.build([Entry("plugin.json", deep)]), headers=ZIP, timeout=30
        )
        assert (answer.status_code, answer.json()["error"]["code"]) == (400, "manifest_invalid_json")
        long_name = zips.with_extra(Entry("data/" + "n" * 300, b"x"))
        answer = httpx.post(base + "/api/plugins", content=long_name, headers=ZIP, timeout=30)
        assert (answer.status_code, answer.json()["error"]["code"]) == (400, "name_too_long")

        assert httpx.post(base + "/api/plugins", content=hostile, headers=ZIP, timeout=30).status_code == 201
        assert httpx.post(base + "/api/plugins/hostile/enable", headers=AUTH, timeout=30).status_code == 200

        # a lone surrogate in displayName is valid JSON but no text
        raw = b'{"kind": "hostile", "displayName": "\\ud800", "options": {}}'
        answer = httpx.post(
            base + "/api/connector-sessions",
            content=raw,
            headers={**AUTH, "Content-Type": "application/json"},
            timeout=30,
        )
        assert (answer.status_code, answer.json()["error"]["code"]) == (400, "invalid_json")

        # a qrCode no QR symbol can hold: the session ends in a clear error, the connection too
        answer = httpx.post(
            base + "/api/connector-sessions",
            json={"kind": "hostile", "displayName": "Q", "options": {"mode": "hugeqr"}},
            headers=AUTH,
            timeout=30,
        )
        assert answer.status_code in (200, 201), answer.text
        session, connection = answer.json()["session"], answer.json()["connection"]
        assert session["status"] == "error" and "too long to render" in session["error"]
        assert connection["status"] == "error"

        # a working connection for the webhook cases
        answer = httpx.post(
            base + "/api/connector-sessions",
            json={"kind": "hostile", "displayName": "W", "options": {}},
            headers=AUTH,
            timeout=30,
        )
        connection_id = answer.json()["connection"]["connectionId"]
        wait_for(
            lambda: (
                httpx.get(f"{base}/api/connections/{connection_id}", headers=AUTH, timeout=10).json()["status"]
                in ("connected", "disconnected")
            ),
            30,
            "the connection",
        )
        hook = f"{base}/webhooks/{connection_id}"

        # a non-Latin-1 response header from the plugin: the plugin's fault, a 502
        answer = httpx.post(hook + "?hostile=headers", content=b"{}", timeout=30)
        assert (answer.status_code, answer.json()["error"]["code"]) == (502, "webhook_failed")

        # 3,000-deep JSON on the plugin's stdout: a bad line; the reader lives on
        answer = httpx.post(hook + "?hostile=deep", content=b"{}", timeout=30)
        assert answer.status_code == 200 and answer.text == "ok"
        view = httpx.get(base + "/api/plugins/hostile", headers=AUTH, timeout=10).json()
        assert view["state"] == "running" and view["counters"]["protocolViolations"] >= 1
        assert httpx.post(hook, content=b"{}", timeout=30).status_code == 200

        # ESC and CR from the plugin, on stderr and in a `log` notification
        assert httpx.post(hook + "?hostile=controls", content=b"{}", timeout=30).status_code == 200
        # 5,000 `log` notifications
        assert httpx.post(hook + "?hostile=logflood", content=b"{}", timeout=60).status_code == 200
        assert httpx.get(base + "/api/plugins/hostile", headers=AUTH, timeout=10).json()["state"] == "running"
        assert httpx.post(hook + "?hostile=controls", content=b"{}", timeout=30).status_code == 200
    finally:
        _, _, err = server.stop()
    plugin_lines = [line for line in err.splitlines() if "plugin_host.plugin.hostile" in line]
    assert "\x1b" not in err and "\r" not in err
    assert any("\\x1b[2J\\x1b[31mred\\x0dforged line" in line for line in plugin_lines)
    assert any("\\x1b]0;owned\\x07title\\x0dcarriage" in line for line in plugin_lines)
    flood = [line for line in plugin_lines if "flood line" in line]
    assert 0 < len(flood) < 2000, len(flood)
    assert any("log notifications not logged (flood)" in line for line in plugin_lines)
    assert "Traceback" not in err and "RecursionError" not in err
    json.dumps(err)  # the whole log is text
