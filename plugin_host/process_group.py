"""One child process in its own process group, with pipes we own: spawn, signal the group, reap.

Every child the host or the SDK starts (plugins, the conformance run, the test
harness, vendor commands) goes through `spawn(plan)`:

    child = await spawn(LaunchPlan(argv, env, cwd))     # new session: pgid == pid
    await child.stdin.send(b"...")                      # FdSendStream / FdReceiveStream (or None)
    code = await child.wait()                           # the exit, never pipe EOF
    await child.kill_group(term_timeout=3.0)            # SIGTERM -> wait -> SIGKILL -> wait -> reap
    await child.aclose()                                # our pipe ends

The pipes are created here (not by asyncio) so that waiting for the exit never
depends on pipe EOF: on Python 3.11 asyncio's `Process.wait()` also waits for
its pipes to close, and a grandchild holding stdout would make a dead child look
hung. Closing stdin takes effect at once even when the child stopped reading it.

A `LaunchPlan` is a plain value: a sandbox (an argv prefix, a uid, limits) is a
function from plan to plan, applied where the plan is made (`plugin_host.launch`).

Limits: signals reach the child's process group (pgid == pid, new session). A
descendant that left the group (its own `setsid()`) is out of reach and survives.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc

from .streams import FdReceiveStream, FdSendStream

KILL_TIMEOUT = 5.0
_GROUP_POLL = 0.02

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchPlan:
    """Exactly what is executed: argv, environment (None: inherit ours), working directory, extra fds."""

    argv: tuple[str, ...]
    env: Mapping[str, str] | None
    cwd: Path
    pass_fds: tuple[int, ...] = field(default=())


class GroupProcess:
    """A spawned child, leader of its own process group; `spawn()` makes one."""

    def __init__(
        self,
        process: anyio.abc.Process,
        stdin: FdSendStream | None,
        stdout: FdReceiveStream | None,
        stderr: FdReceiveStream | None,
    ) -> None:
        self.process = process
        self.pid = process.pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._group_gone = False

    @property
    def returncode(self) -> int | None:
        """The exit code once the child was reaped, else None."""
        return self.process.returncode

    async def wait(self) -> int:
        """Wait for the child's exit (not for its pipes to close); its exit code."""
        return await self.process.wait()

    async def close_stdin(self) -> None:
        """EOF on the child's stdin, at once (idempotent)."""
        if self.stdin is not None:
            await self.stdin.aclose()

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            self._group_gone = True
        except PermissionError:
            log.warning("not allowed to signal process group %s", self.pid)

    def group_alive(self) -> bool:
        """Is any live (non-zombie) process left in the group, its leader included?"""
        if self._group_gone:
            return False
        if self.returncode is None:
            return True
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            self._group_gone = True
            return False
        except PermissionError:
            return True
        # killpg also reaches zombies, which the container's init may never reap
        members = live_group_members(self.pid)
        if members is None:
            return True
        if not members:
            self._group_gone = True
            return False
        return True

    async def wait_group_gone(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the group to empty; whether it did."""
        with anyio.move_on_after(timeout):
            while self.group_alive():
                # there is no OS event for "process group empty"; poll briefly
                await anyio.sleep(_GROUP_POLL)
        return not self.group_alive()

    async def kill_group(self, *, term_timeout: float | None = None, kill_timeout: float = KILL_TIMEOUT) -> int | None:
        """Stop the whole group and reap the child; never hangs, whatever the caller's cancellation.

        SIGTERM (skipped when `term_timeout` is None), wait up to `term_timeout`
        for the group to empty, SIGKILL, wait up to `kill_timeout`, reap. Returns
        the exit code (None only if the child could not be reaped).
        """
        with anyio.CancelScope(shield=True):
            if self.group_alive():
                if term_timeout is not None:
                    self.signal_group(signal.SIGTERM)
                    await self.wait_group_gone(term_timeout)
                if self.group_alive():
                    self.signal_group(signal.SIGKILL)
                    await self.wait_group_gone(kill_timeout)
            with anyio.move_on_after(kill_timeout):
                await self.process.wait()
        if self.returncode is None:
            log.error("pid %s could not be reaped", self.pid)
        return self.returncode

    async def aclose(self) -> None:
        """Close our pipe ends (waking any task blocked on them) and release the transport."""
        with anyio.CancelScope(shield=True):
            for stream in (self.stdin, self.stdout, self.stderr):
                if stream is not None:
                    await stream.aclose()  # idempotent
        transport = getattr(self.process, "_transport", None)
        if transport is not None and self.returncode is not None:
            transport.close()


async def spawn(plan: LaunchPlan, *, stdin: bool = True, stdout: bool = True, stderr: bool = True) -> GroupProcess:
    """Start `plan` in a new session; each stream is our pipe (True) or /dev/null (False).

    Raises OSError when the program cannot be executed (nothing is left open).
    """
    ours: list[int] = []  # our ends, handed to the GroupProcess
    theirs: list[int] = []  # the child's ends, closed here once it has them
    fds: list[int] = []  # what the child gets as 0, 1, 2
    try:
        for wanted, child_reads in ((stdin, True), (stdout, False), (stderr, False)):
            if not wanted:
                fds.append(subprocess.DEVNULL)
                ours.append(-1)
                continue
            r, w = os.pipe()
            mine, child = (w, r) if child_reads else (r, w)
            ours.append(mine)
            theirs.append(child)
            fds.append(child)
        process = await anyio.open_process(
            list(plan.argv),
            stdin=fds[0],
            stdout=fds[1],
            stderr=fds[2],
            cwd=str(plan.cwd),
            env=plan.env,
            start_new_session=True,
            pass_fds=plan.pass_fds,
        )
    except BaseException:
        for fd in ours:
            if fd >= 0:
                os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    return GroupProcess(
        process,
        FdSendStream(ours[0]) if ours[0] >= 0 else None,
        FdReceiveStream(ours[1]) if ours[1] >= 0 else None,
        FdReceiveStream(ours[2]) if ours[2] >= 0 else None,
    )


@asynccontextmanager
async def open_group_process(
    plan: LaunchPlan,
    *,
    stdin: bool = True,
    stdout: bool = True,
    stderr: bool = True,
    term_timeout: float | None = None,
    kill_timeout: float = KILL_TIMEOUT,
) -> AsyncIterator[GroupProcess]:
    """`spawn(plan)` for the length of a block; leaving it kills the group, reaps, closes the pipes."""
    child = await spawn(plan, stdin=stdin, stdout=stdout, stderr=stderr)
    try:
        yield child
    finally:
        try:
            await child.kill_group(term_timeout=term_timeout, kill_timeout=kill_timeout)
        finally:
            await child.aclose()


def live_group_members(pgid: int) -> list[int] | None:
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
