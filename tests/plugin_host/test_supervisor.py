"""PluginSupervisor against real fault-injection plugins (SPEC 3.2, 5.4)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from plugin_host.errors import OVERLOADED, TIMED_OUT, UNAVAILABLE, RpcError
from plugin_host.process import LaunchSpec
from plugin_host.protocol import (
    ConnectionInfo,
    ConnectionStatusParams,
    InitializeResult,
    StateGetParams,
    StateGetResult,
)
from plugin_host.redact import Redactor
from plugin_host.services import HostServices
from plugin_host.supervisor import PluginSupervisor, StartError
from tests.fault_plugins import SCRIPTS, live_group_members, make_spec, proc_alive

pytestmark = pytest.mark.anyio

FAST_STOP = {"shutdown_timeout": 0.5, "exit_timeout": 0.3, "term_timeout": 0.3}
QUICK_HEALTH = {"healthIntervalMs": 50, "timeouts": {"healthMs": 300}}


@asynccontextmanager
async def supervised(spec: LaunchSpec, **kwargs: Any) -> AsyncIterator[PluginSupervisor]:
    async with PluginSupervisor(spec, **{**FAST_STOP, **kwargs}) as sup:
        yield sup


async def wait_for(predicate, within: float = 15.0) -> None:
    with anyio.fail_after(within):
        while not predicate():
            await anyio.sleep(0.01)


async def wait_dead(*pids: int, within: float = 5.0) -> None:
    await wait_for(lambda: not any(proc_alive(p) for p in pids), within)


@asynccontextmanager
async def bystander(tmp_path: Path) -> AsyncIterator[PluginSupervisor]:
    """Another plugin whose calls must keep answering while a faulty one misbehaves."""
    async with supervised(make_spec(tmp_path, "well_behaved", plugin_id="bystander")) as sup:
        await sup.start()
        yield sup


async def assert_responsive(sup: PluginSupervisor, n: int = 3) -> None:
    for i in range(n):
        assert await sup.call("echo", {"i": i}, timeout=10) == {"i": i}


# ---------------------------------------------------------------- handshake


async def test_start_call_stop(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "well_behaved")
    events: list[tuple[str, dict[str, Any]]] = []
    conn = ConnectionInfo("conn_1", "ch", "test", "acc", "Test", options={}, credentials={"k": "v"})

    class Services(HostServices):
        async def resumable_connections(self, plugin_id: str) -> list[ConnectionInfo]:
            return [conn]

    async with supervised(
        spec,
        config={"greeting": "hi"},
        services=Services(),
        on_event=lambda sup, kind, data: events.append((kind, data)),
        host_version="9.9.9",
    ) as sup:
        result = await sup.start()
        assert isinstance(result, InitializeResult) and result.plugin.name == "well_behaved"
        assert sup.initialize_result == result
        assert sup.state == "running"
        init = await sup.call("init_params")
        assert init["protocolVersion"] == 1
        assert init["host"] == {"name": "channel-runtime", "version": "9.9.9"}
        assert init["plugin"] == {"id": "well_behaved", "version": "1.0.0"}
        assert init["config"] == {"greeting": "hi"}
        assert init["stateDir"] == str(spec.data_dir)
        assert init["connections"][0]["connectionId"] == "conn_1"
        assert init["connections"][0]["credentials"] == {"k": "v"}
        assert await sup.call("echo", {"a": 1}) == {"a": 1}
        snap = sup.snapshot()
        pid = snap["pid"]
        assert snap["state"] == "running" and snap["health"] == "ok" and proc_alive(pid)
        assert snap["startedAt"].endswith("Z")
        assert snap["counters"] == {
            "restarts": 0,
            "crashes": 0,
            "timeouts": 0,
            "protocolViolations": 0,
            "oversizedMessages": 0,
        }
        assert snap["latencyMs"]["echo"]["count"] == 1
        assert set(snap["latencyMs"]["echo"]) == {"count", "p50", "p99"}
        assert snap["lastError"] is None and snap["lastErrorAt"] is None
        assert snap["nextAttemptInSeconds"] is None
        assert snap["rpcErrors"] == {}
        await sup.stop()
        assert sup.state == "stopped"
        assert not proc_alive(pid)
        with pytest.raises(RpcError) as info:
            await sup.call("echo")
        assert info.value.code == UNAVAILABLE
    states = [data["state"] for kind, data in events if kind == "state"]
    assert states == ["starting", "running", "stopped"]
    assert ("call", {"method": "echo", "ok": True, "code": None}) in events


async def test_wrong_protocol_version_fails_start(tmp_path: Path) -> None:
    async with supervised(make_spec(tmp_path, "well_behaved"), config={"protocolVersion": 2}) as sup:
        with pytest.raises(StartError, match="protocolVersion 2"):
            await sup.start()
        assert sup.state == "stopped"
        assert "protocolVersion" in sup.snapshot()["lastError"]


async def test_exit_during_handshake_fails_start(tmp_path: Path) -> None:
    async with bystander(tmp_path) as other:
        async with supervised(make_spec(tmp_path, "exit_in_handshake")) as sup:
            with pytest.raises(StartError, match="code 3") as info:
                await sup.start()
            assert "hunter2hunter2" not in str(info.value)
            assert sup.state == "stopped"
            assert sup.counters.crashes == 1
            assert "hunter2hunter2" not in sup.snapshot()["lastError"]
            assert any("fatal" in line for line in sup.logs(10))
            await assert_responsive(other)


async def test_exit_during_handshake_with_retry_goes_to_backoff(tmp_path: Path) -> None:
    async with supervised(make_spec(tmp_path, "exit_in_handshake")) as sup:
        with pytest.raises(StartError):
            await sup.start(retry=True)
        assert sup.state in ("backoff", "starting")
        await wait_for(lambda: sup.counters.restarts >= 1)
        await sup.stop()
        assert sup.state == "stopped"


async def test_silent_plugin_fails_start_within_handshake_timeout(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "silent_initialize", manifest={"timeouts": {"handshakeMs": 300}})
    pids: list[int] = []
    async with bystander(tmp_path) as other:
        async with supervised(spec, on_event=lambda s, k, d: pids.append(s.pid) if k == "state" else None) as sup:
            with pytest.raises(StartError, match="no answer to initialize"):
                await sup.start()
            assert sup.state == "stopped"
            assert sup.counters.crashes == 0
            await assert_responsive(other)
    await wait_dead(*[p for p in pids if p])


# ---------------------------------------------------------------- health


async def test_degraded_health_is_still_callable(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "well_behaved", manifest=QUICK_HEALTH)
    async with supervised(spec, config={"health": "degraded"}) as sup:
        await sup.start()
        await wait_for(lambda: sup.state == "degraded")
        assert sup.snapshot()["health"] == "degraded"
        assert await sup.call("echo", {"ok": True}) == {"ok": True}


async def test_health_errors_kill_and_restart(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "health_errors", manifest=QUICK_HEALTH)
    async with bystander(tmp_path) as other:
        async with supervised(spec) as sup:
            await sup.start()
            first_pid = sup.pid
            await wait_for(lambda: sup.counters.restarts >= 1 and sup.state == "running")
            assert sup.pid != first_pid
            assert not proc_alive(first_pid)
            assert "3 consecutive failed health checks" in sup.snapshot()["lastError"]
            assert sup.counters.crashes == 0
            await assert_responsive(other)
            await sup.stop()


async def test_health_stops_answering_times_out_and_restarts(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "health_stops", manifest={"healthIntervalMs": 50, "timeouts": {"healthMs": 400}})
    async with supervised(spec, config={"answers": 2}) as sup:
        await sup.start()
        first_pid = sup.pid
        await wait_for(lambda: sup.counters.restarts >= 1)
        assert sup.counters.timeouts >= 3
        assert sup.snapshot()["latencyMs"]["health"]["count"] >= 2
        await wait_dead(first_pid)


# ---------------------------------------------------------------- crash


async def test_crash_fails_in_flight_calls_at_once(tmp_path: Path) -> None:
    """The grandchild keeps stdout open: the crash is seen through the process exit."""
    async with supervised(make_spec(tmp_path, "grandchild")) as sup:
        await sup.start()
        pids = await sup.call("pids")
        with pytest.raises(RpcError) as info:
            # shorter than the stop sequence's fallback: only the exit-driven fail-fast answers -32002 in time
            await sup.call("die", timeout=2)
        assert info.value.code == UNAVAILABLE
        assert sup.state in ("backoff", "starting", "running")
        assert sup.counters.crashes == 1
        assert "exited with code 1" in sup.snapshot()["lastError"]
        await wait_dead(pids["pid"], pids["child"])
        await wait_for(lambda: sup.state == "running" and sup.counters.restarts == 1)
        new_pids = await sup.call("pids")
        await sup.stop()
        await wait_dead(new_pids["pid"], new_pids["child"])


async def test_crash_loop_opens_circuit(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "crash_loop")
    async with bystander(tmp_path) as other:
        async with supervised(spec) as sup:
            # shorten the backoff only; the circuit's thresholds stay those of the spec
            sup.policy.base = 0.01
            await sup.start()
            await wait_for(lambda: sup.state == "failed")
            assert sup.counters.crashes == 5
            assert sup.counters.restarts == 4
            with pytest.raises(RpcError) as info:
                await sup.call("echo")
            assert info.value.code == UNAVAILABLE and "circuit" in info.value.message
            assert any("giving up" in line for line in sup.logs(100))
            snap = sup.snapshot()  # what the admin page shows: when it failed, when it tries again
            assert snap["lastErrorAt"].endswith("Z") and 0 < snap["nextAttemptInSeconds"] <= sup.policy.circuit_retry
            lines = sup.log_lines(100)
            assert [line.text for line in lines] == sup.logs(100)
            assert all(a.seq < b.seq and a.at <= b.at for a, b in zip(lines, lines[1:], strict=False))
            await assert_responsive(other)
            await sup.restart()  # admin restart closes the circuit (and this plugin crashes again)
            assert sup.policy.failures <= 1
            await sup.stop()


# ---------------------------------------------------------------- protocol abuse


async def test_garbage_is_counted_and_calls_still_answer(tmp_path: Path) -> None:
    async with bystander(tmp_path) as other:
        async with supervised(make_spec(tmp_path, "garbage")) as sup:
            await sup.start()
            assert await sup.call("echo", {"x": 1}) == {"x": 1}
            async with anyio.create_task_group() as tg:
                tg.start_soon(sup.call, "spew", {"lines": 20000})
                await assert_responsive(other, 20)
            assert sup.counters.protocol_violations >= 20000
            assert sup.state == "running"
            assert await sup.call("echo", {"x": 2}) == {"x": 2}


async def test_stderr_flood_while_being_called(tmp_path: Path) -> None:
    async with bystander(tmp_path) as other:
        async with supervised(make_spec(tmp_path, "stderr_flood")) as sup:
            await sup.start()
            await sup.call("flood", {"mb": 20})
            with anyio.fail_after(60):
                while not await sup.call("flood_done", timeout=30):
                    await assert_responsive(sup, 1)
                    await assert_responsive(other, 1)
            await wait_for(lambda: sup.logs(1) == ["flood finished"])
            assert len(sup.logs(5000)) == 1000


async def test_oversized_answer_is_counted(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path, "oversized", manifest={"limits": {"maxMessageBytes": 4096}, "timeouts": {"methods": {"big": 300}}}
    )
    async with supervised(spec) as sup:
        await sup.start()
        with pytest.raises(RpcError) as info:
            await sup.call("big", {"size": 20_000})
        assert info.value.code == TIMED_OUT
        with pytest.raises(RpcError) as too_big:
            await sup.call("echo", {"blob": "z" * 5000})
        assert too_big.value.code == -32003
        snap = sup.snapshot()
        assert snap["counters"]["oversizedMessages"] == 1
        assert snap["counters"]["timeouts"] == 1
        assert await sup.call("echo", {"fine": 1}) == {"fine": 1}


# ---------------------------------------------------------------- limits


async def test_timeout_answers_32001_and_cancels_in_plugin(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "well_behaved", manifest={"timeouts": {"methods": {"sleep": 200}}})
    events: list[dict[str, Any]] = []
    async with supervised(spec, on_event=lambda s, k, d: events.append(d) if k == "call" else None) as sup:
        await sup.start()
        with pytest.raises(RpcError) as info:
            await sup.call("sleep", {"seconds": 3})
        assert info.value.code == TIMED_OUT
        stats = await sup.call("stats")
        assert len(stats["cancelled"]) == 1
        assert sup.counters.timeouts == 1
        assert sup.snapshot()["rpcErrors"] == {str(TIMED_OUT): 1}
        assert {"method": "sleep", "ok": False, "code": TIMED_OUT} in events


async def test_overload_beyond_concurrency_and_queue(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "well_behaved", manifest={"limits": {"maxConcurrency": 2}})
    outcomes: list[Any] = []
    async with supervised(spec) as sup:
        await sup.start()

        async def one(i: int) -> None:
            try:
                await sup.call("sleep", {"seconds": 0.5 if i < 2 else 0}, timeout=60)
                outcomes.append("ok")
            except RpcError as exc:
                outcomes.append(exc.code)

        async with anyio.create_task_group() as tg:
            for i in range(300):
                tg.start_soon(one, i)
    overloaded = outcomes.count(OVERLOADED)
    assert 1 <= overloaded <= 300 - 258
    assert outcomes.count("ok") == 300 - overloaded


# ---------------------------------------------------------------- plugin -> host


async def test_plugin_requests_and_notifications_reach_the_owner(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[tuple[str, Any]] = []

    class Services(HostServices):
        async def state_get(self, plugin_id: str, params: StateGetParams) -> StateGetResult:
            received.append(("state.get", (plugin_id, params.key, params.connection_id)))
            return StateGetResult(value={"cursor": "abc"}, epoch=3)

        async def connection_status(self, plugin_id: str, params: ConnectionStatusParams) -> None:
            received.append(("connection.status", (plugin_id, params.connection_id, params.status)))

    redactor = Redactor(["very-private-value"])
    async with supervised(make_spec(tmp_path, "well_behaved"), services=Services(), redactor=redactor) as sup:
        await sup.start()
        answer = await sup.call("ask_host", {"method": "state.get", "params": {"key": "cursor", "connectionId": "c1"}})
        assert answer == {"value": {"cursor": "abc"}, "epoch": 3}
        # a method the host does not serve, and params that are not its shape
        unknown = await sup.call("ask_host", {"method": "no.such", "params": {}})
        assert unknown["code"] == -32601
        bad = await sup.call("ask_host", {"method": "state.get", "params": {"connectionId": 5}})
        assert bad["code"] == -32602
        await sup.call(
            "notify_host", {"method": "connection.status", "params": {"connectionId": "c1", "status": "connected"}}
        )
        with caplog.at_level(logging.INFO, logger="plugin_host.plugin.well_behaved"):
            await sup.call(
                "notify_host",
                {
                    "method": "log",
                    "params": {"level": "warning", "message": "login uses very-private-value", "fields": {"n": 1}},
                },
            )
            await wait_for(lambda: received and any("login uses" in r.getMessage() for r in caplog.records))
    assert received == [
        ("state.get", ("well_behaved", "cursor", "c1")),
        ("connection.status", ("well_behaved", "c1", "connected")),
    ]
    record = next(r for r in caplog.records if "login uses" in r.getMessage())
    assert record.levelno == logging.WARNING
    assert "very-private-value" not in record.getMessage() and '"n":1' in record.getMessage()


async def test_disable_and_serve(tmp_path: Path) -> None:
    sup = PluginSupervisor(make_spec(tmp_path, "well_behaved"), **FAST_STOP)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.serve)
        await sup.start()
        pid = sup.pid
        await sup.disable()
        assert sup.state == "disabled"
        with pytest.raises(RpcError):
            await sup.call("echo")
        await sup.aclose()
    assert not proc_alive(pid)


@pytest.mark.parametrize("script", SCRIPTS)
async def test_nothing_of_the_plugin_survives_stop(tmp_path: Path, script: str) -> None:
    spawned: list[int] = []
    spec = make_spec(
        tmp_path, script, manifest={"healthIntervalMs": 50, "timeouts": {"handshakeMs": 1000, "healthMs": 300}}
    )
    async with bystander(tmp_path) as other:
        async with supervised(spec, on_event=lambda s, k, d: spawned.append(d["pid"]) if k == "spawn" else None) as sup:
            sup.policy.base = 0.01
            try:
                await sup.start(retry=True)
            except StartError:
                pass
            await anyio.sleep(0.3)  # let it misbehave for a while
            await assert_responsive(other)
            await sup.stop()
            assert sup.state == "stopped"
    assert spawned
    for pid in spawned:
        assert not proc_alive(pid)
        assert live_group_members(pid) == []


async def test_owner_exception_propagates_unwrapped(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        async with supervised(make_spec(tmp_path, "well_behaved")) as sup:
            await sup.start()
            pid = sup.pid
            raise KeyError("owner bug")
    assert sup.state == "stopped" and not proc_alive(pid)


async def test_owner_cancellation_stops_the_plugin(tmp_path: Path) -> None:
    pids: list[int] = []
    with anyio.move_on_after(1):
        async with supervised(make_spec(tmp_path, "grandchild")) as sup:
            await sup.start()
            pids.extend((await sup.call("pids")).values())
            await anyio.sleep_forever()
    assert sup.state == "stopped"
    await wait_dead(*pids, within=2)


async def test_failing_connections_provider_fails_the_start(tmp_path: Path) -> None:
    class Services(HostServices):
        async def resumable_connections(self, plugin_id: str) -> list[ConnectionInfo]:
            raise OSError("database is locked")

    async with supervised(make_spec(tmp_path, "well_behaved"), services=Services()) as sup:
        with pytest.raises(StartError, match="database is locked"):
            await sup.start()
        assert sup.state == "stopped"


async def test_concurrent_admin_restarts_leave_one_process(tmp_path: Path) -> None:
    spawned: list[int] = []
    on_event = lambda s, k, d: spawned.append(d["pid"]) if k == "spawn" else None  # noqa: E731
    async with supervised(make_spec(tmp_path, "well_behaved"), on_event=on_event) as sup:
        await sup.start()

        async def restart() -> None:
            try:
                await sup.restart()
            except StartError:
                pass  # superseded by the other restart

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(restart)
        await wait_for(lambda: sup.state == "running")
        assert await sup.call("echo", {"ok": 1}) == {"ok": 1}
        alive = [pid for pid in spawned if proc_alive(pid)]
        assert alive == [sup.pid]


async def test_rpc_errors_count_codes_outside_the_spec_under_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with supervised(make_spec(tmp_path, "well_behaved")) as sup:
        await sup.start()
        with pytest.raises(RpcError):
            await sup.call("no_such_method")  # -32601, a code of SPEC 3.7
        proc = sup._proc
        assert proc is not None

        async def plugin_chosen_code(method: str, params: Any = None, **kw: Any) -> Any:
            raise RpcError(params["code"], "the plugin's own error")

        monkeypatch.setattr(proc, "call", plugin_chosen_code)
        for code in (-32099, 7, 123456, -32099):
            with pytest.raises(RpcError) as info:
                await sup.call("custom", {"code": code})
            assert info.value.code == code  # the caller still sees the real code
        assert sup.snapshot()["rpcErrors"] == {"-32601": 1, "other": 4}
