"""ChannelRuntime: channel lifecycle (SPEC 6.2), inbound pipeline (6.3) and outbox (6.4)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from channel_runtime import ChannelConfig, InboundMessage, OutboundMessage
from channel_runtime.channels import MemoryChannel
from channel_runtime.runtime import ChannelError, ChannelRuntime, IngestError
from plugin_host.errors import IN_PROGRESS, RpcError
from plugin_host.protocol import BridgeEvent, SendRequest, SendResult
from tests.support import eventually, free_port

pytestmark = pytest.mark.anyio

MEM = ChannelConfig(kind="memory", account_id="bot")


def mem(runtime: ChannelRuntime, channel_id: str) -> MemoryChannel:
    channel = runtime.channels[channel_id]
    assert isinstance(channel, MemoryChannel)
    return channel


def fast_runtime(handler=None, store: str = "memory://", **kw: Any) -> ChannelRuntime:
    return ChannelRuntime(handler, store, retry_base=0.01, retry_cap=0.05, idle_poll=0.02, **kw)


# ---------------------------------------------------------------- SPEC 6.2 channel lifecycle


async def test_equal_config_is_a_noop():
    async with fast_runtime() as rt:
        await rt.add_channel("a", MEM)
        first = rt.channels["a"]
        await rt.add_channel("a", ChannelConfig(kind="memory", account_id="bot"))
        assert rt.channels["a"] is first
        assert rt.states["a"]["state"] == "running"


async def test_changed_config_replaces_after_the_new_one_starts():
    async with fast_runtime() as rt:
        await rt.add_channel("a", MEM)
        old = mem(rt, "a")
        await rt.add_channel("a", ChannelConfig(kind="memory", account_id="bot2"))
        new = mem(rt, "a")
        assert new is not old and new.started and not old.started
        assert rt.channel_configs["a"].account_id == "bot2"


async def test_failed_replacement_keeps_the_old_channel_running():
    async with fast_runtime() as rt:
        await rt.add_channel("a", MEM)
        old = mem(rt, "a")
        with pytest.raises(ChannelError, match="failed to start"):
            await rt.add_channel("a", ChannelConfig(kind="memory", config={"failStart": True}))
        assert rt.channels["a"] is old and old.started
        assert rt.channel_configs["a"] == MEM
        assert rt.states["a"]["state"] == "running"
        assert "failStart" not in str(rt.states["a"]) and rt.states["a"]["last_error"]


async def test_new_id_after_start_starts_only_that_channel():
    async with fast_runtime() as rt:
        await rt.add_channel("a", MEM)
        a = mem(rt, "a")
        await rt.add_channel("b", MEM)
        assert mem(rt, "a") is a
        assert mem(rt, "b").started and rt.states["b"]["state"] == "running"
        assert rt.states["b"]["started_at"] is not None


async def test_new_channel_that_fails_to_start_raises_and_is_not_registered():
    async with fast_runtime() as rt:
        with pytest.raises(ChannelError):
            await rt.add_channel("x", ChannelConfig(kind="memory", config={"failStart": True}))
        assert "x" not in rt.channels and "x" not in rt.channel_configs
        assert rt.states["x"]["state"] == "failed"


async def test_channels_added_before_start_run_on_start():
    rt = fast_runtime()
    await rt.add_channel("a", MEM)
    assert "a" not in rt.channels and rt.states["a"]["state"] == "stopped"
    async with rt:
        assert mem(rt, "a").started
    assert rt.states["a"]["state"] == "stopped"


async def test_disabled_config_removes_the_running_channel():
    async with fast_runtime() as rt:
        await rt.add_channel("a", MEM)
        channel = mem(rt, "a")
        await rt.add_channel("a", ChannelConfig(enabled=False, kind="memory"))
        assert "a" not in rt.channels and not channel.started
        assert rt.states["a"]["state"] == "disabled"


async def test_remove_channel():
    async with fast_runtime() as rt:
        await rt.remove_channel("missing")  # no-op
        assert "missing" not in rt.states
        await rt.add_channel("a", MEM)
        channel = mem(rt, "a")
        await rt.remove_channel("a")
        assert "a" not in rt.channels and "a" not in rt.channel_configs and not channel.started
        assert rt.states["a"]["state"] == "removed"


async def test_unknown_kind_is_refused_and_custom_kinds_register():
    async with fast_runtime() as rt:
        with pytest.raises(ChannelError, match="unknown channel kind"):
            await rt.add_channel("a", ChannelConfig(kind="carrier_pigeon"))
        rt.register_channel_kind("carrier_pigeon", MemoryChannel)
        await rt.add_channel("a", ChannelConfig(kind="carrier_pigeon"))
        assert rt.states["a"]["state"] == "running"


async def test_views_are_read_only():
    async with fast_runtime() as rt:
        await rt.add_channel("a", MEM)
        with pytest.raises(TypeError):
            rt.channels["b"] = rt.channels["a"]  # type: ignore[index]
        with pytest.raises(TypeError):
            rt.channel_configs["b"] = MEM  # type: ignore[index]


async def test_concurrent_adds_and_removes_leave_a_consistent_registry():
    built: list[MemoryChannel] = []

    def tracked(runtime: ChannelRuntime, channel_id: str, config: ChannelConfig) -> MemoryChannel:
        channel = MemoryChannel(runtime, channel_id, config)
        built.append(channel)
        return channel

    async with fast_runtime() as rt:
        rt.register_channel_kind("tracked", tracked)
        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(rt.add_channel, f"c{i % 5}", ChannelConfig(kind="tracked", account_id=str(i)))
                if i % 3 == 0:
                    tg.start_soon(rt.remove_channel, f"c{i % 5}")
        registered = set(map(id, rt.channels.values()))
        assert len(built) >= 5 and rt.channels  # the run did build and keep channels
        for channel in built:
            # every channel ever built is either the registered one (running) or stopped: no orphan runs
            assert channel.started == (id(channel) in registered)
        for channel_id, channel in rt.channels.items():
            assert channel.config == rt.channel_configs[channel_id]
            assert rt.states[channel_id]["state"] == "running"
        for channel_id, state in rt.states.items():
            assert (state["state"] == "running") == (channel_id in rt.channels)


# ---------------------------------------------------------------- inbox -> handler -> outbox


async def test_echo_round_trip_through_inbox_and_outbox():
    async with fast_runtime() as rt:
        await rt.add_channel("a", MEM)
        channel = mem(rt, "a")
        assert await channel.receive("u1", "hi", message_id="m1")
        await eventually(lambda: len(channel.sent) == 1)
        [sent] = channel.sent
        assert sent.content == "echo: hi"
        assert sent.target.peer_id == "u1" and sent.target.reply_to_message_id == "m1"
        assert sent.request_id.startswith("out_a:memory:dm:u1:")
        # the same platform message again is a runtime duplicate: the handler does not run again
        assert not await channel.receive("u1", "hi", message_id="m1")
        await anyio.sleep(0.1)
        assert len(channel.sent) == 1


async def test_order_within_a_conversation_and_parallel_conversations():
    seen: list[tuple[str, str]] = []
    gate = anyio.Event()

    async def handler(message: InboundMessage) -> None:
        if message.peer_id == "slow":
            await gate.wait()
        seen.append((message.peer_id, message.content))
        return None

    async with fast_runtime(handler) as rt:
        await rt.add_channel("a", MEM)
        channel = mem(rt, "a")
        for i in range(5):
            await channel.receive("slow", f"s{i}", message_id=f"s{i}")
            await channel.receive("fast", f"f{i}", message_id=f"f{i}")
        # the fast conversation is not held up by the slow one
        await eventually(lambda: sum(p == "fast" for p, _ in seen) == 5)
        assert not any(p == "slow" for p, _ in seen)
        gate.set()
        await eventually(lambda: len(seen) == 10)
        assert [c for p, c in seen if p == "slow"] == [f"s{i}" for i in range(5)]
        assert [c for p, c in seen if p == "fast"] == [f"f{i}" for i in range(5)]


async def test_failing_handler_is_retried_then_dead_lettered():
    calls: list[str] = []

    async def handler(message: InboundMessage) -> None:
        calls.append(message.message_id)
        if message.content == "poison" or calls.count(message.message_id) < 3:
            raise ValueError("handler broke with token=abcdefgh12345678")
        return None

    async with fast_runtime(handler, handler_attempts=4) as rt:
        await rt.add_channel("a", MEM)
        channel = mem(rt, "a")
        await channel.receive("u", "flaky", message_id="m1")
        await channel.receive("v", "poison", message_id="m2")
        await eventually(lambda: calls.count("m1") == 3 and calls.count("m2") == 4)

        async def dead_known() -> bool:
            return len(await rt.store.inbox.list_dead()) == 1

        await eventually(dead_known)
        [dead] = await rt.store.inbox.list_dead()
        assert dead.message.message_id == "m2"
        assert "abcdefgh12345678" not in (dead.last_error or "")
        assert await rt.store.inbox.pending_count() == 0


async def test_outbox_retries_with_the_same_request_id_and_honours_retry_after():
    attempts: list[str] = []

    async with fast_runtime() as rt:
        await rt.add_channel("a", MEM)
        channel = mem(rt, "a")

        async def flaky(request: SendRequest) -> SendResult:
            attempts.append(request.request_id)
            if len(attempts) == 1:
                raise RpcError(IN_PROGRESS, "busy", {"retryAfterSeconds": 0})
            if len(attempts) == 2:
                raise ConnectionError("network down")
            return SendResult(duplicate=False, provider_message_id="p1")

        channel.on_send = flaky
        delivery_id = await rt.send(OutboundMessage(channel_id="a", peer_id="u", content="hello", message_id="x1"))
        request_id = "out_a:memory:dm:u:x1"
        done = await rt.wait_delivery(delivery_id, timeout=10)
        assert done.status == "sent" and done.provider_message_id == "p1" and done.request_id == request_id
        assert attempts == [request_id] * 3
        # -32010 waits without counting an attempt; the network error counts
        assert done.attempts == 2 and done.sent_at is not None and done.first_attempt_at is not None
        entry = await rt.store.outbox.get_by_request_id(request_id)
        assert (
            entry is not None
            and entry.status == "sent"
            and entry.result == {"duplicate": False, "providerMessageId": "p1"}
        )
        # sending the same message again is idempotent: nothing new is delivered, the same delivery answers
        assert (
            await rt.send(OutboundMessage(channel_id="a", peer_id="u", content="hello", message_id="x1")) == delivery_id
        )
        await anyio.sleep(0.1)
        assert len(attempts) == 3


async def test_outbox_dead_letters_after_the_last_attempt():
    async with fast_runtime(delivery_attempts=3) as rt:
        await rt.add_channel("a", MEM)
        channel = mem(rt, "a")

        async def broken(request: SendRequest) -> SendResult:
            raise ConnectionError("down")

        channel.on_send = broken
        await rt.send(OutboundMessage(channel_id="a", peer_id="u", content="x"))

        async def dead() -> bool:
            return len(await rt.store.outbox.list(state="dead")) == 1

        await eventually(dead)
        [entry] = await rt.store.outbox.list(state="dead")
        assert entry.attempts == 3 and "down" in (entry.last_error or "")


async def test_send_to_unknown_channel_is_refused():
    async with fast_runtime() as rt:
        with pytest.raises(ChannelError, match="unknown channel"):
            await rt.send(OutboundMessage(channel_id="nope", peer_id="u", content="x"))


# ---------------------------------------------------------------- ingest (bridge pipeline)


def event(connection_id: str, event_id: str = "e1", message_id: str = "m1", **kw: Any) -> BridgeEvent:
    fields: dict[str, Any] = dict(
        event_id=event_id,
        connection_id=connection_id,
        kind="echo",
        peer_id="p1",
        peer_type="dm",
        message_id=message_id,
        timestamp="2026-06-02T09:30:00Z",
        delivery_attempt=1,
        channel_id="",
        account_id="",
        message_type="text",
        content="hi",
        metadata={},
    )
    fields.update(kw)
    return BridgeEvent(**fields)


async def test_ingest_outcomes():
    handled: list[str] = []

    async def handler(message: InboundMessage) -> None:
        handled.append(message.message_id)
        return None

    async with fast_runtime(handler) as rt:
        conn = await rt.store.connections.create(kind="echo", plugin_id="echo", status="connected")
        await rt.add_channel(conn.channel_id, MEM)
        with pytest.raises(IngestError) as exc:
            await rt.ingest(event("conn_unknown"))
        assert exc.value.status == 404

        first = await rt.ingest(event(conn.connection_id))
        assert first.status == 200 and first.ack.accepted and not first.ack.duplicate
        again = await rt.ingest(event(conn.connection_id))
        assert again.status == 200 and again.ack.duplicate
        # a new event id for the same platform message: runtime dedupe answers duplicate
        other = await rt.ingest(event(conn.connection_id, event_id="e2"))
        assert other.ack.accepted and other.ack.duplicate
        # events of another plugin's connection are refused
        with pytest.raises(IngestError):
            await rt.ingest(event(conn.connection_id, event_id="e3", message_id="m3"), plugin_id="other")
        await eventually(lambda: handled == ["m1"])

        await rt.store.connections.update_status(conn.connection_id, "revoked")
        with pytest.raises(IngestError):
            await rt.ingest(event(conn.connection_id, event_id="e4", message_id="m4"))


async def test_ingest_in_progress_answers_409():
    async with fast_runtime() as rt:
        conn = await rt.store.connections.create(kind="echo", plugin_id="echo", status="connected")
        # a delivery of the same event that is still being processed elsewhere
        await rt.store.bridge_dedupe.begin(conn.connection_id, "e1", "m1")
        result = await rt.ingest(event(conn.connection_id))
        assert result.status == 409
        assert result.ack.retry_after_seconds == 5 and not result.ack.accepted


async def test_accepted_events_survive_a_restart_of_a_sqlite_runtime(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    blocked = anyio.Event()

    async def stuck(message: InboundMessage) -> None:
        blocked.set()
        await anyio.sleep_forever()

    rt = fast_runtime(stuck, url, home=tmp_path)
    async with rt:
        conn = await rt.store.connections.create(kind="echo", plugin_id="echo", status="connected")
        for i in range(3):
            await rt.ingest(event(conn.connection_id, event_id=f"e{i}", message_id=f"m{i}", peer_id=f"p{i}"))
        with anyio.fail_after(5):
            await blocked.wait()

    handled: list[str] = []

    async def handler(message: InboundMessage) -> None:
        handled.append(message.message_id)
        return None

    async with fast_runtime(handler, url, home=tmp_path):
        await eventually(lambda: sorted(handled) == ["m0", "m1", "m2"])


# ---------------------------------------------------------------- external sidecar channel


@asynccontextmanager
async def sidecar_stub(send: Callable[[Request], Awaitable[JSONResponse]]) -> AsyncIterator[int]:
    """A real HTTP server on 127.0.0.1 whose `POST /send` is `send`; yields its port."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(Starlette(routes=[Route("/send", send, methods=["POST"])]), port=port, log_level="warning")
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        await eventually(lambda: server.started)
        try:
            yield port
        finally:
            server.should_exit = True


