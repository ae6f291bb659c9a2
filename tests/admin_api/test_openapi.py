"""/openapi.json describes every route; a bounded fuzzer driven by it never gets a 5xx or a malformed error.

The fuzzer is a hypothesis strategy built from the OpenAPI document (schemathesis
is not needed): for every operation, path and query parameters from their
schemas or hostile text, request bodies from the JSON schema or random JSON/bytes,
and a right, wrong or missing token.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import anyio.from_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from admin_api.openapi import OPENAPI
from tests.support.admin import ADMIN_TOKEN, BRIDGE_TOKEN, assert_error_shape, client, lifespan, make_app, plugin_zip

METHODS = ("get", "post", "put", "delete", "patch", "options")


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in OPENAPI["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def test_openapi_covers_every_route_of_the_app(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    documented = {(path, method.upper()) for path, method, _ in _operations()}
    for route in app.routes:
        if isinstance(route, Route) and route.path not in ("/openapi.json", "/admin"):
            for method in route.methods or ():
                if method != "HEAD":
                    assert (route.path, method) in documented, (route.path, method)
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', json.dumps(OPENAPI)))
    assert refs <= set(OPENAPI["components"]["schemas"])


# ---------------------------------------------------------------- strategies from the document

_json_leaf = (
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20)
)
_any_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_hostile_text = st.sampled_from(
    ["", " ", "..", "../etc", "%2e%2e", "echo", "ECHO", "a" * 300, "nul\x00l", "é", "1.0.0", "-1", "true", "0"]
) | st.text(string.printable, max_size=30)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = OPENAPI["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    schema = _resolve(schema)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "integer":
        return st.integers(schema.get("minimum", -10), schema.get("maximum", 2000))
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        return st.text(min_size=schema.get("minLength", 0), max_size=20)
    if kind == "object" and "properties" in schema:
        required = schema.get("required", [])
        props = {k: _from_schema(v) for k, v in schema["properties"].items()}
        return st.fixed_dictionaries(
            {k: props[k] for k in required}, optional={k: v for k, v in props.items() if k not in required}
        )
    return _any_json


def _param(param: dict[str, Any]) -> st.SearchStrategy[str]:
    if param["name"] == "connection_id":
        return st.sampled_from(["conn_missing"]) | _hostile_text
    if param["name"] == "plugin_id":
        return st.sampled_from(["echo", "missing_plugin"]) | _from_schema(param["schema"]) | _hostile_text
    return st.builds(str, _from_schema(param["schema"])) | _hostile_text


def _body(op: dict[str, Any]) -> st.SearchStrategy[tuple[str | None, bytes]]:
    content = op.get("requestBody", {}).get("content", {})
    options: list[st.SearchStrategy[tuple[str | None, bytes]]] = [
        st.tuples(st.sampled_from([None, "application/json", "text/plain"]), st.binary(max_size=64)),
        st.tuples(st.just("application/json"), _any_json.map(lambda v: json.dumps(v).encode())),
    ]
    if "application/json" in content:
        schema = content["application/json"]["schema"]
        options.append(
            st.tuples(st.just("application/json"), _from_schema(schema).map(lambda v: json.dumps(v).encode()))
        )
    if "application/zip" in content:
        options.append(
            st.tuples(
                st.sampled_from(["application/zip", "application/octet-stream"]),
                st.binary(max_size=256).map(lambda b: b"PK\x03\x04" + b),
            )
        )
        options.append(st.tuples(st.just("multipart/form-data; boundary=b"), st.binary(max_size=128)))
    return st.one_of(options)


# an endless stream never completes through httpx's ASGI transport (it buffers whole answers);
# tests/admin_api/test_events.py covers it through a real server
_ENDLESS = {("/api/events", "get")}


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    path, method, op = draw(st.sampled_from([o for o in _operations() if (o[0], o[1]) not in _ENDLESS]))
    url = path
    query: dict[str, str] = {}
    for param in op.get("parameters", []):
        value = draw(_param(param))
        if param["in"] == "path":
            url = url.replace("{" + param["name"] + "}", quote(value, safe=""))
        elif draw(st.booleans()):
            query[param["name"]] = value
    content_type, body = draw(_body(op))
    token = draw(st.sampled_from([ADMIN_TOKEN, ADMIN_TOKEN, ADMIN_TOKEN, BRIDGE_TOKEN, None, "wrong"]))
    return {
        "method": draw(st.sampled_from([method.upper()] * 4 + ["PATCH", "PUT"])),
        "url": url,
        "params": query,
        "content_type": content_type,
        "body": body,
        "token": token,
    }


# ---------------------------------------------------------------- the fuzzer


@pytest.fixture
def portal_app(tmp_path: Path):
    """The app with its lifespan and an installed, enabled echo plugin, in an event loop of its own."""
    app = make_app(tmp_path / "home", with_runtime=True)
    zip_bytes = plugin_zip(tmp_path)
    with anyio.from_thread.start_blocking_portal(backend="asyncio") as portal:
        with (
            portal.wrap_async_context_manager(lifespan(app)),
            portal.wrap_async_context_manager(client(app, token=None)) as http,
        ):
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/zip"}
            assert portal.call(lambda: http.post("/api/plugins", content=zip_bytes, headers=headers)).status_code == 201
            portal.call(lambda: http.post("/api/plugins/echo/enable", headers=headers))
            yield portal, http


def test_fuzz_every_route_from_the_openapi_document(portal_app) -> None:
    portal, http = portal_app
    seen: dict[int, int] = {}

    @settings(max_examples=250, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(requests())
    def one_request(req: dict[str, Any]) -> None:
        headers = {}
        if req["token"]:
            headers["Authorization"] = f"Bearer {req['token']}"
        if req["content_type"]:
            headers["Content-Type"] = req["content_type"]

        async def send():
            with anyio.fail_after(20):
                return await http.request(
                    req["method"], req["url"], params=req["params"], content=req["body"], headers=headers
                )

        response = portal.call(send)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (req, response.status_code, response.text)
        if response.status_code >= 400:
            assert_error_shape(response)
        if req["url"].startswith("/api/channel-connector-bridge"):
            needed = BRIDGE_TOKEN
        elif req["url"].startswith("/api") or req["url"] == "/metrics":
            needed = ADMIN_TOKEN
        else:
            needed = req["token"]
        if req["token"] != needed:
            assert response.status_code == 401

    one_request()
    assert any(200 <= code < 300 for code in seen) and 401 in seen
