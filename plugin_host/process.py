"""One plugin child process: SPEC 5.3 launch, stderr ring, stop sequence of SPEC 3.2.

What runs (command, environment, working directory) comes from `plugin_host.launch`;
spawning and killing the process group from `plugin_host.process_group`, whose
pipes are ours: closing stdin takes effect at once even when the plugin stopped
reading it, and waiting for the exit never depends on pipe EOF (a grandchild may
hold stdout/stderr open long after the plugin died).
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from .errors import UNAVAILABLE, RpcError
from .launch import LaunchError, LaunchSpec, prepare_launch
from .lifetime import owned_task_group
from .process_group import GroupProcess, LaunchPlan, spawn
from .redact import Redactor, log_safe
from .rpc import Connection, IncomingHook, NotificationHandler, RequestHandler, ViolationHook

__all__ = ["LaunchError", "LaunchSpec", "LogBudget", "PluginProcess", "StderrRing", "plugin_logger"]

STDERR_RING_LINES = 1000
STDERR_LINE_BYTES = 4096
_READ_CHUNK = 65_536
# after the plugin exits, how long its stdout may take to reach EOF before calls fail anyway
_EOF_GRACE = 0.25

log = logging.getLogger(__name__)


def plugin_logger(plugin_id: str) -> logging.Logger:
    return logging.getLogger(f"plugin_host.plugin.{plugin_id}")


@dataclass(frozen=True)
class LogLine:
    """One redacted stderr line: its sequence number, arrival time (epoch seconds) and text."""

    seq: int
    at: float
    text: str


_LINE_SEQUENCE = itertools.count(1)


class StderrRing:
    """The last lines of a plugin's stderr, kept raw and redacted on the way out.

    Every read (`tail`, `entries`) redacts with the secrets known at that moment: a
    credential the host learns after the line was written is masked all the same, and
    a flooding plugin costs the host a line split per line, not a regex pass. Each line
    keeps its arrival time and a sequence number unique in this process (so a reader
    asks only for what is newer, across rings of one plugin).
    """

    def __init__(self, redactor: Redactor | None = None, maxlen: int = STDERR_RING_LINES) -> None:
        self.redactor = redactor or Redactor()
        # (raw text, arrival wall time, sequence number)
        self._lines: collections.deque[tuple[str, float, int]] = collections.deque(maxlen=maxlen)

    def __len__(self) -> int:
        return len(self._lines)

    def append(self, text: str) -> None:
        # a label for the admin, not logic: the wall clock is enough
        self._lines.append((text, time.time(), next(_LINE_SEQUENCE)))

    def tail(self, n: int) -> list[str]:
        return [line.text for line in self.entries(n)]

    def entries(self, n: int, after: int = 0) -> list[LogLine]:
        """The last `n` lines with a sequence number above `after`, oldest first."""
        if n <= 0:
            return []
        lines = [line for line in list(self._lines)[-n:] if line[2] > after]
        return [LogLine(seq=seq, at=at, text=self.redactor(text)) for text, at, seq in lines]


class LogBudget:
    """Token bucket for forwarding a plugin's lines to the host's log (a flood must not flood it)."""

    def __init__(self, rate: float = 200.0, burst: float = 1000.0) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = 0.0
        self.dropped = 0

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.dropped += 1
        return False


class PluginProcess(anyio.AsyncContextManagerMixin):
    """One running plugin process and its JSON-RPC connection.

    Use as an async context manager: entering spawns the process and starts the
    readers (stdout connection, stderr drain, exit watcher); leaving runs `stop()`.
    The readers are shielded from the owner's cancellation, so the stop sequence
    can still talk to the plugin (`shutdown`) when the owner is being cancelled;
    they end when the stop sequence is over.
    """

    def __init__(
        self,
        spec: LaunchSpec,
        *,
        on_request: RequestHandler | None = None,
        on_notification: NotificationHandler | None = None,
        on_violation: ViolationHook | None = None,
        on_incoming: IncomingHook | None = None,
        redactor: Redactor | None = None,
        stderr_ring: StderrRing | None = None,
        shutdown_timeout: float = 2.0,
        exit_timeout: float = 2.0,
        term_timeout: float = 3.0,
        kill_timeout: float = 5.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.spec = spec
        self.shutdown_timeout = shutdown_timeout
        self.exit_timeout = exit_timeout
        self.term_timeout = term_timeout
        self.kill_timeout = kill_timeout
        self.redactor = redactor or Redactor()
        self.logger = logger or plugin_logger(spec.plugin_id)
        self._stderr_ring = stderr_ring if stderr_ring is not None else StderrRing(self.redactor)
        self._log_budget = LogBudget()
        self._on_request = on_request
        self._on_notification = on_notification
        self._on_violation = on_violation
        self._on_incoming = on_incoming
        self._child: GroupProcess | None = None
        self._conn: Connection | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._reader_scopes: list[anyio.CancelScope] = []
        self._readers_cancelled = False
        self._exited = anyio.Event()
        self._serve_done = anyio.Event()
        self._stop_done = anyio.Event()
        self._stopping = False
        self.plan: LaunchPlan | None = None

    # ---------------------------------------------------------------- public API

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    @property
    def returncode(self) -> int | None:
        return None if self._child is None else self._child.returncode

    @property
    def command(self) -> list[str]:
        return [] if self.plan is None else list(self.plan.argv)

    @property
    def env(self) -> dict[str, str]:
        return {} if self.plan is None or self.plan.env is None else dict(self.plan.env)

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    @property
    def connection(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("the plugin process is not started")
        return self._conn

    def logs(self, tail: int = 100) -> list[str]:
        """The last `tail` stderr lines, already redacted."""
        return self._stderr_ring.tail(tail)

    async def call(
        self, method: str, params: Any = None, *, timeout: float | None = None, result_type: Any = Any
    ) -> Any:
        """`Connection.call`, failing fast with -32002 once the process has exited."""
        if self.exited or self._stopping or self._conn is None:
            raise RpcError(UNAVAILABLE, self._gone_message())
        return await self._conn.call(method, params, timeout=timeout, result_type=result_type)

    async def notify(self, method: str, params: Any = None) -> None:
        if self.exited or self._stopping or self._conn is None:
            raise RpcError(UNAVAILABLE, self._gone_message())
        await self._conn.notify(method, params)

    async def wait(self) -> int:
        """Wait for the process to exit (not for its pipes to close); returns the exit code."""
        await self._exited.wait()
        assert self._child is not None and self._child.returncode is not None
        return self._child.returncode

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[PluginProcess]:
        """The process's life: spawned on entry; on exit the stop sequence of SPEC 3.2, then reaped."""
        await self._spawn()
        try:
            async with owned_task_group() as tg:
                self._tg = tg
                # start_soon, not start: `TaskGroup.start` cancelled by the owner would wait for a
                # shielded reader to end, which only happens at teardown (a deadlock)
                tg.start_soon(self._shielded, self._serve_connection)
                tg.start_soon(self._shielded, self._drain_stderr)
                tg.start_soon(self._shielded, self._watch_exit)
                try:
                    yield self
                finally:
                    try:
                        with anyio.CancelScope(shield=True):
                            await self.stop()
                    except Exception:
                        log.exception("plugin %s: stop failed", self.spec.plugin_id)
                    self._readers_cancelled = True
                    for scope in self._reader_scopes:
                        scope.cancel()
        finally:
            self._tg = None
            if self._child is not None:
                with anyio.CancelScope(shield=True):
                    await self._child.aclose()

    async def stop(self, *, graceful: bool = True) -> int | None:
        """The stop sequence of SPEC 3.2 step 5; never hangs, always reaps.

        graceful: `shutdown` (answer within `shutdown_timeout`), close stdin, wait
        `exit_timeout`, SIGTERM the group, wait `term_timeout`, SIGKILL the group.
        Not graceful (a hung plugin): close stdin and SIGKILL the group at once.
        Returns the exit code (None only if the process could not be reaped).
        """
        if self._stopping:
            await self._stop_done.wait()
            return self.returncode
        self._stopping = True
        with anyio.CancelScope(shield=True):
            try:
                await self._teardown(graceful=graceful)
            finally:
                self._stop_done.set()
        return self.returncode

    # ---------------------------------------------------------------- spawning

    async def _spawn(self) -> None:
        spec = self.spec
        self.plan = prepare_launch(spec)
        try:
            self._child = child = await spawn(self.plan)
        except OSError as exc:
            raise LaunchError(f"plugin {spec.plugin_id}: cannot start {self.plan.argv[0]!r}: {exc}") from exc
        assert child.stdin is not None and child.stdout is not None
        kwargs: dict[str, Any] = {}
        if self._on_request is not None:
            kwargs["on_request"] = self._on_request
        if self._on_notification is not None:
            kwargs["on_notification"] = self._on_notification
        self._conn = Connection(
            child.stdout,
            child.stdin,
            max_message_bytes=spec.manifest.limits.max_message_bytes,
            on_violation=self._on_violation,
            name=f"plugin {spec.plugin_id}",
            # the plugin's own requests (event.inbound, ...): bounded so a flood cannot fan out
            max_incoming=spec.manifest.limits.max_concurrency + 256,
            on_incoming=self._on_incoming,
            **kwargs,
        )
        self.logger.debug("started plugin %s %s (pid %s)", spec.plugin_id, spec.version, child.pid)

    # ---------------------------------------------------------------- readers

    async def _shielded(self, fn: Any) -> None:
        # The owner's cancellation must not stop the readers before the stop sequence ran.
        with anyio.CancelScope(shield=True) as scope:
            self._reader_scopes.append(scope)
            if self._readers_cancelled:  # started after the teardown began
                scope.cancel()
            try:
                await fn()
            except Exception:
                log.exception("plugin %s: %s failed", self.spec.plugin_id, getattr(fn, "__name__", fn))

    async def _serve_connection(self) -> None:
        assert self._conn is not None
        try:
            await self._conn.serve()
        finally:
            self._serve_done.set()

    async def _drain_stderr(self) -> None:
        assert self._child is not None and self._child.stderr is not None
        stderr = self._child.stderr
        limit = STDERR_LINE_BYTES
        partial = bytearray()
        skipping = False  # inside a line already cut at `limit`
        while True:
            try:
                chunk = await stderr.receive(_READ_CHUNK)
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                break
            start = 0
            while start < len(chunk):
                nl = chunk.find(b"\n", start)
                end = len(chunk) if nl < 0 else nl
                if not skipping:
                    partial += chunk[start : min(end, start + limit - len(partial) + 1)]
                    if len(partial) > limit:
                        self._stderr_line(bytes(partial[:limit]), truncated=True)
                        partial.clear()
                        skipping = True
                if nl < 0:
                    break
                if not skipping:
                    self._stderr_line(bytes(partial))
                partial.clear()
                skipping = False
                start = nl + 1
            # a flooding plugin must not starve the event loop: fd reads return without yielding
            await anyio.lowlevel.checkpoint()
        if partial and not skipping:
            self._stderr_line(bytes(partial))

    def _stderr_line(self, raw: bytes, truncated: bool = False) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        if truncated:
            text += " …[truncated]"
        self._stderr_ring.append(text)
        if self.logger.isEnabledFor(logging.INFO):
            budget = self._log_budget
            dropped = budget.dropped
            if budget.take(anyio.current_time()):
                if dropped:
                    budget.dropped = 0
                    self.logger.warning(
                        "plugin %s: %d stderr lines not logged (flood); see its logs", self.spec.plugin_id, dropped
                    )
                self.logger.info("%s", log_safe(self.redactor(text)))

    async def _watch_exit(self) -> None:
        assert self._child is not None and self._conn is not None
        code = await self._child.wait()
        self._exited.set()
        self.logger.debug("plugin %s (pid %s) exited with code %s", self.spec.plugin_id, self._child.pid, code)
        # Answers written just before the exit are still in the pipe: let the reader reach EOF,
        # but a grandchild holding stdout must not keep the in-flight calls waiting.
        with anyio.move_on_after(_EOF_GRACE):
            await self._serve_done.wait()
        self._conn.fail_pending(RpcError(UNAVAILABLE, self._gone_message()))

    def _gone_message(self) -> str:
        code = self.returncode
        if code is None:
            return f"plugin {self.spec.plugin_id} is stopping"
        return f"plugin {self.spec.plugin_id} exited with code {code}"

    # ---------------------------------------------------------------- stopping

    async def _teardown(self, *, graceful: bool) -> None:
        child = self._child
        if child is None:
            return
        conn = self._conn
        if graceful and not self.exited and conn is not None and not conn.closed:
            with anyio.move_on_after(self.shutdown_timeout + 0.5):
                try:
                    await conn.call("shutdown", {}, timeout=self.shutdown_timeout)
                except RpcError:
                    pass
        await child.close_stdin()
        if graceful and not self.exited:
            with anyio.move_on_after(self.exit_timeout):
                await self._exited.wait()
        code = await child.kill_group(
            term_timeout=self.term_timeout if graceful else None, kill_timeout=self.kill_timeout
        )
        if code is None:
            log.error("plugin %s: pid %s could not be reaped", self.spec.plugin_id, child.pid)
        if conn is not None:
            conn.fail_pending(RpcError(UNAVAILABLE, self._gone_message()))