async def test_http_channel_sends_to_sidecar_with_token_and_retries_409():
    received: list[tuple[str, dict[str, Any]]] = []

    async def send(request: Request) -> JSONResponse:
        body = await request.json()
        received.append((request.headers.get("authorization", ""), body))
        if len(received) == 1:
            return JSONResponse({"retryAfterSeconds": 0}, status_code=409)
        return JSONResponse({"providerMessageId": "side-1", "duplicate": False})

    async with sidecar_stub(send) as port:
        async with fast_runtime() as rt:
            config = ChannelConfig(
                kind="external_connector",
                config={"url": f"http://127.0.0.1:{port}", "connectorKind": "sidecar"},
                secrets={"token": "sidecar-token-123"},
            )
            await rt.add_channel("side", config)
            assert "sidecar-token-123" not in repr(rt.channel_configs["side"])
            delivery_id = await rt.send(OutboundMessage(channel_id="side", peer_id="u9", content="yo"))
            done = await rt.wait_delivery(delivery_id, timeout=15)
            assert done.status == "sent" and done.provider_message_id == "side-1"
            assert done.attempts == 1  # the 409 waited without counting an attempt
            request_id = done.request_id
    assert [auth for auth, _ in received] == ["Bearer sidecar-token-123"] * 2
    assert [body["requestId"] for _, body in received] == [request_id] * 2
    assert received[0][1]["target"]["peerId"] == "u9" and received[0][1]["kind"] == "sidecar"


