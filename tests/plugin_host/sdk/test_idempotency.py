"""SPEC 3.6 send idempotency in host-kept state: the store's rules, its bounds, its wiring, and a model check.

Every store here talks to real host-kept state: the SDK's `HostState` over JSON-RPC
to the harness, which keeps the values in memory with the host's limits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin_host.clock import FakeClock
from plugin_host.errors import IN_PROGRESS, RpcError
from plugin_host.protocol import STATE_VALUE_MAX_BYTES, SendRequest, SendResult, Target
from plugin_host.sdk import Context, Plugin
from plugin_host.sdk.idempotency import KEY_PREFIX, RETENTION, SendIdempotencyStore
from plugin_host.sdk.testing import MemoryState, PluginHarness

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def over_rpc(
    clock: FakeClock, state: MemoryState | None = None, **options: Any
) -> AsyncIterator[tuple[SendIdempotencyStore, PluginHarness]]:
    """A store in one plugin process, its records in the (harness) host's state."""
    plugin = Plugin(name="t", version="1.0.0", clock=clock)
    async with PluginHarness.in_process(plugin, state=state) as h:
        yield SendIdempotencyStore(plugin.state, clock=clock, **options), h


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


async def in_progress(store: SendIdempotencyStore, request_id: str = "r1") -> RpcError:
    with pytest.raises(RpcError) as exc:
        await store.begin("c1", request_id)
    return exc.value


async def test_first_delivery_is_new(clock: FakeClock) -> None:
    async with over_rpc(clock) as (store, h):
        begin = await store.begin("c1", "r1")
        assert (begin.outcome, begin.send, begin.duplicate, begin.attempts) == ("new", True, False, 1)
        assert h.state.keys("c1") == [store.key("r1")] and store.key("r1").startswith(KEY_PREFIX)
        assert h.state.value(store.key("r1"), connection_id="c1")["r1"]["status"] == "processing"


async def test_completed_duplicate_returns_the_original_result(clock: FakeClock) -> None:
    async with over_rpc(clock) as (store, _):
        await store.begin("c1", "r1")
        await store.complete("c1", "r1", {"providerMessageId": "pm_1", "duplicate": False})
        clock.advance(1800)
        begin = await store.begin("c1", "r1")
        assert begin.duplicate and not begin.send
        assert begin.result == {"providerMessageId": "pm_1", "duplicate": False}


async def test_key_is_connection_plus_request(clock: FakeClock) -> None:
    async with over_rpc(clock) as (store, _):
        await store.begin("c1", "r1")
        assert (await store.begin("c2", "r1")).outcome == "new"
        assert (await store.begin("c1", "r2")).outcome == "new"


async def test_processing_under_60_seconds_is_in_progress(clock: FakeClock) -> None:
    async with over_rpc(clock) as (store, _):
        await store.begin("c1", "r1")
        err = await in_progress(store)
        assert err.code == IN_PROGRESS == -32010
        assert err.data == {"retryAfterSeconds": 5}
        clock.advance(59.999)
        assert (await in_progress(store)).code == IN_PROGRESS


async def test_processing_60_seconds_or_more_is_stale_and_sent_again(clock: FakeClock) -> None:
    async with over_rpc(clock) as (store, _):
        await store.begin("c1", "r1")
        clock.advance(60)
        begin = await store.begin("c1", "r1")
        assert (begin.outcome, begin.send, begin.attempts) == ("stale", True, 2)
        clock.advance(30)  # the stale re-send is itself in progress now
        assert (await in_progress(store)).code == IN_PROGRESS


async def test_failed_attempt_is_sent_again(clock: FakeClock) -> None:
    async with over_rpc(clock) as (store, _):
        await store.begin("c1", "r1")
        await store.fail("c1", "r1")
        begin = await store.begin("c1", "r1")
        assert (begin.outcome, begin.send, begin.attempts) == ("retry", True, 2)
        await store.complete("c1", "r1", {"duplicate": False})
        await store.fail("c1", "r1")  # a late failure cannot undo a completion
        assert (await store.begin("c1", "r1")).duplicate


