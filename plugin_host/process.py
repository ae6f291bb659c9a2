"""One plugin child process: spawn with SPEC 5.3 isolation, stderr ring, stop sequence of SPEC 3.2.

The pipes are created here (not by asyncio) and wrapped in `plugin_host.streams`
fd streams: closing stdin then takes effect at once even when the plugin stopped
reading it, and waiting for the exit never depends on pipe EOF (a grandchild may
hold stdout/stderr open long after the plugin died).

Limits of the stop sequence: signals go to the plugin's process group (pgid ==
pid, new session). A descendant that left the group (its own `setsid()`) is out
of reach of the host and survives the stop; the plugin is responsible for it.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

import plugin_host

from .errors import UNAVAILABLE, RpcError
from .manifest import Manifest
from .redact import Redactor
from .rpc import Connection, NotificationHandler, RequestHandler, ViolationHook
from .streams import FdReceiveStream, FdSendStream

RESERVED_ENV_PREFIX = "CHANNEL_RUNTIME_"
PASSTHROUGH_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
# set by the host; a manifest cannot override them with host values
FIXED_ENV = frozenset({"HOME", "TMPDIR", "PLUGIN_DIR", "PYTHONPATH"})
STDERR_RING_LINES = 1000
STDERR_LINE_BYTES = 4096
_READ_CHUNK = 65_536
_GROUP_POLL = 0.02
# after the plugin exits, how long its stdout may take to reach EOF before calls fail anyway
_EOF_GRACE = 0.25

log = logging.getLogger(__name__)


class LaunchError(Exception):
    """The plugin cannot be started: bad runtime command, missing program, spawn failure."""


@dataclass(frozen=True)
class LaunchSpec:
    plugin_id: str
    version: str
    version_dir: Path  # extracted package (contains plugin.json)
    data_dir: Path  # <home>/plugin-data/<id>/: cwd, HOME, stateDir; <data_dir>/tmp is TMPDIR
    manifest: Manifest
    host_env: Mapping[str, str] | None = None  # defaults to os.environ
    python: str = sys.executable


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
    """The last lines of a plugin's stderr, redacted on the way out.

    A line is redacted once, when first read (`tail`) or forwarded to the log:
    a plugin flooding stderr costs the host a line split per line, not a
    regex pass, and secrets registered later are still masked. Each line keeps
    its arrival time and a sequence number unique in this process (so a reader
    asks only for what is newer, across rings of one plugin).
    """

    def __init__(self, redactor: Redactor | None = None, maxlen: int = STDERR_RING_LINES) -> None:
        self.redactor = redactor or Redactor()
        # [text, redacted?, arrival wall time, sequence number]
        self._lines: collections.deque[list[Any]] = collections.deque(maxlen=maxlen)

    def __len__(self) -> int:
        return len(self._lines)

    def append(self, text: str) -> list[Any]:
        # a label for the admin, not logic: the wall clock is enough
        entry = [text, False, time.time(), next(_LINE_SEQUENCE)]
        self._lines.append(entry)
        return entry

    def redacted(self, entry: list[Any]) -> str:
        if not entry[1]:
            entry[0] = self.redactor(entry[0])
            entry[1] = True
        return entry[0]

    def tail(self, n: int) -> list[str]:
        return [line.text for line in self.entries(n)]

    def entries(self, n: int, after: int = 0) -> list[LogLine]:
        """The last `n` lines with a sequence number above `after`, oldest first."""
        if n <= 0:
            return []
        entries = [e for e in list(self._lines)[-n:] if e[3] > after]
        return [LogLine(seq=entry[3], at=entry[2], text=self.redacted(entry)) for entry in entries]


class _LogBudget:
    """Token bucket for forwarding stderr lines to the host's log (a flood must not flood it)."""

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


def _sdk_root() -> str:
    """The folder holding the `plugin_host` package, so `from plugin_host.sdk import Plugin` works."""
    return str(Path(plugin_host.__file__).resolve().parent.parent)