def _refusal(status: int, rpc_code: int | None = None, **details: Any) -> JSONResponse:
    """A sidecar's SPEC 7.1 error answer; ours names the plugin's refusal in details.rpcCode."""
    if rpc_code is not None:
        details["rpcCode"] = rpc_code
    return JSONResponse({"error": {"code": "x", "message": "the platform said no", "details": details}}, status)


SIDECAR_ANSWERS: dict[str, list[JSONResponse]] = {
    # a wrong or rotated token is an operator's to fix: retried, not dead at once
    "token": [JSONResponse({"error": {"code": "unauthorized", "message": "bad token", "details": {}}}, 401)],
    # the plugin's -32016 through a sidecar defers as it does from a local plugin
    "window": [_refusal(422, -32016)],
    "expired": [_refusal(422, -32017)],
    "too_large": [_refusal(413, -32003)],
    "refused": [_refusal(422, -32019)],
    "rate": [_refusal(429, -32015, retryAfterSeconds=0)],
    "plain_400": [JSONResponse({"detail": "nope"}, 400)],
}


async def test_http_channel_reads_the_sidecars_rpc_code_and_the_status():
    calls: dict[str, int] = {}

    async def send(request: Request) -> JSONResponse:
        peer = (await request.json())["target"]["peerId"]
        calls[peer] = calls.get(peer, 0) + 1
        script = SIDECAR_ANSWERS[peer]
        if calls[peer] <= len(script):
            return script[calls[peer] - 1]
        return JSONResponse({"providerMessageId": f"pm-{peer}", "duplicate": False})

    async with sidecar_stub(send) as port:
        async with fast_runtime(delivery_attempts=3) as rt:
            config = ChannelConfig(kind="external_connector", config={"url": f"http://127.0.0.1:{port}"})
            ids = {}
            for peer in SIDECAR_ANSWERS:  # a channel each: an expired session defers its whole channel
                await rt.add_channel(f"side_{peer}", config)
                ids[peer] = await rt.send(OutboundMessage(channel_id=f"side_{peer}", peer_id=peer, content=peer))
            for peer in ("token", "rate", "too_large", "refused", "plain_400"):
                await rt.wait_delivery(ids[peer], timeout=15)
            await eventually(lambda: all(calls.get(p) for p in SIDECAR_ANSWERS))
            views = {p: await rt.delivery(i) for p, i in ids.items()}
    got = {p: (v.status, v.reason) for p, v in views.items() if v is not None}
    assert got == {
        "token": ("sent", None),
        "window": ("deferred", "reply_window"),
        "expired": ("deferred", "not_connected"),
        "too_large": ("dead", "undeliverable"),
        "refused": ("dead", "refused"),
        "rate": ("sent", None),
        "plain_400": ("dead", "undeliverable"),
    }
    assert views["token"].attempts == 2 and views["rate"].attempts == 1  # type: ignore[union-attr]
    assert views["refused"].last_error == "the platform said no"  # type: ignore[union-attr]
    assert calls["too_large"] == calls["refused"] == calls["plain_400"] == 1