async def test_records_survive_a_plugin_restart(clock: FakeClock) -> None:
    state = MemoryState()
    async with over_rpc(clock, state) as (first, _):
        await first.begin("c1", "done")
        await first.complete("c1", "done", {"providerMessageId": "pm_9", "duplicate": False})
        await first.begin("c1", "busy")
    async with over_rpc(clock, state) as (second, _):  # a new process: nothing of the first in memory
        assert (await second.begin("c1", "done")).result == {"providerMessageId": "pm_9", "duplicate": False}
        assert (await in_progress(second, "busy")).code == IN_PROGRESS


async def test_completed_records_expire_after_the_retention(clock: FakeClock) -> None:
    assert RETENTION == 3600.0
    async with over_rpc(clock, slots=1) as (store, h):
        await store.begin("c1", "old")
        await store.complete("c1", "old", {"duplicate": False})
        clock.advance(RETENTION - 1)
        await store.begin("c1", "recent")
        await store.complete("c1", "recent", {"duplicate": False})
        assert (await store.begin("c1", "old")).duplicate  # still within the hour
        clock.advance(2)
        assert await store.get("c1", "old") is None
        assert (await store.begin("c1", "recent")).duplicate
        assert (await store.begin("c1", "old")).outcome == "new"  # gone: a resend would go out
        clock.advance(RETENTION + 1)
        await store.begin("c1", "later")  # writing a key drops its expired records
        assert list(h.state.value(store.key("later"), connection_id="c1")) == ["later"]


async def test_records_never_use_more_than_their_keys(clock: FakeClock) -> None:
    async with over_rpc(clock, slots=8) as (store, h):
        for n in range(300):
            await store.begin("c1", f"out_{n}")
            await store.complete("c1", f"out_{n}", {"providerMessageId": f"pm_{n}", "duplicate": False})
        keys = h.state.keys("c1")
        assert 1 < len(keys) <= 8 and all(k.startswith(KEY_PREFIX) for k in keys)
        assert all([(await store.begin("c1", f"out_{n}")).duplicate for n in range(0, 300, 37)])


async def test_a_full_key_drops_its_oldest_finished_records_never_the_new_one(clock: FakeClock) -> None:
    big = {"providerMessageId": "x" * 3000, "duplicate": False}
    async with over_rpc(clock, slots=1) as (store, h):
        for n in range(40):  # 40 x 3 KB: over the 64 KiB of one value
            await store.begin("c1", f"r{n}")
            await store.complete("c1", f"r{n}", big)
            clock.advance(1)
        stored = h.state.value(store.key("r0"), connection_id="c1")
        assert len(msgspec.json.encode(stored)) <= STATE_VALUE_MAX_BYTES
        assert "r39" in stored and "r0" not in stored
        assert (await store.begin("c1", "r39")).result == big
        # one result too large for a value on its own: stored without it, still a duplicate
        await store.begin("c1", "huge")
        await store.complete("c1", "huge", {"providerMessageId": "y" * 70_000, "duplicate": False})
        assert (await store.begin("c1", "huge")).duplicate


async def test_concurrent_duplicates_in_one_process_do_not_both_send(clock: FakeClock) -> None:
    async with over_rpc(clock) as (store, _):
        outcomes: list[str] = []

        async def deliver() -> None:
            try:
                outcomes.append((await store.begin("c1", "r1")).outcome)
            except RpcError as exc:
                outcomes.append(str(exc.code))

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(deliver)
        assert sorted(outcomes) == ["-32010"] * 7 + ["new"]


# ---------------------------------------------------------------- wired into message.send


def request(request_id: str = "r1") -> SendRequest:
    return SendRequest(
        request_id=request_id,
        connection_id="c1",
        channel_id="ch",
        kind="test",
        target=Target(peer_id="p", peer_type="dm"),
        content="hi",
        content_type="text",
        metadata={},
    )


def sending_plugin(clock: FakeClock) -> tuple[Plugin, list[str], dict[str, Any]]:
    plugin = Plugin(name="t", version="1.0.0", clock=clock)
    sent: list[str] = []
    control: dict[str, Any] = {"fail": False, "gate": None}

    @plugin.method("message.send", idempotent=True)
    async def send(ctx: Context, params: SendRequest) -> SendResult:
        if control["gate"] is not None:
            await control["gate"].wait()
        if control["fail"]:
            raise RpcError(-32012, "platform said no")
        sent.append(params.request_id)
        return SendResult(duplicate=False, provider_message_id=f"pm_{len(sent)}")

    return plugin, sent, control