def build_command(spec: LaunchSpec) -> list[str]:
    """The argv of SPEC 4 `runtime`; raises `LaunchError` with the rule that was broken."""
    runtime = spec.manifest.runtime
    if runtime.type == "python":
        if not runtime.module:
            raise LaunchError(f"plugin {spec.plugin_id}: runtime python needs a module")
        return [spec.python, "-m", runtime.module]
    if not runtime.command:
        raise LaunchError(f"plugin {spec.plugin_id}: runtime command needs a non-empty command")
    root = spec.version_dir.resolve()
    argv: list[str] = []
    for i, element in enumerate(runtime.command):
        if element.startswith("./"):
            resolved = (root / element).resolve()
            if not resolved.is_relative_to(root):
                raise LaunchError(f"plugin {spec.plugin_id}: command element {element!r} leaves the plugin folder")
            argv.append(str(resolved))
        elif i == 0:
            if os.sep in element or (os.altsep and os.altsep in element):
                raise LaunchError(
                    f"plugin {spec.plugin_id}: the program {element!r} must start with ./ "
                    "(inside the plugin) or be a bare name found on PATH"
                )
            path = _host_env(spec).get("PATH")
            found = shutil.which(element, path=path)
            if found is None:
                raise LaunchError(f"plugin {spec.plugin_id}: program {element!r} not found on PATH")
            argv.append(found)
        else:
            argv.append(element)
    return argv


def _host_env(spec: LaunchSpec) -> Mapping[str, str]:
    return os.environ if spec.host_env is None else spec.host_env


def build_env(spec: LaunchSpec) -> dict[str, str]:
    """Exactly the environment of SPEC 5.3: nothing of the host leaks unless listed."""
    host = _host_env(spec)
    env: dict[str, str] = {}
    for name in PASSTHROUGH_ENV:
        if name in host:
            env[name] = host[name]
    for name in spec.manifest.env:
        if name.startswith(RESERVED_ENV_PREFIX) or name in FIXED_ENV:
            continue
        if name in host:
            env[name] = host[name]
    env["HOME"] = str(spec.data_dir)
    env["TMPDIR"] = str(spec.data_dir / "tmp")
    env["PLUGIN_DIR"] = str(spec.version_dir)
    if spec.manifest.runtime.type == "python":
        env["PYTHONPATH"] = os.pathsep.join([str(spec.version_dir), str(spec.version_dir / "lib"), _sdk_root()])
    return env