# ---------------------------------------------------------------- one transaction per pipeline step


async def test_a_reply_to_a_missing_channel_dead_letters_once_and_sends_nothing():
    attempts: list[int] = []

    async def handler(message: InboundMessage) -> list[OutboundMessage]:
        attempts.append(1)
        return [message.reply("first"), OutboundMessage(channel_id="b", peer_id="u", content="second")]

    async with fast_runtime(handler, handler_attempts=1000) as rt:
        await rt.add_channel("a", MEM)
        channel = mem(rt, "a")
        await channel.receive("u1", "hi", message_id="m1")

        async def dead() -> list:
            return await rt.store.inbox.list_dead()

        [entry] = await eventually(dead)
        assert "unknown channel 'b'" in (entry.last_error or "")
        # running the handler again cannot create the channel: it ran once
        assert attempts == [1]
        # all or nothing: the reply to the existing channel was not sent either
        await anyio.sleep(0.1)
        assert channel.sent == [] and await rt.store.outbox.pending_count() == 0


@pytest.mark.parametrize("store", ["memory://", "sqlite"])
async def test_ingest_failure_is_recorded_and_the_next_delivery_processes_it(store: str, tmp_path: Path):
    handled: list[str] = []

    async def handler(message: InboundMessage) -> None:
        handled.append(message.message_id)
        return None

    url = store if store == "memory://" else f"sqlite:///{tmp_path / 'state.db'}"
    async with fast_runtime(handler, url, home=tmp_path) as rt:
        conn = await rt.store.connections.create(kind="echo", plugin_id="echo", status="connected")
        with pytest.raises(TypeError):  # the inbox cannot store this message
            await rt.ingest(event(conn.connection_id, metadata={"handle": object()}))
        record = await rt.store.bridge_dedupe.get(f"{conn.connection_id}:e1")
        assert record is not None and record.status == "failed" and record.delivery_attempts == 1
        assert record.last_error
        assert await rt.store.inbox.pending_count() == 0

        again = await rt.ingest(event(conn.connection_id))
        assert again.status == 200 and again.ack.accepted and not again.ack.duplicate
        record = await rt.store.bridge_dedupe.get(f"{conn.connection_id}:e1")
        assert record is not None and (record.status, record.delivery_attempts, record.last_error) == (
            "completed",
            2,
            None,
        )
        await eventually(lambda: handled == ["m1"])


