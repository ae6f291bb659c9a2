"""The restart policy of SPEC 5.4 against a reference model, and a real crash loop on a FakeClock."""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from plugin_host.clock import FakeClock
from plugin_host.errors import UNAVAILABLE, RpcError
from plugin_host.supervisor import PluginSupervisor, RestartPolicy, StartError
from tests.fault_plugins import make_spec, proc_alive

FAST_STOP = {"shutdown_timeout": 0.5, "exit_timeout": 0.3, "term_timeout": 0.3}


class ReferenceModel:
    """SPEC 5.4 read literally, written independently of `RestartPolicy`."""

    def __init__(self) -> None:
        self.n = 0
        self.failure_times: list[float] = []
        self.circuit_open = False
        self.healthy_since: float | None = None

    def failure(self, now: float) -> float | None:
        """The base delay (before jitter), or None when the circuit is open."""
        if self.healthy_since is not None and now - self.healthy_since >= 60:
            self.n = 0  # 60 s of healthy running reset n
        self.healthy_since = None
        self.n += 1
        self.failure_times.append(now)
        within_window = [t for t in self.failure_times if now - t <= 120]
        if self.circuit_open or len(within_window) >= 5:
            self.circuit_open = True
            return None
        return min(0.5 * 2 ** (self.n - 1), 30.0)

    def started(self, now: float) -> None:
        self.circuit_open = False  # the one retry after 300 s worked
        self.healthy_since = now

    def healthy(self, now: float) -> None:
        if self.healthy_since is None:
            self.healthy_since = now

    def unhealthy(self) -> None:
        self.healthy_since = None

    def admin_restart(self) -> None:
        self.n = 0
        self.failure_times = []
        self.circuit_open = False
        self.healthy_since = None


class PolicyMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**32 - 1))
    def setup(self, seed: int) -> None:
        self.now = 0.0
        self.policy = RestartPolicy(rng=random.Random(seed))
        self.model = ReferenceModel()

    @rule(dt=st.floats(0, 400, allow_nan=False))
    def failure(self, dt: float) -> None:
        self.now += dt
        delay = self.policy.on_failure(self.now)
        expected = self.model.failure(self.now)
        if expected is None:
            assert delay is None
        else:
            assert delay is not None
            assert expected * 0.8 - 1e-9 <= delay <= expected * 1.2 + 1e-9
            assert delay <= 36.0

    @rule(dt=st.floats(0, 400, allow_nan=False))
    def started(self, dt: float) -> None:
        self.now += dt
        self.policy.on_started(self.now)
        self.model.started(self.now)

    @rule(dt=st.floats(0, 100, allow_nan=False))
    def healthy(self, dt: float) -> None:
        self.now += dt
        self.policy.on_healthy(self.now)
        self.model.healthy(self.now)

    @rule()
    def unhealthy(self) -> None:
        self.policy.on_unhealthy()
        self.model.unhealthy()

    @rule()
    def admin_restart(self) -> None:
        self.policy.on_admin_restart()
        self.model.admin_restart()

    @invariant()
    def same_state(self) -> None:
        assert self.policy.circuit_open == self.model.circuit_open
        assert self.policy.failures == self.model.n


PolicyMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestRestartPolicy = PolicyMachine.TestCase


def test_backoff_sequence_and_cap() -> None:
    policy = RestartPolicy(jitter=0.0)
    delays = [policy.on_failure(t * 1000.0) for t in range(10)]  # far apart: the circuit never opens
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
    assert policy.base_delay(10_000) == 30.0


def test_five_failures_within_window_open_the_circuit() -> None:
    policy = RestartPolicy(rng=random.Random(1))
    assert all(policy.on_failure(t) is not None for t in (0.0, 1.0, 3.0, 7.0))
    assert policy.on_failure(119.0) is None
    assert policy.circuit_open
    policy.on_admin_restart()
    assert not policy.circuit_open and policy.failures == 0


