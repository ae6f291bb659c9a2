"""The sidecar's forwarder (SPEC 11): a real SQLite forward queue to a real HTTP bridge on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from channel_runtime.crypto import CredentialCipher
from channel_runtime.forwarder import Forwarder
from channel_runtime.store import Store, open_store
from plugin_host.protocol import BridgeEvent
from tests.support import eventually, free_port
from tests.support.sidecar import APP_BRIDGE_TOKEN, RecordingBridge

pytestmark = pytest.mark.anyio


def event(n: int, peer: str = "p1", connection_id: str = "conn_a") -> BridgeEvent:
    return BridgeEvent(
        event_id=f"e{n}",
        connection_id=connection_id,
        kind="echo",
        peer_id=peer,
        peer_type="dm",
        message_id=f"m{n}",
        timestamp="2026-06-02T09:30:00Z",
        delivery_attempt=1,
        channel_id=connection_id,
        account_id="",
        message_type="text",
        content=f"text {n}",
        metadata={},
    )


@asynccontextmanager
async def forwarding(
    path: Path, base_url: str, store: Store | None = None, **options: Any
) -> AsyncIterator[tuple[Store, Forwarder]]:
    own = store is None
    if store is None:
        store = await open_store(f"sqlite:///{path}", cipher=CredentialCipher.ephemeral())
    options = {"retry_base": 0.05, "retry_cap": 0.2, "idle_poll": 0.05, **options}
    forwarder = Forwarder(store, bridge_base_url=base_url, bridge_token=APP_BRIDGE_TOKEN, **options)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(forwarder.run)
            try:
                yield store, forwarder
            finally:
                tg.cancel_scope.cancel()
    finally:
        if own:
            await store.aclose()


async def test_events_arrive_in_order_per_conversation_with_retries_keeping_the_event_id(tmp_path: Path) -> None:
    failed_once: set[str] = set()

    async def answer(body: dict, n: int) -> Response | None:
        if body["eventId"] not in failed_once:  # every event fails its first try
            failed_once.add(body["eventId"])
            return JSONResponse({"error": {"code": "boom", "message": "x", "details": {}}}, status_code=500)
        return None

    async with RecordingBridge(answer=answer).serving() as bridge:
        async with forwarding(tmp_path / "q.db", bridge.base_url) as (store, forwarder):
            for n in range(10):
                assert await store.forward.enqueue(event(n, peer=f"p{n % 2}"))
            forwarder.wake()

            async def drained() -> bool:
                return await store.forward.pending_count() == 0

            await eventually(drained)
            stats = await forwarder.refresh()
    tries = bridge.events()
    assert len(tries) == 20
    for peer in ("p0", "p1"):
        mine = [t for t in tries if t["peerId"] == peer]
        # one at a time per conversation: each event's two tries back to back, in enqueue order
        expected = [f"e{n}" for n in range(10) if f"p{n % 2}" == peer]
        assert [t["eventId"] for t in mine] == [e for e in expected for _ in (1, 2)]
        assert [t["deliveryAttempt"] for t in mine] == [1, 2] * 5
    assert stats.delivered == 10 and stats.failures == 10 and stats.backlog == 0 and not stats.failing
    assert stats.last_error == "the application answered 500 (boom)"


async def test_409_waits_for_retry_after_seconds_and_the_same_event_comes_again(tmp_path: Path) -> None:
    async def answer(body: dict, n: int) -> Response | None:
        if n == 1:
            return JSONResponse({"accepted": False, "duplicate": True, "pending": True, "retryAfterSeconds": 0})
        return None

    async def conflict(body: dict, n: int) -> Response | None:
        response = await answer(body, n)
        if response is not None:
            response.status_code = 409
        return response

    async with RecordingBridge(answer=conflict).serving() as bridge:
        async with forwarding(tmp_path / "q.db", bridge.base_url) as (store, forwarder):
            await store.forward.enqueue(event(1))
            forwarder.wake()
            await eventually(lambda: len(bridge.received) == 2)
            stats = await forwarder.refresh()
    first, second = bridge.events()
    assert first["eventId"] == second["eventId"] == "e1"
    assert (first["deliveryAttempt"], second["deliveryAttempt"]) == (1, 2)
    assert {k: v for k, v in first.items() if k != "deliveryAttempt"} == {
        k: v for k, v in second.items() if k != "deliveryAttempt"
    }
    assert stats.failures == 0  # a 409 is the application asking to wait, not a failure


async def test_nothing_is_dropped_while_the_application_is_down(tmp_path: Path) -> None:
    port = free_port()
    async with forwarding(tmp_path / "q.db", f"http://127.0.0.1:{port}") as (store, forwarder):
        for n in range(5):
            await store.forward.enqueue(event(n, peer=f"p{n}"))
        forwarder.wake()

        async def failing() -> bool:
            return (await forwarder.refresh()).failing

        await eventually(failing)
        stats = await forwarder.refresh()
        assert stats.backlog == 5 and "unreachable" in (stats.last_error or "")
        async with RecordingBridge(port=port).serving() as bridge:  # the application comes back

            async def drained() -> bool:
                return await store.forward.pending_count() == 0

            await eventually(drained)
    assert sorted(e["eventId"] for e in bridge.events()) == [f"e{n}" for n in range(5)]
    assert all(e["deliveryAttempt"] >= 2 for e in bridge.events())


async def test_an_event_the_application_refuses_for_good_is_dead_lettered_and_its_conversation_moves_on(
    tmp_path: Path,
) -> None:
    async def answer(body: dict, n: int) -> Response | None:
        if body["eventId"] == "e1":
            return JSONResponse({"error": {"code": "invalid_event", "message": "no", "details": {}}}, status_code=422)
        return None

    async with RecordingBridge(answer=answer).serving() as bridge:
        async with forwarding(tmp_path / "q.db", bridge.base_url, refused_attempts=3) as (store, forwarder):
            await store.forward.enqueue(event(1))
            await store.forward.enqueue(event(2))
            forwarder.wake()
            await eventually(lambda: any(e["eventId"] == "e2" for e in bridge.events()))

            async def drained() -> bool:  # e2 answered, and its delivery recorded
                return (await forwarder.refresh()).backlog == 0

            await eventually(drained)
            [dead] = await store.forward.list_dead()
            stats = await forwarder.refresh()
    assert [e["eventId"] for e in bridge.events()] == ["e1", "e1", "e1", "e2"]
    assert dead.event.event_id == "e1" and dead.attempts == 3 and "422 (invalid_event)" in (dead.last_error or "")
    assert stats.dead == 1 and stats.backlog == 0


async def test_401_is_retried_until_the_token_is_fixed(tmp_path: Path) -> None:
    async def answer(body: dict, n: int) -> Response | None:
        return (
            JSONResponse({"error": {"code": "unauthorized", "message": "", "details": {}}}, status_code=401)
            if (n <= 6)
            else None
        )

    async with RecordingBridge(answer=answer).serving() as bridge:
        async with forwarding(tmp_path / "q.db", bridge.base_url, refused_attempts=2) as (store, forwarder):
            await store.forward.enqueue(event(1))
            forwarder.wake()
            await eventually(lambda: len(bridge.received) == 7)

            async def drained() -> bool:
                return await store.forward.pending_count() == 0

            await eventually(drained)
            assert await store.forward.list_dead() == []


async def test_a_claim_left_by_a_dead_forwarder_is_delivered_again_with_the_next_attempt(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    store = await open_store(f"sqlite:///{path}", cipher=CredentialCipher.ephemeral())
    await store.forward.enqueue(event(1))
    [claimed] = await store.forward.claim_ready(1, lease=60)  # a forwarder took it, then died
    assert claimed.attempts == 1
    await store.aclose()
    store = await open_store(f"sqlite:///{path}", cipher=CredentialCipher.ephemeral())
    try:
        assert await store.forward.release_claims() == 1  # what Sidecar does at its start
        async with RecordingBridge().serving() as bridge:
            async with forwarding(path, bridge.base_url, store=store) as (_, forwarder):
                forwarder.wake()
                await eventually(lambda: bridge.received)
    finally:
        await store.aclose()
    [delivered] = bridge.events()
    assert delivered["eventId"] == "e1" and delivered["deliveryAttempt"] == 2


async def test_every_event_carries_the_bridge_token(tmp_path: Path) -> None:
    async with RecordingBridge().serving() as bridge:
        async with forwarding(tmp_path / "q.db", bridge.base_url, concurrency=4) as (store, forwarder):
            for n in range(40):
                assert await store.forward.enqueue(event(n, peer=f"p{n % 8}"))
            forwarder.wake()

            async def drained() -> bool:
                return (await forwarder.refresh()).delivered == 40

            await eventually(drained)
    assert sorted(e["eventId"] for e in bridge.events()) == sorted(f"e{n}" for n in range(40))
    assert {auth for auth, _ in bridge.received} == {f"Bearer {APP_BRIDGE_TOKEN}"}


async def test_an_injected_transport_is_used_through_httpx(tmp_path: Path) -> None:
    seen: list[tuple[str, dict]] = []

    async def endpoint(request: Request) -> Response:
        seen.append((request.headers.get("authorization", ""), await request.json()))
        return JSONResponse({"accepted": True, "duplicate": False, "pending": True})

    app = Starlette(routes=[Route("/api/channel-connector-bridge/events", endpoint, methods=["POST"])])
    transport = httpx.ASGITransport(app=app)
    async with forwarding(tmp_path / "q.db", "http://app.invalid", transport=transport) as (store, forwarder):
        await store.forward.enqueue(event(1))
        forwarder.wake()

        async def drained() -> bool:
            return (await forwarder.refresh()).delivered == 1

        await eventually(drained)
    assert [(auth, body["eventId"]) for auth, body in seen] == [(f"Bearer {APP_BRIDGE_TOKEN}", "e1")]


async def test_a_failed_post_among_concurrent_deliveries_is_retried_in_its_place_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    failed: set[str] = set()

    async def answer(body: dict, n: int) -> Response | None:
        if body["eventId"] in ("e9", "e20") and body["eventId"] not in failed:  # one try of a batch fails
            failed.add(body["eventId"])
            return JSONResponse({"error": {"code": "boom", "message": "x", "details": {}}}, status_code=503)
        return None

    async with RecordingBridge(answer=answer).serving() as bridge:
        async with forwarding(tmp_path / "q.db", bridge.base_url, concurrency=8) as (store, forwarder):
            for n in range(48):
                assert await store.forward.enqueue(event(n, peer=f"p{n % 6}"))
            forwarder.wake()

            async def drained() -> bool:
                return (await forwarder.refresh()).delivered == 48

            await eventually(drained)
            assert await store.forward.pending_count() == 0
    tries = bridge.events()
    assert len(tries) == 50 and sorted({t["eventId"] for t in tries}) == sorted(f"e{n}" for n in range(48))
    for p in range(6):
        mine = [(t["eventId"], t["deliveryAttempt"]) for t in tries if t["peerId"] == f"p{p}"]
        expected = [f"e{n}" for n in range(p, 48, 6)]
        # one at a time per conversation: the failed event again (the next attempt) before its successors
        assert [e for e, _ in mine] == [e for e in expected for _ in range(2 if e in failed else 1)]
        assert [a for e, a in mine if e in failed] == [1, 2] * len(failed & set(expected))