class PluginProcess:
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
        self._log_budget = _LogBudget()
        self._on_request = on_request
        self._on_notification = on_notification
        self._on_violation = on_violation
        self._process: anyio.abc.Process | None = None
        self._pid: int | None = None
        self._stdin: FdSendStream | None = None
        self._stdin_fd: int | None = None  # open until `_close_stdin`
        self._stdout: FdReceiveStream | None = None
        self._stderr: FdReceiveStream | None = None
        self._conn: Connection | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._reader_scopes: list[anyio.CancelScope] = []
        self._readers_cancelled = False
        self._exited = anyio.Event()
        self._serve_done = anyio.Event()
        self._stop_done = anyio.Event()
        self._stopping = False
        self._group_gone = False
        self.command: list[str] = []
        self.env: dict[str, str] = {}

    # ---------------------------------------------------------------- public API

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

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
        assert self._process is not None and self._process.returncode is not None
        return self._process.returncode

    async def __aenter__(self) -> PluginProcess:
        await self._spawn()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        # start_soon, not start: `TaskGroup.start` cancelled by the owner would wait for a
        # shielded reader to end, which only happens at teardown (a deadlock)
        tg.start_soon(self._shielded, self._serve_connection)
        tg.start_soon(self._shielded, self._drain_stderr)
        tg.start_soon(self._shielded, self._watch_exit)
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        try:
            with anyio.CancelScope(shield=True):
                await self.stop()
        except Exception:
            log.exception("plugin %s: stop failed", self.spec.plugin_id)
        # the readers are ours: the owner's exception propagates as is, not inside a group
        await self._close_tasks()
        return None

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
        self.command = build_command(spec)
        self.env = build_env(spec)
        spec.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (spec.data_dir / "tmp").mkdir(exist_ok=True, mode=0o700)
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        try:
            self._process = await anyio.open_process(
                self.command,
                stdin=stdin_r,
                stdout=stdout_w,
                stderr=stderr_w,
                cwd=str(spec.data_dir),
                env=self.env,
                start_new_session=True,
            )
        except BaseException as exc:
            for fd in (stdin_w, stdout_r, stderr_r):
                os.close(fd)
            if isinstance(exc, OSError):
                raise LaunchError(f"plugin {spec.plugin_id}: cannot start {self.command[0]!r}: {exc}") from exc
            raise
        finally:
            for fd in (stdin_r, stdout_w, stderr_w):
                os.close(fd)
        self._pid = self._process.pid
        self._stdin_fd = stdin_w
        self._stdin = FdSendStream(stdin_w)
        self._stdout = FdReceiveStream(stdout_r)
        self._stderr = FdReceiveStream(stderr_r)
        kwargs: dict[str, Any] = {}
        if self._on_request is not None:
            kwargs["on_request"] = self._on_request
        if self._on_notification is not None:
            kwargs["on_notification"] = self._on_notification
        self._conn = Connection(
            self._stdout,
            self._stdin,
            max_message_bytes=spec.manifest.limits.max_message_bytes,
            on_violation=self._on_violation,
            name=f"plugin {spec.plugin_id}",
            # the plugin's own requests (event.inbound, ...): bounded so a flood cannot fan out
            max_incoming=spec.manifest.limits.max_concurrency + 256,
            **kwargs,
        )
        self.logger.debug("started plugin %s %s (pid %s)", spec.plugin_id, spec.version, self._pid)

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
        assert self._stderr is not None
        limit = STDERR_LINE_BYTES
        partial = bytearray()
        skipping = False  # inside a line already cut at `limit`
        while True:
            try:
                chunk = await self._stderr.receive(_READ_CHUNK)
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
        entry = self._stderr_ring.append(text)
        if self.logger.isEnabledFor(logging.INFO):
            budget = self._log_budget
            dropped = budget.dropped
            if budget.take(anyio.current_time()):
                if dropped:
                    budget.dropped = 0
                    self.logger.warning(
                        "plugin %s: %d stderr lines not logged (flood); see its logs", self.spec.plugin_id, dropped
                    )
                self.logger.info("%s", self._stderr_ring.redacted(entry))

    async def _watch_exit(self) -> None:
        assert self._process is not None and self._conn is not None
        code = await self._process.wait()
        self._exited.set()
        self.logger.debug("plugin %s (pid %s) exited with code %s", self.spec.plugin_id, self._pid, code)
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
        if self._process is None:
            return
        conn = self._conn
        if graceful and not self.exited and conn is not None and not conn.closed:
            with anyio.move_on_after(self.shutdown_timeout + 0.5):
                try:
                    await conn.call("shutdown", {}, timeout=self.shutdown_timeout)
                except RpcError:
                    pass
        await self._close_stdin()
        if graceful and not self.exited:
            with anyio.move_on_after(self.exit_timeout):
                await self._exited.wait()
        if self._group_alive():
            if graceful:
                self._signal_group(signal.SIGTERM)
                await self._wait_group_gone(self.term_timeout)
            if self._group_alive():
                self._signal_group(signal.SIGKILL)
                await self._wait_group_gone(self.kill_timeout)
        # always reap
        with anyio.move_on_after(self.kill_timeout):
            await self._process.wait()
        if self._process.returncode is None:
            log.error("plugin %s: pid %s could not be reaped", self.spec.plugin_id, self._pid)
        if conn is not None:
            conn.fail_pending(RpcError(UNAVAILABLE, self._gone_message()))

    async def _close_stdin(self) -> None:
        if self._stdin is not None and self._stdin_fd is not None:
            # wake the connection's writer if it waits on a full pipe, before the fd goes
            anyio.notify_closing(self._stdin_fd)
            self._stdin_fd = None
            await self._stdin.aclose()

    def _signal_group(self, sig: int) -> None:
        assert self._pid is not None
        try:
            os.killpg(self._pid, sig)
        except ProcessLookupError:
            self._group_gone = True
        except PermissionError:
            log.warning("plugin %s: not allowed to signal process group %s", self.spec.plugin_id, self._pid)

    def _group_alive(self) -> bool:
        """Is any live (non-zombie) process left in the plugin's group, its leader included?"""
        if self._pid is None or self._group_gone:
            return False
        if not self.exited:
            return True
        try:
            os.killpg(self._pid, 0)
        except ProcessLookupError:
            self._group_gone = True
            return False
        except PermissionError:
            return True
        # killpg also reaches zombies, which the container's init may never reap
        members = _live_group_members(self._pid)
        if members is None:
            return True
        if not members:
            self._group_gone = True
            return False
        return True

    async def _wait_group_gone(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            while self._group_alive():
                # there is no OS event for "process group empty"; poll briefly
                await anyio.sleep(_GROUP_POLL)

    async def _close_tasks(self) -> None:
        self._readers_cancelled = True
        for scope in self._reader_scopes:
            scope.cancel()
        try:
            if self._tg is not None:
                await self._tg.__aexit__(None, None, None)
        finally:
            self._tg = None
            await self._close_stdin()
            for stream in (self._stdout, self._stderr):
                if stream is not None:
                    await stream.aclose()  # idempotent
            transport = getattr(self._process, "_transport", None)
            if transport is not None and self.returncode is not None:
                transport.close()


def _live_group_members(pgid: int) -> list[int] | None:
    """Pids of non-zombie processes whose process group is `pgid`; None without /proc."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    members: list[int] = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) >= 3 and fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid:
            members.append(int(entry))
    return members