async def test_idempotent_send_handler_sends_once(clock: FakeClock) -> None:
    plugin, sent, _ = sending_plugin(clock)
    async with PluginHarness.in_process(plugin) as h:
        first = await h.call("message.send", request(), result_type=SendResult)
        again = await h.call("message.send", request(), result_type=SendResult)
        assert first == SendResult(duplicate=False, provider_message_id="pm_1")
        assert again == SendResult(duplicate=True, provider_message_id="pm_1")
        assert sent == ["r1"]
        assert [m for m, _ in h.calls] == ["state.get", "state.put", "state.get", "state.put", "state.get"]


async def test_idempotent_send_while_in_progress_and_after_failure(clock: FakeClock) -> None:
    plugin, sent, control = sending_plugin(clock)
    async with PluginHarness.in_process(plugin) as h:
        control["gate"] = gate = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(h.call, "message.send", request())
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(RpcError) as exc:
                await h.call("message.send", request())
            assert (exc.value.code, exc.value.data) == (IN_PROGRESS, {"retryAfterSeconds": 5})
            gate.set()
        control["gate"] = None
        control["fail"] = True
        with pytest.raises(RpcError):
            await h.call("message.send", request("r2"))
        control["fail"] = False
        result = await h.call("message.send", request("r2"))
        assert result["duplicate"] is False
        assert sent == ["r1", "r2"]


async def test_a_send_the_host_gave_up_on_stays_in_progress_until_stale(clock: FakeClock) -> None:
    """Cancelled (the host's timeout): the platform may have the message, so no immediate resend."""
    plugin, sent, control = sending_plugin(clock)
    async with PluginHarness.in_process(plugin) as h:
        control["gate"] = anyio.Event()  # never set: the send hangs until the host gives up
        with pytest.raises(RpcError):
            await h.call("message.send", request(), timeout=0.05)
        control["gate"] = None
        await anyio.sleep(0.1)  # the plugin handles $/cancelRequest asynchronously
        with pytest.raises(RpcError) as busy:
            await h.call("message.send", request())
        assert busy.value.code == IN_PROGRESS and busy.value.data == {"retryAfterSeconds": 5}
        clock.advance(60)  # SPEC 3.6: processing for 60 s or more is stale and is sent again
        result = await h.call("message.send", request())
        assert result["duplicate"] is False and sent == ["r1"]


async def test_a_send_whose_handler_failed_is_sent_again_at_once(clock: FakeClock) -> None:
    plugin = Plugin(name="t", version="1.0.0", clock=clock)
    sent: list[str] = []

    @plugin.method("message.send", idempotent=True)
    async def send(ctx: Context, params: SendRequest) -> Any:
        sent.append(params.request_id)
        if len(sent) == 1:
            raise RpcError(-32016, "reply window closed")  # refused: nothing went out
        return {"providerMessageId": "m2"}

    async with PluginHarness.in_process(plugin) as h:
        with pytest.raises(RpcError):
            await h.call("message.send", request())
        result = await h.call("message.send", request())
        assert result == {"duplicate": False, "providerMessageId": "m2"} and sent == ["r1", "r1"]


def test_idempotent_needs_send_request_params() -> None:
    with pytest.raises(ValueError):
        Plugin().method("custom.send", idempotent=True)


async def test_a_delivered_send_with_an_unusable_result_is_still_completed(clock: FakeClock) -> None:
    plugin = Plugin(name="t", version="1.0.0", clock=clock)
    sent: list[str] = []

    @plugin.method("message.send", idempotent=True)
    async def send(ctx: Context, params: SendRequest) -> Any:
        sent.append(params.request_id)
        return ["not", "a", "send", "result"]

    async with PluginHarness.in_process(plugin) as h:
        first = await h.call("message.send", request())
        again = await h.call("message.send", request())
        assert first == {"duplicate": False, "providerMessageId": None}
        assert again == {"duplicate": True, "providerMessageId": None}
        assert sent == ["r1"]


