"""Supervision of one plugin (SPEC 5.4): handshake, health, restarts, circuit breaker, limits, counters.

Time: the supervision policy (health interval, backoff, the 60 s reset, the
circuit's 120 s window and 300 s retry) runs on the injected `Clock`, so tests
drive it with `FakeClock`. RPC deadlines (handshake, health and call timeouts)
and the process stop sequence are real-time deadlines on a real child process.
"""

from __future__ import annotations

import collections
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import anyio.abc
import msgspec

from .clock import Clock, SystemClock
from .errors import ERROR_NAMES, METHOD_NOT_FOUND, OVERLOADED, TIMED_OUT, TOO_LARGE, UNAVAILABLE, RpcError
from .lifetime import owned_task_group
from .process import LaunchError, LaunchSpec, LogBudget, LogLine, PluginProcess, StderrRing, plugin_logger
from .protocol import (
    PROTOCOL_VERSION,
    ConnectionInfo,
    Empty,
    HealthResult,
    InitializeParams,
    InitializeResult,
    LogParams,
    NameVersion,
    PluginRef,
)
from .redact import Redactor, credential_secrets, log_safe
from .rpc import RequestContext
from .services import HostServices, dispatch_notification, dispatch_request

HOST_NAME = "channel-runtime"
MAX_WAITING_CALLS = 256
LATENCY_SAMPLES = 1024
UNHEALTHY_THRESHOLD = 3
# errors raised by the host itself: the plugin never answered, so no latency sample
_LOCAL_CODES = frozenset({TIMED_OUT, UNAVAILABLE, TOO_LARGE, OVERLOADED})
_VIOLATION_LOG_FIRST = 10
_VIOLATION_LOG_EVERY = 1000
# room for the JSON-RPC envelope around initialize's params ({"jsonrpc":"2.0","id":N,"method":...})
_ENVELOPE_BYTES = 128
# connection.resume calls in flight at once while the connections left out of initialize follow
_RESUME_CONCURRENCY = 8

State = Literal["stopped", "starting", "running", "degraded", "backoff", "failed", "disabled"]
CALLABLE_STATES = frozenset({"running", "degraded"})

EventHook = Callable[["PluginSupervisor", str, dict[str, Any]], None]

log = logging.getLogger(__name__)
# call durations and latency samples; anyio.current_time() costs a backend lookup per call
_monotonic = time.monotonic


class _Credentials(msgspec.Struct, rename="camel"):
    """What of `session.update` is read in the read loop: its secrets are registered first."""

    credentials: Any = None
    account_id: Any = None
    display_name: Any = None


class StartError(Exception):
    """The plugin did not reach `running`: spawn failure, crash or bad answer in the handshake."""


def _host_version() -> str:
    try:
        from importlib.metadata import version

        return version("channel-runtime")
    except Exception:
        return "0"


# ---------------------------------------------------------------- restart policy


@dataclass
class RestartPolicy:
    """Backoff, reset and circuit breaker of SPEC 5.4, as a pure function of time.

    `on_failure(now)` returns the delay before the next attempt, or None when
    the circuit is open (the next attempt is the one automatic retry after
    `circuit_retry` seconds; if that attempt fails too the circuit stays open
    for another `circuit_retry`).
    """

    base: float = 0.5
    cap: float = 30.0
    jitter: float = 0.2
    reset_after: float = 60.0
    window: float = 120.0
    threshold: int = 5
    circuit_retry: float = 300.0
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0  # n: consecutive failures
    circuit_open: bool = False
    _recent: collections.deque[float] = field(default_factory=collections.deque)
    _healthy_since: float | None = None

    def base_delay(self, n: int) -> float:
        return min(self.base * 2.0 ** min(n - 1, 64), self.cap)

    def on_failure(self, now: float) -> float | None:
        if self._healthy_since is not None and now - self._healthy_since >= self.reset_after:
            self.failures = 0
        self._healthy_since = None
        self.failures += 1
        self._recent.append(now)
        while self._recent and now - self._recent[0] > self.window:
            self._recent.popleft()
        if self.circuit_open or len(self._recent) >= self.threshold:
            self.circuit_open = True
            return None
        return self.base_delay(self.failures) * self.rng.uniform(1 - self.jitter, 1 + self.jitter)

    def on_started(self, now: float) -> None:
        """The handshake succeeded: healthy from now; a half-open circuit closes."""
        self.circuit_open = False
        self._healthy_since = now

    def on_healthy(self, now: float) -> None:
        if self._healthy_since is None:
            self._healthy_since = now

    def on_unhealthy(self) -> None:
        self._healthy_since = None

    def on_admin_restart(self) -> None:
        self.failures = 0
        self.circuit_open = False
        self._recent.clear()
        self._healthy_since = None