def test_failures_spread_beyond_window_keep_circuit_closed() -> None:
    policy = RestartPolicy(rng=random.Random(2))
    for t in (0.0, 50.0, 100.0, 150.0, 200.0, 250.0):
        assert policy.on_failure(t) is not None


def test_sixty_seconds_healthy_resets_n() -> None:
    policy = RestartPolicy(jitter=0.0)
    for t in (0.0, 1.0, 2.0):
        policy.on_failure(t)
    policy.on_started(10.0)
    assert policy.on_failure(69.0) == 4.0  # 59 s healthy: n goes on
    policy.on_started(80.0)
    assert policy.on_failure(140.0) == 0.5  # 60 s healthy: n reset


# ---------------------------------------------------------------- a real supervisor on a FakeClock


async def wait_for(predicate, within: float = 15.0) -> None:
    with anyio.fail_after(within):
        while not predicate():
            await anyio.sleep(0.005)


async def next_failure(sup: PluginSupervisor, clock: FakeClock, crashes: int) -> float:
    """Wait for crash number `crashes`; the delay until the next attempt on the fake clock."""
    await wait_for(lambda: sup.counters.crashes == crashes and sup.next_attempt_at is not None)
    return sup.next_attempt_at - clock.monotonic()


@pytest.mark.anyio
async def test_crash_loop_on_fake_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    pids: list[int] = []
    spec = make_spec(tmp_path, "crash_loop")
    sup = PluginSupervisor(
        spec,
        clock=clock,
        rng=random.Random(7),
        **FAST_STOP,
        on_event=lambda s, kind, data: pids.append(s.pid) if kind == "state" and data["state"] == "running" else None,
    )
    async with sup:
        await sup.start()
        for n, base in enumerate([0.5, 1.0, 2.0, 4.0], start=1):
            delay = await next_failure(sup, clock, n)
            assert sup.state == "backoff"
            assert base * 0.8 <= delay <= base * 1.2
            clock.advance(delay)
            await wait_for(lambda n=n: sup.counters.restarts == n)

        # the fifth failure within 120 s opens the circuit
        assert await next_failure(sup, clock, 5) == pytest.approx(300.0)
        assert sup.state == "failed"
        with pytest.raises(RpcError) as info:
            await sup.call("echo")
        assert info.value.code == UNAVAILABLE
        clock.advance(299.0)
        await anyio.sleep(0.05)
        assert sup.state == "failed" and sup.counters.restarts == 4

        # the one automatic retry after 300 s: its handshake works (the circuit closes), then it crashes
        clock.advance(1.0)
        delay = await next_failure(sup, clock, 6)
        assert sup.state == "backoff" and sup.counters.restarts == 5
        assert 16.0 * 0.8 <= delay <= 16.0 * 1.2  # n = 6, not reset: never 60 s healthy

        # an admin restart resets n and the circuit
        await sup.restart()
        delay = await next_failure(sup, clock, 7)
        assert 0.4 <= delay <= 0.6
        assert sup.counters.restarts == 6
        await sup.stop()
        assert sup.state == "stopped"
    assert len(pids) == 7
    assert not any(proc_alive(pid) for pid in pids)


@pytest.mark.anyio
async def test_failed_circuit_retry_reopens(tmp_path: Path) -> None:
    clock = FakeClock()
    sup = PluginSupervisor(make_spec(tmp_path, "exit_in_handshake"), clock=clock, rng=random.Random(3), **FAST_STOP)
    async with sup:
        with pytest.raises(StartError):
            await sup.start(retry=True)
        for n in range(1, 5):
            clock.advance(await next_failure(sup, clock, n))
        assert await next_failure(sup, clock, 5) == pytest.approx(300.0)
        clock.advance(300.0)
        # the retry fails its handshake: the circuit stays open for another 300 s
        assert await next_failure(sup, clock, 6) == pytest.approx(300.0)
        assert sup.state == "failed"
        with pytest.raises(StartError):
            await sup.restart()
        assert sup.state == "backoff" and not sup.policy.circuit_open
        assert sup.snapshot()["counters"]["crashes"] == 7