async def test_send_from_the_handler_and_returned_replies_both_work():
    async def handler(message: InboundMessage) -> OutboundMessage:
        await rt.send(message.reply("sent directly", message_id="d1"))
        return message.reply("returned", message_id="r1")

    rt = fast_runtime(handler)
    async with rt:
        await rt.add_channel("a", MEM)
        channel = mem(rt, "a")
        await channel.receive("u1", "hi", message_id="m1")
        await eventually(lambda: len(channel.sent) == 2)
        assert [s.content for s in channel.sent] == ["sent directly", "returned"]
        assert [s.request_id for s in channel.sent] == ["out_a:memory:dm:u1:d1", "out_a:memory:dm:u1:r1"]


async def test_a_handler_over_its_time_limit_is_retried_not_run_twice_at_once():
    running: list[str] = []
    concurrent: list[int] = []

    async def handler(message: InboundMessage) -> None:
        running.append(message.message_id)
        concurrent.append(len(running))
        try:
            if len(concurrent) == 1:
                await anyio.sleep(30)  # hangs on its first attempt
        finally:
            running.remove(message.message_id)
        return None

    async with fast_runtime(handler, handler_timeout=0.2, lease=0.3) as rt:
        await rt.add_channel("a", MEM)
        await mem(rt, "a").receive("u", "x", message_id="m1")
        await eventually(lambda: len(concurrent) == 2)
        assert concurrent == [1, 1]  # the first run was stopped before the lease handed the entry out again

        async def done() -> bool:
            return await rt.store.inbox.pending_count() == 0

        await eventually(done)


@pytest.mark.parametrize("retry_after", [float("inf"), float("nan"), -5.0, 1e308])
async def test_a_peer_chosen_retry_delay_is_bounded(retry_after: float):
    from channel_runtime.channels import DeliveryError

    async with fast_runtime() as rt:
        await rt.add_channel("a", MEM)
        channel = mem(rt, "a")
        calls: list[int] = []

        async def once_busy(request: SendRequest) -> SendResult:
            calls.append(1)
            if len(calls) == 1:
                raise DeliveryError("busy", retry_after=retry_after)
            return SendResult(duplicate=False, provider_message_id="ok")

        channel.on_send = once_busy
        await rt.send(OutboundMessage(channel_id="a", peer_id="u", content="x"))
        await eventually(lambda: len(channel.sent) == 1)  # retried within the cap, not never
        assert len(calls) == 2


async def test_removing_a_channel_that_failed_to_start_clears_it():
    async with fast_runtime() as rt:
        with pytest.raises(ChannelError):
            await rt.add_channel("x", ChannelConfig(kind="memory", config={"failStart": True}))
        assert rt.states["x"]["state"] == "failed"
        await rt.remove_channel("x")
        assert rt.states["x"]["state"] == "removed"
