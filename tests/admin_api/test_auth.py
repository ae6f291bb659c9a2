"""Bearer auth (SPEC 7.2): every /api route refuses a missing or wrong token; the bridge has its own token."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.routing import Route

from admin_api.auth import TokenAuth, bearer_token, route_path
from tests.support.admin import (
    ADMIN_TOKEN,
    BRIDGE_TOKEN,
    assert_error_shape,
    client,
    lifespan,
    make_app,
)

pytestmark = pytest.mark.anyio

BRIDGE_EVENTS = "/api/channel-connector-bridge/events"


def _api_calls(app) -> list[tuple[str, str]]:
    calls = []
    for route in app.routes:
        if isinstance(route, Route) and route.path.startswith("/api"):
            path = re.sub(r"\{plugin_id\}", "echo", route.path)
            path = re.sub(r"\{[^}]+\}", "1.0.0", path)
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    calls.append((method, path))
    return calls


@pytest.mark.parametrize("token", [None, "wrong-token", ADMIN_TOKEN + "x", BRIDGE_TOKEN, "", "Basic abc"])
async def test_every_api_route_refuses_a_missing_or_wrong_token(tmp_path: Path, token: str | None) -> None:
    app = make_app(tmp_path / "home")
    calls = _api_calls(app)
    assert len(calls) >= 12
    async with lifespan(app), client(app, token=None) as http:
        headers = {} if token is None else {"Authorization": token if " " in token else f"Bearer {token}"}
        for method, path in calls + [("GET", "/metrics"), ("GET", "/api/unknown")]:
            if path.startswith("/api/channel-connector-bridge") and token == BRIDGE_TOKEN:
                continue  # the right token there
            r = await http.request(method, path, headers=headers, content=b"{}")
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
            assert assert_error_shape(r)["code"] == "unauthorized"
            assert ADMIN_TOKEN not in r.text and BRIDGE_TOKEN not in r.text


async def test_public_routes_need_no_token(tmp_path: Path) -> None:
    app = make_app(tmp_path / "home")
    async with lifespan(app), client(app, token=None) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).status_code == 200
        page = await http.get("/admin")
        assert page.status_code == 200 and "admin/static/admin.js" in page.text
        assert (await http.get("/admin/static/admin.js")).status_code == 200  # the page's own files are public
        assert ADMIN_TOKEN not in page.text
        assert (await http.get("/openapi.json")).json()["openapi"].startswith("3.1")


async def test_bridge_refuses_everything_without_a_configured_bridge_token(tmp_path: Path) -> None:
    app = make_app(tmp_path / "home", bridge=False)
    async with lifespan(app), client(app, token=None) as http:
        for token in (None, ADMIN_TOKEN, BRIDGE_TOKEN, ""):
            headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
            r = await http.post(BRIDGE_EVENTS, json={}, headers=headers)
            assert r.status_code == 401
            assert "no bridge token" in assert_error_shape(r)["message"]


async def test_bridge_token_is_its_own(tmp_path: Path) -> None:
    app = make_app(tmp_path / "home")
    async with lifespan(app), client(app, token=None) as http:
        r = await http.post(BRIDGE_EVENTS, json={}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert r.status_code == 401
        r = await http.post(BRIDGE_EVENTS, json={}, headers={"Authorization": f"Bearer {BRIDGE_TOKEN}"})
        assert r.status_code != 401  # past auth (the bridge route itself belongs to the runtime)
        # the bridge token opens nothing else
        r = await http.get("/api/plugins", headers={"Authorization": f"Bearer {BRIDGE_TOKEN}"})
        assert r.status_code == 401


async def test_metrics_open_when_configured(tmp_path: Path) -> None:
    app = make_app(tmp_path / "home", metrics_open=True)
    async with lifespan(app), client(app, token=None) as http:
        r = await http.get("/metrics")
        assert r.status_code == 200
        # still closed: the API
        assert (await http.get("/api/plugins")).status_code == 401


def test_token_parsing_and_mounted_paths() -> None:
    auth = TokenAuth(lambda *a: None, admin_token="t0ken", bridge_token=None, metrics_open=False)
    assert bearer_token({"headers": [(b"authorization", b"bearer t0ken")]}) == b"t0ken"
    assert bearer_token({"headers": [(b"authorization", b"Bearer")]}) is None
    assert bearer_token({"headers": []}) is None
    assert auth.refusal("/api/plugins", b"t0ken") is None
    assert auth.refusal("/api", None) is not None
    assert auth.refusal("/apix", None) is None
    assert auth.refusal("/webhooks/conn_1", None) is None
    assert route_path({"path": "/admin-app/api/plugins", "root_path": "/admin-app"}) == "/api/plugins"
    with pytest.raises(ValueError):
        TokenAuth(lambda *a: None, admin_token="", bridge_token=None, metrics_open=False)


@pytest.mark.parametrize("root_path", ["/", "/a", "/ap", "/api", "/admin-x"])
async def test_a_root_path_cannot_hide_an_api_route_from_auth(root_path: str, tmp_path) -> None:
    """A mount prefix is stripped only at a segment boundary, so auth sees the path the router sees."""
    import httpx

    app = make_app(tmp_path)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app, root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            r = await http.get("/api/plugins")
            assert r.status_code in (401, 404), (root_path, r.status_code, r.text[:200])
            assert r.status_code != 200
