"""plugin_host.process_group: spawn in a new session with our own pipes, stop the group, always reap."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio
import pytest

from plugin_host.process_group import LaunchPlan, open_group_process, spawn
from tests.fault_plugins import live_group_members, proc_alive

pytestmark = pytest.mark.anyio

# a hang guard for the awaits below, not a measurement
GUARD = 20


def sh(script: str, cwd: Path, env: dict[str, str] | None = None) -> LaunchPlan:
    return LaunchPlan(("sh", "-c", script), {"PATH": os.environ["PATH"], **(env or {})}, cwd)


async def wait_gone(*pids: int) -> None:
    with anyio.fail_after(GUARD):
        while any(proc_alive(pid) for pid in pids):
            await anyio.sleep(0.02)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_runs_in_its_own_session_with_the_plan_env_and_cwd(tmp_path: Path) -> None:
    # the child waits for its stdin's EOF: it is still alive (not reaped) when its session is read
    plan = sh('read -r _; echo "$GREETING $(pwd)"; echo oops >&2', tmp_path, {"GREETING": "hello"})
    async with open_group_process(plan) as child:
        assert os.getsid(child.pid) == child.pid and os.getpgid(child.pid) == child.pid
        assert child.stdout is not None and child.stderr is not None
        await child.close_stdin()
        with anyio.fail_after(GUARD):
            out = b"".join([chunk async for chunk in child.stdout])
            err = b"".join([chunk async for chunk in child.stderr])
            assert await child.wait() == 0
    assert out == f"hello {tmp_path}\n".encode() and err == b"oops\n"
    assert child.returncode == 0


async def test_exit_is_seen_although_a_grandchild_holds_the_pipes(tmp_path: Path) -> None:
    plan = sh("sleep 300 & echo $! > grandchild.pid; exit 3", tmp_path)
    child = await spawn(plan)
    try:
        with anyio.fail_after(GUARD):
            assert await child.wait() == 3
        grandchild = int((tmp_path / "grandchild.pid").read_text())
        assert proc_alive(grandchild) and child.group_alive()
        assert await child.kill_group(term_timeout=1.0) == 3
        await wait_gone(grandchild)
        assert not child.group_alive() and live_group_members(child.pid) == []
    finally:
        await child.aclose()


async def test_sigterm_first_then_sigkill_for_a_group_that_ignores_it(tmp_path: Path) -> None:
    polite = await spawn(sh("sleep 300", tmp_path))
    stubborn = await spawn(sh("trap '' TERM; echo ready; while :; do sleep 0.1; done", tmp_path))
    try:
        assert stubborn.stdout is not None
        with anyio.fail_after(GUARD):
            assert await stubborn.stdout.receive() == b"ready\n"  # the trap is set
        assert await polite.kill_group(term_timeout=GUARD) == -signal.SIGTERM
        assert await stubborn.kill_group(term_timeout=0.2) == -signal.SIGKILL
        assert not stubborn.group_alive()
    finally:
        await polite.aclose()
        await stubborn.aclose()


async def test_kill_group_without_sigterm_kills_at_once(tmp_path: Path) -> None:
    child = await spawn(sh("trap 'exit 0' TERM; sleep 300 & wait", tmp_path))
    try:
        assert await child.kill_group() == -signal.SIGKILL
    finally:
        await child.aclose()


async def test_closing_stdin_is_eof_and_devnull_is_empty(tmp_path: Path) -> None:
    async with open_group_process(LaunchPlan(("cat",), None, tmp_path)) as child:
        assert child.stdin is not None and child.stdout is not None
        await child.stdin.send(b"ping\n")
        with anyio.fail_after(GUARD):
            assert await child.stdout.receive() == b"ping\n"
            await child.close_stdin()
            assert await child.wait() == 0
    async with open_group_process(LaunchPlan(("cat",), None, tmp_path), stdin=False, stderr=False) as child:
        assert child.stdin is None and child.stderr is None and child.stdout is not None
        with anyio.fail_after(GUARD):
            assert await child.wait() == 0
            assert [chunk async for chunk in child.stdout] == []


async def test_leaving_the_block_kills_the_group_even_when_cancelled(tmp_path: Path) -> None:
    with anyio.move_on_after(0.5):
        async with open_group_process(sh("sleep 300 & echo $! > bg.pid; sleep 300", tmp_path)) as child:
            with anyio.fail_after(GUARD):
                while not (tmp_path / "bg.pid").exists():
                    await anyio.sleep(0.02)
            await anyio.sleep_forever()
    await wait_gone(child.pid, int((tmp_path / "bg.pid").read_text()))
    assert child.returncode == -signal.SIGKILL


async def test_a_program_that_cannot_start_leaves_no_fd_open(tmp_path: Path) -> None:
    before = open_fds()
    with pytest.raises(OSError):
        await spawn(LaunchPlan((str(tmp_path / "missing"),), None, tmp_path))
    with pytest.raises(OSError):
        await spawn(LaunchPlan(("sh",), None, tmp_path / "no-such-cwd"))
    assert open_fds() == before


async def test_aclose_wakes_a_reader_blocked_on_the_pipe(tmp_path: Path) -> None:
    child = await spawn(sh("sleep 300", tmp_path))
    assert child.stdout is not None
    stdout = child.stdout
    outcome: list[type[BaseException]] = []

    async def read() -> None:
        try:
            await stdout.receive()
        except anyio.ClosedResourceError as exc:
            outcome.append(type(exc))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await anyio.wait_all_tasks_blocked()
            await child.aclose()  # the child still holds its end: only closing ours can wake the reader
    finally:
        await child.kill_group()
    assert outcome == [anyio.ClosedResourceError]


async def test_pass_fds_reach_the_child(tmp_path: Path) -> None:
    """The seam a sandbox needs (e.g. bubblewrap's --info-fd): extra fds named in the plan."""
    r, w = os.pipe()
    try:
        code = f"import os; os.write({w}, b'via-fd\\n')"
        plan = LaunchPlan((sys.executable, "-c", code), None, tmp_path, pass_fds=(w,))
        async with open_group_process(plan) as child:
            with anyio.fail_after(GUARD):
                assert await child.wait() == 0
        os.close(w)
        w = -1
        assert os.read(r, 100) == b"via-fd\n"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
