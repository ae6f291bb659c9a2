"""One error shape (SPEC 7.1): typed exceptions mapped to statuses, unexpected ones to a generic 500."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.routing import Route

from admin_api import ApiError, create_app
from plugin_host.errors import OVERLOADED, TIMED_OUT, UNAVAILABLE, UNKNOWN_CONNECTION, RpcError
from plugin_host.host import HostError, PluginHost
from plugin_host.manifest import ManifestError
from plugin_host.package import PackageError
from tests.support.admin import ADMIN_TOKEN, assert_error_shape, client, make_settings

pytestmark = pytest.mark.anyio

LEAKY = "password=hunter2-very-secret"


def _raiser(exc: Exception):
    async def endpoint(request: Request):
        raise exc

    return endpoint


CASES = {
    "/api/t/api": (ApiError("teapot", "short and stout", {"a": 1}, status=418), 418, "teapot"),
    "/api/t/host": (HostError("plugin_in_use", "in use", {"connections": 2}, status=409), 409, "plugin_in_use"),
    "/api/t/package": (PackageError("unsafe_path", "bad path", {"entry": "../x"}), 400, "unsafe_path"),
    "/api/t/too-big": (PackageError("upload_too_large", "too big", status=413), 413, "upload_too_large"),
    "/api/t/manifest": (
        ManifestError("manifest_schema", "bad", {"errors": [{"path": "/id", "message": "no"}]}),
        400,
        "manifest_schema",
    ),
    "/api/t/unavailable": (RpcError(UNAVAILABLE, "not running"), 503, "plugin_unavailable"),
    "/api/t/timeout": (RpcError(TIMED_OUT, "slow"), 504, "timed_out"),
    "/api/t/overloaded": (RpcError(OVERLOADED, "busy"), 503, "overloaded"),
    "/api/t/unknown-conn": (RpcError(UNKNOWN_CONNECTION, "who"), 404, "unknown_connection"),
    "/api/t/vendor": (RpcError(-32014, f"vendor failed: {LEAKY}", {"stderr": LEAKY}), 502, "vendor_command_failed"),
    "/api/t/boom": (RuntimeError(f"boom {LEAKY} {ADMIN_TOKEN}"), 500, "internal_error"),
}


async def test_exceptions_map_to_statuses_and_one_shape(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    extra = [Route(path, _raiser(exc)) for path, (exc, _, _) in CASES.items()]
    app = create_app(host=PluginHost(tmp_path), settings=make_settings(tmp_path), extra_routes=extra)
    async with client(app) as http:
        for path, (_, status, code) in CASES.items():
            r = await http.get(path)
            assert r.status_code == status, (path, r.text)
            error = assert_error_shape(r)
            assert error["code"] == code
            assert "hunter2" not in r.text and ADMIN_TOKEN not in r.text
        r = await http.get("/api/t/boom")
        assert r.json()["error"]["message"] == "internal error; see the server log"
        assert (await http.get("/api/t/unavailable")).headers["retry-after"] == "1"
        assert (await http.get("/api/t/manifest")).json()["error"]["details"]["errors"][0]["path"] == "/id"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "RuntimeError" in logged
    assert "hunter2" not in logged and ADMIN_TOKEN not in logged
