"""`/api/deliveries` and `/api/connections/{id}/relogin`: filters, paging, retry, discard, auth, errors (SPEC 7.3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from admin_api import create_app
from channel_runtime import ChannelConfig, InboundMessage, OutboundMessage
from channel_runtime.channels import MemoryChannel
from channel_runtime.runtime import ChannelRuntime
from plugin_host.errors import REFUSED, RpcError
from plugin_host.host import PluginHost
from plugin_host.protocol import SendRequest, SendResult
from tests.support import eventually
from tests.support.admin import ADMIN_TOKEN, assert_error_shape, client, lifespan, make_settings

pytestmark = pytest.mark.anyio


class Api:
    def __init__(self, runtime: ChannelRuntime, http: httpx.AsyncClient, app: Any) -> None:
        self.runtime = runtime
        self.http = http
        self.app = app
        self.refuse: set[str] = set()
        self.handlers: list[Any] = []
        self.calls: list[str] = []  # request ids of every message.send the platform saw

    def channel(self, channel_id: str) -> MemoryChannel:
        channel = self.runtime.channels[channel_id]
        assert isinstance(channel, MemoryChannel)
        return channel

    async def send(self, channel_id: str, peer: str, content: str) -> str:
        return await self.runtime.send(OutboundMessage(channel_id=channel_id, peer_id=peer, content=content))

    async def settled(self, delivery_id: str, state: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            view = (await self.http.get(f"/api/deliveries/{delivery_id}")).json()
            return view if view["status"] == state else None

        result: dict[str, Any] = await eventually(check)
        return result


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    home = tmp_path / "home"
    handlers: list[Any] = []

    async def handler(message: InboundMessage) -> None:
        for h in handlers:
            await h(message)

    runtime = ChannelRuntime(
        handler, f"sqlite:///{home / 'state.db'}", plugin_host=PluginHost(home), home=home, handler_attempts=1
    )
    assert runtime.plugin_host is not None
    app = create_app(host=runtime.plugin_host, runtime=runtime, settings=make_settings(home))
    async with lifespan(app), client(app) as http:
        state = Api(runtime, http, app)
        state.handlers = handlers
        # "a": a platform that refuses some contents for good; "w": replies only in a reply window
        await runtime.add_channel("a", ChannelConfig(kind="memory", account_id="bot"))
        windows = {"replyWindowSeconds": 3600}
        await runtime.add_channel("w", ChannelConfig(kind="memory", config={"outboundLimits": windows}))

        async def platform(request: SendRequest) -> SendResult | None:
            state.calls.append(request.request_id)
            if request.content in state.refuse:
                raise RpcError(REFUSED, f"blocked by the user: {request.content}")
            return None

        state.channel("a").on_send = platform
        yield state


async def test_a_delivery_view_tells_the_truth(api: Api) -> None:
    sent = await api.send("a", "u1", "hello")
    view = await api.settled(sent, "sent")
    assert view["id"] == sent and sent.startswith("out-")
    assert view["direction"] == "outbound" and view["channelId"] == "a" and view["peerId"] == "u1"
    assert view["requestId"].startswith("out_a:memory:dm:u1:") and view["content"] == "hello"
    assert view["providerMessageId"] == "mem_1" and view["attempts"] == 1 and view["reason"] is None
    assert view["target"]["peerId"] == "u1" and view["sentAt"] >= view["createdAt"]
    api.refuse.add("nope")
    dead = await api.settled(await api.send("a", "u1", "nope"), "dead")
    # -32019: dead at once, the platform's words as the error
    assert dead["reason"] == "refused" and dead["lastError"] == "blocked by the user: nope" and dead["attempts"] == 1
    deferred = await api.settled(await api.send("w", "u2", "later"), "deferred")
    assert deferred["reason"] == "reply_window" and deferred["expiresAt"] == pytest.approx(
        deferred["deferredAt"] + 86400
    )
    assert deferred["nextAttemptAt"] == pytest.approx(deferred["expiresAt"])


async def test_filters_and_cursor_paging(api: Api) -> None:
    ids = [await api.send("a", f"u{n % 2}", f"m{n}") for n in range(5)]
    for delivery_id in ids:
        await api.settled(delivery_id, "sent")
    waiting = await api.send("w", "u0", "w1")
    await api.settled(waiting, "deferred")
    everything = (await api.http.get("/api/deliveries")).json()
    assert [d["id"] for d in everything] == [waiting, *reversed(ids)]
    assert [d["id"] for d in (await api.http.get("/api/deliveries?channelId=a&peerId=u0")).json()] == [
        ids[4],
        ids[2],
        ids[0],
    ]
    assert [d["id"] for d in (await api.http.get("/api/deliveries?status=deferred")).json()] == [waiting]
    assert (await api.http.get("/api/deliveries?status=dead")).json() == []
    pages, cursor = [], None
    while True:
        r = await api.http.get("/api/deliveries", params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200
        pages.append([d["id"] for d in r.json()])
        cursor = r.headers.get("X-Next-Cursor")
        if cursor is None:
            break
    assert pages == [[waiting, ids[4]], [ids[3], ids[2]], [ids[1], ids[0]]]


async def test_inbox_dead_letters_are_listed_retried_and_discarded(api: Api) -> None:
    attempts: list[str] = []

    async def failing(message: InboundMessage) -> None:
        attempts.append(message.message_id)
        if len(attempts) <= 5:
            raise RuntimeError("handler is broken")

    api.handlers.append(failing)  # the runtime gives up after one attempt
    await api.channel("a").receive("u9", "hi", message_id="im1")
    await eventually(lambda: _non_empty(api, "/api/deliveries?status=dead&direction=inbound"))
    [letter] = (await api.http.get("/api/deliveries?status=dead&direction=inbound")).json()
    assert letter["id"].startswith("in-") and letter["direction"] == "inbound" and letter["messageId"] == "im1"
    assert letter["peerId"] == "u9" and letter["reason"] == "failed" and "handler is broken" in letter["lastError"]
    assert (await api.http.get(f"/api/deliveries/{letter['id']}")).json() == letter
    # listed with the outbound ones too, and only as dead (live inbox entries are the handler's business)
    assert letter["id"] in [d["id"] for d in (await api.http.get("/api/deliveries")).json()]
    assert (await api.http.get("/api/deliveries?status=queued&direction=inbound")).json() == []
    r = await api.http.post(f"/api/deliveries/{letter['id']}/retry")
    assert r.status_code == 200 and r.json()["status"] == "queued"
    await eventually(lambda: _non_empty(api, "/api/deliveries?status=dead&direction=inbound"))
    assert attempts == ["im1", "im1"]
    r = await api.http.delete(f"/api/deliveries/{letter['id']}")
    assert r.status_code == 204
    assert (await api.http.get(f"/api/deliveries/{letter['id']}")).status_code == 404


async def _non_empty(api: Api, url: str) -> bool:
    return bool((await api.http.get(url)).json())


async def test_retry_of_a_dead_delivery_reuses_its_request_id(api: Api) -> None:
    api.refuse.add("again")
    delivery_id = await api.send("a", "u1", "again")
    dead = await api.settled(delivery_id, "dead")
    api.refuse.clear()  # the user unblocked the bot
    r = await api.http.post(f"/api/deliveries/{delivery_id}/retry")
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("queued", "sending", "sent") and r.json()["attempts"] in (0, 1)
    sent = await api.settled(delivery_id, "sent")
    assert sent["requestId"] == dead["requestId"] and sent["id"] == delivery_id
    assert api.calls == [dead["requestId"], dead["requestId"]]
    # only a dead one can be retried or discarded
    for r in (
        await api.http.post(f"/api/deliveries/{delivery_id}/retry"),
        await api.http.delete(f"/api/deliveries/{delivery_id}"),
    ):
        assert r.status_code == 409
        assert assert_error_shape(r)["code"] == "delivery_not_dead"
        assert r.json()["error"]["details"] == {"status": "sent"}


async def test_discard_forgets_a_dead_delivery(api: Api) -> None:
    api.refuse.add("bye")
    delivery_id = await api.send("a", "u1", "bye")
    await api.settled(delivery_id, "dead")
    assert (await api.http.delete(f"/api/deliveries/{delivery_id}")).status_code == 204
    r = await api.http.get(f"/api/deliveries/{delivery_id}")
    assert r.status_code == 404 and assert_error_shape(r)["code"] == "delivery_not_found"
    assert (await api.http.delete(f"/api/deliveries/{delivery_id}")).status_code == 404


@pytest.mark.parametrize("delivery_id", ["out-999999", "in-5", "nope", "out-", "out-1x", "out-" + "9" * 40])
async def test_unknown_ids_answer_404(api: Api, delivery_id: str) -> None:
    for method, path in (
        ("GET", f"/api/deliveries/{delivery_id}"),
        ("POST", f"/api/deliveries/{delivery_id}/retry"),
        ("DELETE", f"/api/deliveries/{delivery_id}"),
    ):
        r = await api.http.request(method, path)
        assert r.status_code == 404, (method, path, r.text)
        assert assert_error_shape(r)["code"] == "delivery_not_found"


@pytest.mark.parametrize(
    "query",
    ["status=lost", "direction=sideways", "limit=0", "limit=501", "limit=ten", "cursor=%21%21", "cursor=WzEsMiwzXQ"],
)
async def test_bad_parameters_answer_400(api: Api, query: str) -> None:
    r = await api.http.get(f"/api/deliveries?{query}")
    assert r.status_code == 400, r.text
    assert assert_error_shape(r)["code"] in ("invalid_parameter", "invalid_cursor")


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_every_delivery_route_needs_the_admin_token(api: Api, token: str | None) -> None:
    delivery_id = await api.send("a", "u1", "x")
    async with client(api.app, token=token) as anonymous:
        for method, path in (
            ("GET", "/api/deliveries"),
            ("GET", f"/api/deliveries/{delivery_id}"),
            ("POST", f"/api/deliveries/{delivery_id}/retry"),
            ("DELETE", f"/api/deliveries/{delivery_id}"),
            ("POST", "/api/connections/conn_x/relogin"),
            ("GET", "/api/events"),
        ):
            r = await anonymous.request(method, path)
            assert r.status_code == 401, (method, path)
    assert ADMIN_TOKEN not in r.text


async def test_relogin_of_unknown_or_revoked_connections(api: Api) -> None:
    r = await api.http.post("/api/connections/conn_missing/relogin")
    assert r.status_code == 404 and assert_error_shape(r)["code"] == "connection_not_found"
    store = api.runtime.store
    record = await store.connections.create(kind="echo", plugin_id="echo", status="revoked")
    r = await api.http.post(f"/api/connections/{record.connection_id}/relogin")
    assert r.status_code == 409 and assert_error_shape(r)["code"] == "connection_revoked"
    live = await store.connections.create(kind="echo", plugin_id="echo", status="error")
    r = await api.http.post(f"/api/connections/{live.connection_id}/relogin", json={"options": []})
    assert r.status_code == 422
    r = await api.http.post(f"/api/connections/{live.connection_id}/relogin", content=b"[1]")
    assert r.status_code == 400
    r = await api.http.post(f"/api/connections/{live.connection_id}/relogin")
    assert r.status_code == 503 and assert_error_shape(r)["code"] == "plugin_unavailable"  # echo is not installed