async def test_a_delivered_send_is_completed_when_storing_its_result_fails(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin, sent, _ = sending_plugin(clock)
    async with PluginHarness.in_process(plugin) as h:
        store = plugin.send_store
        complete = store.complete
        calls: list[dict[str, Any]] = []

        async def flaky_complete(connection_id: str, request_id: str, result: dict[str, Any]) -> None:
            calls.append(result)
            if len(calls) == 1:
                raise RpcError(-32002, "host hiccup")
            await complete(connection_id, request_id, result)

        monkeypatch.setattr(store, "complete", flaky_complete)
        first = await h.call("message.send", request(), result_type=SendResult)
        again = await h.call("message.send", request())
        assert first == SendResult(duplicate=False, provider_message_id="pm_1")
        assert again["duplicate"] is True
        assert sent == ["r1"] and calls[1] == {}


async def test_a_send_the_host_cannot_record_is_not_sent(clock: FakeClock) -> None:
    plugin, sent, _ = sending_plugin(clock)
    async with PluginHarness.in_process(plugin) as h:

        def refuse(params: Any) -> Any:
            raise RpcError(-32002, "store down")

        h.state.put = refuse  # type: ignore[method-assign]
        with pytest.raises(RpcError) as exc:
            await h.call("message.send", request())
        assert exc.value.code == -32002 and sent == []


# ---------------------------------------------------------------- model check

KEYS = [("c1", "r1"), ("c1", "r2"), ("c2", "r1"), ("c2", "r3")]
operations = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["begin", "complete", "fail"]), st.sampled_from(KEYS)),
        st.tuples(st.just("advance"), st.sampled_from([1, 30, 59, 60, 61, 1800, RETENTION, RETENTION + 1])),
        st.tuples(st.just("restart"), st.none()),
    ),
    max_size=30,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(ops=operations)
async def test_send_store_matches_the_model_of_spec_3_6(ops: list[tuple[str, Any]]) -> None:
    """The store against a plain-Python model: a record exists while updated within the retention."""
    clock = FakeClock(1_700_000_000.0)
    state = MemoryState()
    model: dict[tuple[str, str], dict[str, Any]] = {}
    counter = 0

    def alive(key: tuple[str, str]) -> dict[str, Any] | None:
        record = model.get(key)
        return record if record is not None and clock.time() - record["updated"] <= RETENTION else None

    stack = AsyncExitStack()
    store, _ = await stack.enter_async_context(over_rpc(clock, state, slots=2))  # records share two keys
    try:
        for op, arg in ops:
            now = clock.time()
            if op == "advance":
                clock.advance(arg)
            elif op == "restart":  # a new plugin process: only the host's state remains
                await stack.aclose()
                stack = AsyncExitStack()
                store, _ = await stack.enter_async_context(over_rpc(clock, state, slots=2))
            elif op == "begin":
                record = alive(arg)
                if record is None:
                    expected = "new"
                elif record["status"] == "completed":
                    expected = "duplicate"
                elif record["status"] == "processing" and now - record["updated"] < 60:
                    expected = "in_progress"
                else:
                    expected = "stale" if record["status"] == "processing" else "retry"
                try:
                    begin = await store.begin(*arg)
                    outcome = begin.outcome
                except RpcError as exc:
                    assert exc.code == IN_PROGRESS and exc.data == {"retryAfterSeconds": 5}
                    outcome = "in_progress"
                assert outcome == expected, (arg, record, now)
                if outcome == "duplicate":
                    assert record is not None and begin.result == record["result"]
                elif outcome != "in_progress":
                    attempts = 1 if record is None else record["attempts"] + 1
                    assert begin.attempts == attempts
                    model[arg] = {"status": "processing", "updated": now, "result": None, "attempts": attempts}
            elif op == "complete":
                counter += 1
                result = {"providerMessageId": f"pm_{counter}", "duplicate": False}
                await store.complete(*arg, result)
                record = alive(arg)
                attempts = record["attempts"] if record else 1
                model[arg] = {"status": "completed", "updated": now, "result": result, "attempts": attempts}
            else:
                await store.fail(*arg)
                record = alive(arg)
                if record is not None and record["status"] == "processing":
                    record.update(status="failed", updated=now)
            for key in KEYS:  # the invariant: what is stored is what the model says
                stored = await store.get(*key)
                expected_record = alive(key)
                assert (stored is None) == (expected_record is None), key
                if stored is not None and expected_record is not None:
                    assert stored.status == expected_record["status"] and stored.attempts == expected_record["attempts"]
    finally:
        await stack.aclose()