# ---------------------------------------------------------------- counters


class LatencyStats:
    """Call count and a ring of recent samples (ms) for percentiles."""

    __slots__ = ("count", "samples")

    def __init__(self, size: int = LATENCY_SAMPLES) -> None:
        self.count = 0
        self.samples: collections.deque[float] = collections.deque(maxlen=size)

    def add(self, ms: float) -> None:
        self.count += 1
        self.samples.append(ms)

    def percentile(self, p: float) -> float:
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        rank = min(len(ordered), max(1, math.ceil(p / 100.0 * len(ordered))))  # nearest rank
        return round(ordered[rank - 1], 3)


@dataclass
class Counters:
    restarts: int = 0
    crashes: int = 0
    timeouts: int = 0
    protocol_violations: int = 0
    oversized_messages: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "restarts": self.restarts,
            "crashes": self.crashes,
            "timeouts": self.timeouts,
            "protocolViolations": self.protocol_violations,
            "oversizedMessages": self.oversized_messages,
        }


class _Attempt:
    """The outcome of the next handshake, awaited by `start()`/`restart()`."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.result: InitializeResult | None = None
        self.error: BaseException | None = None

    def finish(self, result: InitializeResult | None = None, error: BaseException | None = None) -> None:
        if not self.event.is_set():
            self.result, self.error = result, error
            self.event.set()

    async def outcome(self) -> InitializeResult:
        await self.event.wait()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


# ---------------------------------------------------------------- resuming in pages


def _shown(info: ConnectionInfo) -> list[str]:
    """What the host shows of a connection anyway: never masked as a credential."""
    return [info.connection_id, info.channel_id, info.account_id, info.display_name]


def _first_page(connections: list[ConnectionInfo], budget: int) -> tuple[list[ConnectionInfo], list[ConnectionInfo]]:
    """The leading connections whose encoding fits `budget` bytes (in initialize), and the rest."""
    used = 0
    for i, info in enumerate(connections):
        used += len(msgspec.json.encode(info)) + 1  # the comma between items
        if used > budget:
            return connections[:i], connections[i:]
    return connections, []


# ---------------------------------------------------------------- supervisor


class PluginSupervisor(anyio.AsyncContextManagerMixin):
    """One plugin, at most one live process at a time.

    Owns a task group: use `async with PluginSupervisor(...) as sup:` or run
    `await task_group.start(sup.serve)` and end it with `await sup.aclose()`.
    Inside, `start()`, `stop()`, `restart()` and `disable()` drive the lifecycle.
    """

    def __init__(
        self,
        spec: LaunchSpec,
        *,
        config: Mapping[str, Any] | None = None,
        services: HostServices | None = None,
        on_event: EventHook | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        policy: RestartPolicy | None = None,
        redactor: Redactor | None = None,
        host_version: str | None = None,
        shutdown_timeout: float = 2.0,
        exit_timeout: float = 2.0,
        term_timeout: float = 3.0,
        max_waiting: int = MAX_WAITING_CALLS,
    ) -> None:
        self.spec = spec
        self.manifest = spec.manifest
        self.config: dict[str, Any] = dict(config or {})
        self.clock: Clock = clock or SystemClock()
        self.policy = policy or RestartPolicy(rng=rng or random.Random())
        self.redactor = redactor or Redactor()
        self.host_version = host_version or _host_version()
        self.shutdown_timeout = shutdown_timeout
        self.exit_timeout = exit_timeout
        self.term_timeout = term_timeout
        self.max_waiting = max_waiting
        self.logger = plugin_logger(spec.plugin_id)
        self._services = services or HostServices()
        self._on_event = on_event

        self.state: State = "stopped"
        self.health: str | None = None
        self.started_at: float | None = None  # wall clock of the last successful handshake
        self.initialize_result: InitializeResult | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # wall clock of the last failure
        self.counters = Counters()
        self.latency: dict[str, LatencyStats] = {}
        # calls that ended in an error, by code; codes outside SPEC 3.7 count as "other"
        # (a plugin picks its codes: they must not grow the metric labels without bound)
        self.rpc_errors: dict[int | str, int] = {}

        self._stderr_ring = StderrRing(self.redactor)
        self._slots = anyio.Semaphore(max(1, self.manifest.limits.max_concurrency))
        self._waiting = 0
        self._proc: PluginProcess | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._runner_scope: anyio.CancelScope | None = None
        self._runner_done: anyio.Event | None = None
        self._attempt: _Attempt | None = None
        self._retry_first = False
        self._next_attempt_at: float | None = None
        self._stopping = False
        self._closing = anyio.Event()
        self._lifecycle = anyio.Lock()  # start/stop/restart/disable one at a time
        self._violations_logged = 0
        self._log_budget = LogBudget()  # `log` notifications, like stderr lines
        self._resume_after_start: list[ConnectionInfo] = []  # what did not fit in initialize

    # ---------------------------------------------------------------- ownership

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[PluginSupervisor]:
        async with owned_task_group() as tg:
            self._tg = tg
            try:
                yield self
            finally:
                try:
                    with anyio.CancelScope(shield=True):
                        await self._end_runner("disabled" if self.state == "disabled" else "stopped")
                except Exception:
                    log.exception("plugin %s: stop failed", self.spec.plugin_id)
                self._tg = None
                self._closing.set()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the supervisor's tasks from a task group of the caller until `aclose()`."""
        async with self:
            task_status.started()
            await self._closing.wait()

    async def aclose(self) -> None:
        await self.stop()
        self._closing.set()

    # ---------------------------------------------------------------- lifecycle

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def next_attempt_at(self) -> float | None:
        """Clock time (monotonic) of the next automatic start, while in backoff or failed."""
        return self._next_attempt_at if self.state in ("backoff", "failed") else None

    @property
    def supervising(self) -> bool:
        return self._runner_done is not None and not self._runner_done.is_set()

    async def start(self, *, retry: bool = False) -> InitializeResult:
        """Spawn and handshake; returns once `running`.

        Raises `StartError` if this first start fails. With `retry=False` the
        supervisor then stays `stopped` (hot swap keeps the old version); with
        `retry=True` it keeps trying with backoff in the background.
        """
        async with self._lifecycle:
            if self.supervising:
                raise RuntimeError(f"plugin {self.spec.plugin_id} is already supervised; use restart()")
            attempt = self._launch_runner(retry_first=retry)
        return await attempt.outcome()

    async def stop(self) -> None:
        """Graceful stop sequence, state `stopped`, no restart."""
        async with self._lifecycle:
            await self._end_runner("stopped")

    async def disable(self) -> None:
        """Like `stop()`, into state `disabled`."""
        async with self._lifecycle:
            await self._end_runner("disabled")

    async def restart(self) -> InitializeResult:
        """Admin restart: stop the current process, close the circuit, start again.

        Raises `StartError` if the new start fails; supervision then goes on with backoff.
        """
        async with self._lifecycle:
            was_supervised = self.supervising
            await self._end_runner(None)
            self.policy.on_admin_restart()
            if was_supervised:
                self.counters.restarts += 1
            attempt = self._launch_runner(retry_first=True)
        return await attempt.outcome()

    def logs(self, tail: int = 100) -> list[str]:
        """The last `tail` redacted stderr lines of this plugin (across restarts)."""
        return self._stderr_ring.tail(tail)

    def log_lines(self, tail: int = 100, after: int = 0) -> list[LogLine]:
        """`logs` with each line's arrival time and sequence number; only lines after `after`."""
        return self._stderr_ring.entries(tail, after)

    def snapshot(self) -> dict[str, Any]:
        started = _rfc3339(self.started_at) if self.state in CALLABLE_STATES else None
        next_at = self.next_attempt_at
        return {
            "state": self.state,
            "health": self.health,
            "pid": self.pid if self.state in CALLABLE_STATES | {"starting"} else None,
            "startedAt": started,
            "counters": self.counters.as_dict(),
            "latencyMs": {
                method: {"count": s.count, "p50": s.percentile(50), "p99": s.percentile(99)}
                for method, s in sorted(self.latency.items())
            },
            "lastError": self.last_error,
            "lastErrorAt": _rfc3339(self.last_error_at),
            # seconds until the next automatic start in backoff or with the circuit open
            "nextAttemptInSeconds": None if next_at is None else round(max(0.0, next_at - self.clock.monotonic()), 1),
            "rpcErrors": {str(code): n for code, n in sorted(self.rpc_errors.items(), key=lambda kv: str(kv[0]))},
        }

    # ---------------------------------------------------------------- calls

    async def call(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = None,
        result_type: Any = Any,
    ) -> Any:
        """Call the plugin within the concurrency limit and the method's timeout; raises `RpcError`."""
        if timeout is None:
            timeout = self.manifest.timeouts.for_method(method)
        began = _monotonic()
        try:
            self._check_available()
            sent = began
            remaining = timeout
            if not self._slots_acquire_nowait():
                await self._acquire_slot(method, timeout)
                sent = _monotonic()
                remaining = max(timeout - (sent - began), 0.001)
            try:
                self._check_available()
                proc = self._proc
                assert proc is not None
                try:
                    result = await proc.call(method, params, timeout=remaining, result_type=result_type)
                except RpcError as exc:
                    if exc.code not in _LOCAL_CODES:
                        self._record_latency(method, sent)
                    raise
                self._record_latency(method, sent)
            finally:
                self._slots.release()
        except RpcError as exc:
            if exc.code == TIMED_OUT:
                self.counters.timeouts += 1
            code: int | str = exc.code if exc.code in ERROR_NAMES else "other"
            self.rpc_errors[code] = self.rpc_errors.get(code, 0) + 1
            self._emit("call", method=method, ok=False, code=exc.code)
            raise
        self._emit("call", method=method, ok=True, code=None)
        return result

    def _slots_acquire_nowait(self) -> bool:
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            return False
        return True

    async def _acquire_slot(self, method: str, timeout: float) -> None:
        """Wait for a slot (the caller already found none free)."""
        if self._waiting >= self.max_waiting:
            raise RpcError(
                OVERLOADED,
                f"plugin {self.spec.plugin_id} is overloaded: {self.max_waiting} calls are already waiting",
            )
        self._waiting += 1
        try:
            with anyio.move_on_after(timeout) as scope:
                await self._slots.acquire()
        finally:
            self._waiting -= 1
        if scope.cancelled_caught:
            raise RpcError(TIMED_OUT, f"{method} timed out after {timeout:g} s waiting for a free slot")

    async def notify(self, method: str, params: Any = None, *, timeout: float | None = None) -> None:
        self._check_available()
        proc = self._proc
        assert proc is not None
        limit = self.manifest.timeouts.call_ms / 1000.0 if timeout is None else timeout
        with anyio.move_on_after(limit) as scope:
            await proc.notify(method, params)
        if scope.cancelled_caught:
            self.counters.timeouts += 1
            raise RpcError(TIMED_OUT, f"notification {method} could not be written within {limit:g} s")

    def _check_available(self) -> None:
        if self._stopping or self.state not in CALLABLE_STATES or self._proc is None or self._proc.exited:
            reason = "its circuit is open" if self.state == "failed" else f"it is {self.state}"
            raise RpcError(UNAVAILABLE, f"plugin {self.spec.plugin_id} is unavailable: {reason}")

    def _record_latency(self, method: str, sent: float) -> None:
        stats = self.latency.get(method)
        if stats is None:
            stats = self.latency[method] = LatencyStats()
        stats.add((_monotonic() - sent) * 1000.0)

    # ---------------------------------------------------------------- runner

    def _launch_runner(self, *, retry_first: bool) -> _Attempt:
        if self._tg is None:
            raise RuntimeError("use `async with PluginSupervisor(...)` or run `serve()` in a task group first")
        attempt = _Attempt()
        self._attempt = attempt
        self._retry_first = retry_first
        self._stopping = False
        self._runner_scope = anyio.CancelScope()
        self._runner_done = anyio.Event()
        self._tg.start_soon(self._runner, self._runner_scope, self._runner_done)
        return attempt

    async def _end_runner(self, final_state: State | None) -> None:
        self._stopping = True
        scope, done = self._runner_scope, self._runner_done
        if scope is not None and done is not None:
            scope.cancel()
            with anyio.CancelScope(shield=True):
                await done.wait()
        if final_state is not None:
            self.health = None
            self._set_state(final_state)

    async def _runner(self, scope: anyio.CancelScope, done: anyio.Event) -> None:
        try:
            with scope:
                while True:
                    self._next_attempt_at = None
                    await self._run_once()
                    if self._next_attempt_at is None:
                        return  # the first start failed and the owner did not ask for retries
                    await self.clock.sleep(max(0.0, self._next_attempt_at - self.clock.monotonic()))
                    self.counters.restarts += 1
                    self._emit("restart", restarts=self.counters.restarts)
        finally:
            if self._attempt is not None:
                self._attempt.finish(error=StartError(f"plugin {self.spec.plugin_id} was stopped before it started"))
                self._attempt = None
            done.set()

    async def _run_once(self) -> None:
        """One process lifetime; returns after recording the failure that ended it."""
        self._set_state("starting")
        self.health = None
        proc = PluginProcess(
            self.spec,
            on_request=self._handle_request,
            on_notification=self._handle_notification,
            on_violation=self._handle_violation,
            on_incoming=self._register_secrets,
            redactor=self.redactor,
            stderr_ring=self._stderr_ring,
            shutdown_timeout=self.shutdown_timeout,
            exit_timeout=self.exit_timeout,
            term_timeout=self.term_timeout,
            logger=self.logger,
        )
        self._violations_logged = 0
        try:
            async with proc:
                self._proc = proc
                self._emit("spawn", pid=proc.pid)
                try:
                    result = await self._handshake(proc)
                except (RpcError, StartError) as exc:
                    await self._handshake_failed(proc, exc)
                    return
                self._running(proc, result)
                failure = await self._watch(proc)
                if failure is not None:
                    self._failed(failure, crashed=False)
                    self.logger.warning("plugin %s: %s; killing it", self.spec.plugin_id, failure)
                    await proc.stop(graceful=False)
                else:
                    code = proc.returncode
                    self._failed(self._exit_message(f"exited with code {code}"), crashed=True, exit_code=code)
        except LaunchError as exc:
            self._failed(str(exc), crashed=False)
        except Exception as exc:  # a bug here must not take the owner's task group down
            log.exception("plugin %s: supervision failed", self.spec.plugin_id)
            self._failed(f"internal error in the supervisor: {exc!r}", crashed=False)
        finally:
            self._proc = None

    async def _handshake(self, proc: PluginProcess) -> InitializeResult:
        timeout = self.manifest.timeouts.handshake_ms / 1000.0
        deadline = anyio.current_time() + timeout
        try:
            with anyio.fail_after(timeout):
                connections = list(await self._services.resumable_connections(self.spec.plugin_id))
        except TimeoutError:
            raise StartError(f"the connections to resume were not ready within {timeout:g} s") from None
        except Exception as exc:
            log.exception("plugin %s: reading the connections to resume failed", self.spec.plugin_id)
            raise StartError(f"the connections to resume could not be read: {exc}") from exc
        for info in connections:  # known secrets are masked whatever shape the plugin logs them in
            self.redactor.add(*credential_secrets(info.credentials, public=_shown(info)))
        params = InitializeParams(
            protocol_version=PROTOCOL_VERSION,
            host=NameVersion(name=HOST_NAME, version=self.host_version),
            plugin=PluginRef(id=self.spec.plugin_id, version=self.spec.version),
            state_dir=str(self.spec.data_dir),
            config=self.config,
            connections=[],
        )
        # SPEC 10: initialize carries what fits in one message; the rest follows through connection.resume
        budget = self.manifest.limits.max_message_bytes - len(msgspec.json.encode(params)) - _ENVELOPE_BYTES
        first, self._resume_after_start = _first_page(connections, budget)
        params = msgspec.structs.replace(params, connections=first)
        try:
            result: InitializeResult = await proc.call(
                "initialize",
                params,
                timeout=max(deadline - anyio.current_time(), 0.001),
                result_type=InitializeResult,
            )
        except RpcError as exc:
            if exc.code == TIMED_OUT:
                raise RpcError(TIMED_OUT, f"no answer to initialize within {timeout:g} s") from None
            raise
        if result.protocol_version != PROTOCOL_VERSION:
            raise StartError(
                f"plugin speaks protocolVersion {result.protocol_version}, the host speaks {PROTOCOL_VERSION}"
            )
        with anyio.move_on_after(max(deadline - anyio.current_time(), 0.001)) as scope:
            await proc.notify("initialized", {})
        if scope.cancelled_caught:
            raise RpcError(TIMED_OUT, "could not send initialized within the handshake timeout")
        return result

    async def _handshake_failed(self, proc: PluginProcess, exc: Exception) -> None:
        if isinstance(exc, RpcError) and exc.code == UNAVAILABLE and not proc.exited:
            with anyio.move_on_after(1):  # stdout closed: the exit usually follows at once
                await proc.wait()
        if proc.exited:
            code = proc.returncode
            message = self._exit_message(f"exited with code {code} during the handshake")
            self._failed(f"start failed: {message}", crashed=True, exit_code=code)
            return
        self._failed(f"start failed: {exc}", crashed=False)
        # a plugin that answered can be stopped politely; a silent one is killed
        answered = not (isinstance(exc, RpcError) and exc.code == TIMED_OUT)
        await proc.stop(graceful=answered)

    def _running(self, proc: PluginProcess, result: InitializeResult) -> None:
        self.initialize_result = result
        if self._attempt is not None:
            # a start or restart someone asked for succeeded: the old failure is history (an automatic
            # recovery keeps it, so the admin still sees why the plugin restarted)
            self.last_error = None
        self.started_at = self.clock.time()
        self.health = "ok"
        self.policy.on_started(self.clock.monotonic())
        self._set_state("running")
        if self._attempt is not None:
            self._attempt.finish(result=result)
            self._attempt = None

    def _exit_message(self, what: str) -> str:
        message = f"plugin {self.spec.plugin_id} {what}"
        last = self._stderr_ring.tail(1)
        if last:
            message += f" (stderr: {last[0][:300]})"
        return message

    def _failed(self, message: str, *, crashed: bool, exit_code: int | None = None) -> None:
        """Record a failure and decide what comes next (state, next attempt time)."""
        now = self.clock.monotonic()
        self.last_error = self.redactor(message)
        self.last_error_at = self.clock.time()
        self.health = None
        if crashed:
            self.counters.crashes += 1
            self._emit("crash", exitCode=exit_code, error=self.last_error)
        self.logger.warning("plugin %s: %s", self.spec.plugin_id, log_safe(self.last_error))
        attempt = self._attempt
        if attempt is not None:
            self._attempt = None
            attempt.finish(error=StartError(self.last_error))
            if not self._retry_first:
                self._next_attempt_at = None
                self._set_state("stopped")
                return
        delay = self.policy.on_failure(now)
        if delay is None:
            self._next_attempt_at = now + self.policy.circuit_retry
            self._set_state("failed")
            self._emit("circuit_open", retryIn=self.policy.circuit_retry)
        else:
            self._next_attempt_at = now + delay
            self._set_state("backoff")

    async def _watch(self, proc: PluginProcess) -> str | None:
        """Until the process exits (None) or fails its health checks (the reason)."""
        outcome: list[str | None] = []
        async with anyio.create_task_group() as tg:

            async def exit_watch() -> None:
                await proc.wait()
                outcome.append(None)
                tg.cancel_scope.cancel()

            async def health_watch() -> None:
                outcome.append(await self._health_loop(proc))
                tg.cancel_scope.cancel()

            tg.start_soon(exit_watch)
            tg.start_soon(health_watch)
            if self._resume_after_start:
                rest, self._resume_after_start = self._resume_after_start, []
                tg.start_soon(self._resume_rest, rest)
        return outcome[0] if outcome else None

    async def _resume_rest(self, rest: list[ConnectionInfo]) -> None:
        """The connections left out of initialize, handed over one `connection.resume` each (SPEC 10)."""
        not_resumed: list[tuple[ConnectionInfo, str]] = []
        unsupported = anyio.Event()
        send, receive = anyio.create_memory_object_stream[ConnectionInfo](len(rest))
        for info in rest:
            send.send_nowait(info)
        send.close()

        async def worker() -> None:
            async for info in receive:
                if unsupported.is_set():
                    not_resumed.append((info, "it does not implement connection.resume"))
                    continue
                try:
                    await self.call("connection.resume", info, result_type=Empty)
                except RpcError as exc:
                    if exc.code == METHOD_NOT_FOUND:
                        unsupported.set()
                        not_resumed.append((info, "it does not implement connection.resume"))
                    elif exc.code == UNAVAILABLE:
                        return  # the process is gone: its next start resumes them all again
                    else:
                        not_resumed.append((info, exc.message))

        async with receive, anyio.create_task_group() as tg:
            for _ in range(min(_RESUME_CONCURRENCY, len(rest))):
                tg.start_soon(worker)
        if not_resumed:
            reasons = sorted({reason for _, reason in not_resumed})
            ids = ", ".join(info.connection_id for info, _ in not_resumed[:5])
            more = f" and {len(not_resumed) - 5} more" if len(not_resumed) > 5 else ""
            self.last_error = self.redactor(
                f"{len(not_resumed)} of {len(rest)} connection(s) that did not fit in initialize were not resumed "
                f"({ids}{more}): {'; '.join(reasons)[:500]}"
            )
            self.logger.warning("plugin %s: %s", self.spec.plugin_id, log_safe(self.last_error))
            self._emit("resume_incomplete", notResumed=len(not_resumed))

    async def _health_loop(self, proc: PluginProcess) -> str:
        interval = self.manifest.health_interval_ms / 1000.0
        timeout = self.manifest.timeouts.health_ms / 1000.0
        failures = 0
        while True:
            await self.clock.sleep(interval)
            sent = _monotonic()
            try:
                result: HealthResult = await proc.call("health", {}, timeout=timeout, result_type=HealthResult)
                self._record_latency("health", sent)
                status, detail = result.status, result.detail or ""
            except RpcError as exc:
                if exc.code == TIMED_OUT:
                    self.counters.timeouts += 1
                elif exc.code == UNAVAILABLE:
                    with anyio.move_on_after(1):  # stdout closed: the exit usually follows at once
                        await proc.wait()
                elif exc.code not in _LOCAL_CODES:
                    self._record_latency("health", sent)
                status, detail = "error", exc.message
            if proc.exited:
                await anyio.sleep_forever()  # the exit watcher reports it
            if status in ("ok", "degraded"):
                failures = 0
                self.health = status
                self.policy.on_healthy(self.clock.monotonic())
                self._set_state("running" if status == "ok" else "degraded")
                continue
            failures += 1
            self.health = "error"
            self.policy.on_unhealthy()
            self._emit("health_failed", failures=failures, detail=self.redactor(detail))
            if failures >= UNHEALTHY_THRESHOLD:
                return f"{failures} consecutive failed health checks (last: {detail})"

    # ---------------------------------------------------------------- plugin -> host

    async def _handle_request(self, method: str, params: msgspec.Raw | None, ctx: RequestContext) -> Any:
        return await dispatch_request(self._services, self.spec.plugin_id, method, params)

    async def _handle_notification(self, method: str, params: msgspec.Raw | None) -> None:
        if method == "log":
            self._plugin_log(params)
            return
        await dispatch_notification(self._services, self.spec.plugin_id, method, params)

    def _register_secrets(self, method: str, params: msgspec.Raw | None) -> None:
        """In the read loop: credentials are known secrets before anything the plugin says next is logged."""
        if method != "session.update" or params is None:
            return
        try:
            update = msgspec.json.decode(params, type=_Credentials)
        except msgspec.DecodeError:
            return  # the dispatcher reports the bad params
        if update.credentials:
            shown = [v for v in (update.account_id, update.display_name) if isinstance(v, str)]
            self.redactor.add(*credential_secrets(update.credentials, public=shown))

    def _plugin_log(self, params: msgspec.Raw | None) -> None:
        try:
            entry = msgspec.json.decode(params or b"{}", type=LogParams)
        except msgspec.DecodeError:
            self.logger.warning("plugin %s sent an invalid log notification", self.spec.plugin_id)
            return
        level = logging.getLevelName(entry.level.upper())
        if not isinstance(level, int):
            level = logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        budget = self._log_budget
        dropped = budget.dropped
        if not budget.take(anyio.current_time()):
            return
        if dropped:
            budget.dropped = 0
            self.logger.warning("plugin %s: %d log notifications not logged (flood)", self.spec.plugin_id, dropped)
        text = entry.message
        if entry.fields:
            text += " " + msgspec.json.encode(entry.fields).decode()
        self.logger.log(level, "%s", log_safe(self.redactor(text)))

    def _handle_violation(self, kind: str, head: bytes) -> None:
        if kind == "oversized":
            self.counters.oversized_messages += 1
        else:
            self.counters.protocol_violations += 1
        self._violations_logged += 1
        n = self._violations_logged
        if n <= _VIOLATION_LOG_FIRST or n % _VIOLATION_LOG_EVERY == 0:
            self.logger.warning(
                "plugin %s: %s on stdout (#%d this run), starts with: %s",
                self.spec.plugin_id,
                kind,
                n,
                log_safe(self.redactor(head[:200].decode("utf-8", "replace"))),
            )
        self._emit("violation", kind=kind)

    # ---------------------------------------------------------------- events

    def _set_state(self, state: State) -> None:
        previous = self.state
        if previous == state:
            return
        self.state = state
        self.logger.info("plugin %s: %s -> %s", self.spec.plugin_id, previous, state)
        self._emit("state", state=state, previous=previous)

    def _emit(self, event: str, **data: Any) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(self, event, data)
        except Exception:
            log.exception("plugin %s: event hook failed on %s", self.spec.plugin_id, event)


def _rfc3339(wall: float | None) -> str | None:
    return None if wall is None else datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
