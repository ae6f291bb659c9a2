"""SPEC 3.6 send idempotency: the store's rules, its wiring into message.send, and a model check."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from plugin_host.clock import FakeClock
from plugin_host.errors import IN_PROGRESS, RpcError
from plugin_host.protocol import SendRequest, SendResult, Target
from plugin_host.sdk import Context, Plugin
from plugin_host.sdk.idempotency import RETENTION, SendIdempotencyStore
from plugin_host.sdk.testing import PluginHarness


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> SendIdempotencyStore:
    s = SendIdempotencyStore(str(tmp_path / "send.db"), clock=clock)
    yield s
    s.close()


def in_progress(store: SendIdempotencyStore, request_id: str = "r1") -> RpcError:
    with pytest.raises(RpcError) as exc:
        store.begin("c1", request_id)
    return exc.value


def test_first_delivery_is_new(store: SendIdempotencyStore) -> None:
    begin = store.begin("c1", "r1")
    assert (begin.outcome, begin.send, begin.duplicate, begin.attempts) == ("new", True, False, 1)


def test_completed_duplicate_returns_the_original_result(store: SendIdempotencyStore, clock: FakeClock) -> None:
    store.begin("c1", "r1")
    store.complete("c1", "r1", {"providerMessageId": "pm_1", "duplicate": False})
    clock.advance(3600)
    begin = store.begin("c1", "r1")
    assert begin.duplicate and not begin.send
    assert begin.result == {"providerMessageId": "pm_1", "duplicate": False}


def test_key_is_connection_plus_request(store: SendIdempotencyStore) -> None:
    store.begin("c1", "r1")
    assert store.begin("c2", "r1").outcome == "new"
    assert store.begin("c1", "r2").outcome == "new"


def test_processing_under_60_seconds_is_in_progress(store: SendIdempotencyStore, clock: FakeClock) -> None:
    store.begin("c1", "r1")
    err = in_progress(store)
    assert err.code == IN_PROGRESS == -32010
    assert err.data == {"retryAfterSeconds": 5}
    clock.advance(59.999)
    assert in_progress(store).code == IN_PROGRESS


def test_processing_60_seconds_or_more_is_stale_and_sent_again(store: SendIdempotencyStore, clock: FakeClock) -> None:
    store.begin("c1", "r1")
    clock.advance(60)
    begin = store.begin("c1", "r1")
    assert (begin.outcome, begin.send, begin.attempts) == ("stale", True, 2)
    # the stale re-send is itself in progress now
    clock.advance(30)
    assert in_progress(store).code == IN_PROGRESS


def test_failed_attempt_is_sent_again(store: SendIdempotencyStore) -> None:
    store.begin("c1", "r1")
    store.fail("c1", "r1")
    begin = store.begin("c1", "r1")
    assert (begin.outcome, begin.send, begin.attempts) == ("retry", True, 2)
    store.complete("c1", "r1", {"duplicate": False})
    store.fail("c1", "r1")  # a late failure cannot undo a completion
    assert store.begin("c1", "r1").duplicate


def test_records_survive_reopening_the_database(tmp_path: Path, clock: FakeClock) -> None:
    path = str(tmp_path / "send.db")
    first = SendIdempotencyStore(path, clock=clock)
    first.begin("c1", "done")
    first.complete("c1", "done", {"providerMessageId": "pm_9", "duplicate": False})
    first.begin("c1", "busy")
    first.close()
    second = SendIdempotencyStore(path, clock=clock)
    try:
        assert second.begin("c1", "done").result == {"providerMessageId": "pm_9", "duplicate": False}
        assert in_progress(second, "busy").code == IN_PROGRESS
    finally:
        second.close()


def test_completed_records_are_pruned_after_retention(store: SendIdempotencyStore, clock: FakeClock) -> None:
    store.begin("c1", "old")
    store.complete("c1", "old", {"duplicate": False})
    clock.advance(RETENTION - 1)
    store.begin("c1", "recent")
    store.complete("c1", "recent", {"duplicate": False})
    assert store.prune() == 0
    clock.advance(2)
    assert store.prune() == 1
    assert store.get("c1", "old") is None
    assert store.begin("c1", "recent").duplicate
    assert store.begin("c1", "old").outcome == "new"


def test_pruning_happens_on_its_own(store: SendIdempotencyStore, clock: FakeClock) -> None:
    store.begin("c1", "old")
    store.complete("c1", "old", {"duplicate": False})
    clock.advance(RETENTION + 3600)
    store.begin("c1", "other")  # begin prunes at most once an hour
    assert store.get("c1", "old") is None


def test_concurrent_begins_of_one_key_let_exactly_one_through(tmp_path: Path, clock: FakeClock) -> None:
    """Separate connections (as two plugin processes during a hot swap) racing on one key."""
    path = str(tmp_path / "send.db")
    SendIdempotencyStore(path, clock=clock).close()
    stores = [SendIdempotencyStore(path, clock=clock) for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    outcomes: list[str] = []
    lock = threading.Lock()

    def race(s: SendIdempotencyStore) -> None:
        barrier.wait()
        try:
            outcome = s.begin("c1", "r1").outcome
        except RpcError as exc:
            outcome = str(exc.code)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=race, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert sorted(outcomes) == ["-32010"] * 7 + ["new"]


# ---------------------------------------------------------------- wired into message.send


def request(request_id: str = "r1") -> SendRequest:
    return SendRequest(
        request_id=request_id,
        connection_id="c1",
        channel_id="ch",
        kind="test",
        target=Target(peer_id="p"),
        content="hi",
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
        return SendResult(provider_message_id=f"pm_{len(sent)}")

    return plugin, sent, control


@pytest.mark.anyio
async def test_idempotent_send_handler_sends_once(clock: FakeClock) -> None:
    plugin, sent, _ = sending_plugin(clock)
    async with PluginHarness.in_process(plugin) as h:
        first = await h.call("message.send", request(), result_type=SendResult)
        again = await h.call("message.send", request(), result_type=SendResult)
        assert first == SendResult(duplicate=False, provider_message_id="pm_1")
        assert again == SendResult(duplicate=True, provider_message_id="pm_1")
        assert sent == ["r1"]


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_cancelled_send_can_be_sent_again(clock: FakeClock) -> None:
    plugin, sent, control = sending_plugin(clock)
    async with PluginHarness.in_process(plugin) as h:
        control["gate"] = anyio.Event()  # never set: the send hangs until the host gives up
        with pytest.raises(RpcError):
            await h.call("message.send", request(), timeout=0.05)
        control["gate"] = None
        with anyio.fail_after(5):
            while True:  # the plugin handles $/cancelRequest asynchronously
                try:
                    result = await h.call("message.send", request())
                    break
                except RpcError as exc:
                    assert exc.code == IN_PROGRESS
                    await anyio.sleep(0.01)
        assert result["duplicate"] is False and sent == ["r1"]


def test_idempotent_needs_send_request_params() -> None:
    with pytest.raises(ValueError):
        Plugin().method("custom.send", idempotent=True)


# ---------------------------------------------------------------- model check


class SendStoreMachine(RuleBasedStateMachine):
    """The store against a plain-Python model of SPEC 3.6."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = tempfile.TemporaryDirectory()
        self.path = f"{self.dir.name}/send.db"
        self.clock = FakeClock()
        self.store = self.open()
        self.model: dict[tuple[str, str], dict[str, Any]] = {}
        self.counter = 0
        self.prune_on_next_begin = True  # a freshly opened store prunes on its first begin

    def open(self) -> SendIdempotencyStore:
        return SendIdempotencyStore(self.path, clock=self.clock, prune_interval=float("inf"))

    def model_prune(self) -> None:
        cutoff = self.clock.time() - RETENTION
        self.model = {k: r for k, r in self.model.items() if r["updated"] >= cutoff}

    keys = st.tuples(st.sampled_from(["c1", "c2"]), st.sampled_from(["r1", "r2", "r3"]))

    @rule(key=keys)
    def begin(self, key: tuple[str, str]) -> None:
        now = self.clock.time()
        if self.prune_on_next_begin:
            self.model_prune()
            self.prune_on_next_begin = False
        record = self.model.get(key)
        expected: str
        if record is None:
            expected = "new"
        elif record["status"] == "completed":
            expected = "duplicate"
        elif record["status"] == "processing" and now - record["updated"] < 60:
            expected = "in_progress"
        else:
            expected = "stale" if record["status"] == "processing" else "retry"
        try:
            begin = self.store.begin(*key)
            outcome = begin.outcome
        except RpcError as exc:
            assert exc.code == IN_PROGRESS and exc.data == {"retryAfterSeconds": 5}
            outcome = "in_progress"
        assert outcome == expected, (key, record, now)
        if outcome == "duplicate":
            assert begin.result == record["result"]
        elif outcome != "in_progress":
            self.model[key] = {"status": "processing", "updated": now, "result": None}

    @rule(key=keys)
    def complete(self, key: tuple[str, str]) -> None:
        self.counter += 1
        result = {"providerMessageId": f"pm_{self.counter}", "duplicate": False}
        self.store.complete(*key, result)
        self.model[key] = {"status": "completed", "updated": self.clock.time(), "result": result}

    @rule(key=keys)
    def fail(self, key: tuple[str, str]) -> None:
        self.store.fail(*key)
        record = self.model.get(key)
        if record is not None and record["status"] == "processing":
            record.update(status="failed", updated=self.clock.time())

    @rule(seconds=st.sampled_from([1, 30, 59, 60, 61, 3600, RETENTION]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def prune(self) -> None:
        self.store.prune()
        self.model_prune()

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = self.open()
        self.prune_on_next_begin = True

    @invariant()
    def stored_statuses_match(self) -> None:
        for key, record in self.model.items():
            stored = self.store.get(*key)
            if stored is not None:
                assert stored.status == record["status"]

    def teardown(self) -> None:
        self.store.close()
        self.dir.cleanup()


SendStoreMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_send_store_matches_model = SendStoreMachine.TestCase


@pytest.mark.anyio
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
        assert first == {"duplicate": False}
        assert again == {"duplicate": True}
        assert sent == ["r1"]


@pytest.mark.anyio
async def test_a_delivered_send_is_completed_when_storing_its_result_fails(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin, sent, _ = sending_plugin(clock)
    async with PluginHarness.in_process(plugin) as h:
        store = plugin.send_store
        complete = store.complete
        calls: list[dict[str, Any]] = []

        def flaky_complete(connection_id: str, request_id: str, result: dict[str, Any]) -> None:
            calls.append(result)
            if len(calls) == 1:
                raise RuntimeError("disk hiccup")
            complete(connection_id, request_id, result)

        monkeypatch.setattr(store, "complete", flaky_complete)
        first = await h.call("message.send", request(), result_type=SendResult)
        again = await h.call("message.send", request())
        assert first == SendResult(duplicate=False, provider_message_id="pm_1")
        assert again["duplicate"] is True
        assert sent == ["r1"] and calls[1] == {}
