"""PluginProcess: SPEC 5.3 isolation, stderr ring, stop sequence of SPEC 3.2 (real child processes)."""

from __future__ import annotations

import logging
import os
import stat
import sys
from pathlib import Path

import anyio
import pytest

from plugin_host.errors import TIMED_OUT, UNAVAILABLE, RpcError
from plugin_host.launch import LaunchError, LaunchSpec, build_command, build_env
from plugin_host.process import STDERR_LINE_BYTES, PluginProcess
from tests.fault_plugins import make_spec, proc_alive

pytestmark = pytest.mark.anyio

FAST = {"shutdown_timeout": 0.5, "exit_timeout": 0.3, "term_timeout": 0.3}


def fast_process(spec: LaunchSpec, **kwargs) -> PluginProcess:
    return PluginProcess(spec, **{**FAST, **kwargs})


async def wait_dead(*pids: int, within: float = 5.0) -> None:
    with anyio.fail_after(within):
        while any(proc_alive(pid) for pid in pids):
            await anyio.sleep(0.02)


# ---------------------------------------------------------------- isolation


async def test_environment_is_exactly_the_allowed_set(tmp_path: Path) -> None:
    host_env = {
        "PATH": os.environ["PATH"],
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "CHANNEL_RUNTIME_ADMIN_TOKEN": "admin-secret-token",
        "CHANNEL_RUNTIME_SECRET_KEY": "k" * 32,
        "FEISHU_VENDOR_INSTALL_COMMAND": "feishu-cli install",
        "UNLISTED_SECRET": "nope",
        "HOME": "/root",
        "PYTHONPATH": "/host/only",
    }
    spec = make_spec(
        tmp_path,
        "well_behaved",
        manifest={"env": ["FEISHU_VENDOR_INSTALL_COMMAND", "CHANNEL_RUNTIME_ADMIN_TOKEN", "NOT_SET_ON_HOST", "HOME"]},
        host_env=host_env,
    )
    async with fast_process(spec) as proc:
        env = await proc.call("env", timeout=10)
        where = await proc.call("cwd", timeout=10)
    assert set(env) == {
        "PATH",
        "LANG",
        "LC_ALL",
        "TZ",
        "HOME",
        "TMPDIR",
        "PLUGIN_DIR",
        "PYTHONPATH",
        "FEISHU_VENDOR_INSTALL_COMMAND",
    }
    assert env["HOME"] == str(spec.data_dir)
    assert env["TMPDIR"] == str(spec.data_dir / "tmp")
    assert env["PLUGIN_DIR"] == str(spec.version_dir)
    assert env["FEISHU_VENDOR_INSTALL_COMMAND"] == "feishu-cli install"
    paths = env["PYTHONPATH"].split(os.pathsep)
    assert paths[:2] == [str(spec.version_dir), str(spec.version_dir / "lib")]
    assert "/host/only" not in paths
    assert where["cwd"] == str(spec.data_dir)
    assert (spec.data_dir / "tmp").is_dir()


async def test_python_runtime_can_import_the_sdk_package(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "well_behaved", host_env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8"})
    root = Path(build_env(spec)["PYTHONPATH"].split(os.pathsep)[-1])
    assert (root / "plugin_host" / "__init__.py").is_file()


async def test_command_runtime_resolves_inside_the_plugin_folder(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        "well_behaved",
        manifest={"runtime": {"type": "command", "command": ["./run.sh", "--flag"]}, "env": ["PLUGIN_PY"]},
        host_env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "PLUGIN_PY": sys.executable},
    )
    script = spec.version_dir / "run.sh"
    script.write_text('#!/bin/sh\nexec "$PLUGIN_PY" "$PLUGIN_DIR/well_behaved.py" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    assert build_command(spec) == [str(script.resolve()), "--flag"]
    async with fast_process(spec) as proc:
        env = await proc.call("env", timeout=10)
    assert "PYTHONPATH" not in env
    assert env["PLUGIN_PY"] == sys.executable


@pytest.mark.parametrize(
    "command, rule",
    [
        (["./../escape.sh"], r"runtime.command\[0\]: './../escape.sh' has a '..' component"),
        (["sh", "./../../x"], r"runtime.command\[1\]: './../../x' has a '..' component"),
        (["/bin/sh"], r"runtime.command\[0\]: '/bin/sh' is an absolute path"),
        (["sh", "/etc/passwd"], r"runtime.command\[1\]: '/etc/passwd' is an absolute path"),
        (["sub/dir/prog"], r"runtime.command\[0\]: 'sub/dir/prog' is not a file of the plugin"),
        (["well_behaved.py"], r"runtime.command\[0\]: program 'well_behaved.py' is not found on PATH"),
        (["./well_behaved.py"], r"runtime.command\[0\]: './well_behaved.py' is not executable"),
        (["definitely-not-a-program-xyz"], "not found on PATH"),
    ],
)
async def test_command_runtime_refusals(tmp_path: Path, command: list[str], rule: str) -> None:
    spec = make_spec(tmp_path, "well_behaved", manifest={"runtime": {"type": "command", "command": command}})
    with pytest.raises(LaunchError, match=rule):
        build_command(spec)
    with pytest.raises(LaunchError):
        async with fast_process(spec):
            pass


async def test_bare_program_is_found_on_the_host_path(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "well_behaved", manifest={"runtime": {"type": "command", "command": ["sh", "-c", "x"]}})
    argv = build_command(spec)
    assert Path(argv[0]).name == "sh" and Path(argv[0]).is_absolute()
    assert argv[1:] == ["-c", "x"]


async def test_own_process_group(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "well_behaved")
    async with fast_process(spec) as proc:
        assert proc.pid is not None
        assert os.getpgid(proc.pid) == proc.pid
        assert os.getsid(proc.pid) == proc.pid
    assert proc.returncode == 0
    assert not proc_alive(proc.pid)


# ---------------------------------------------------------------- stderr


async def test_stderr_lines_are_redacted_and_kept(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "well_behaved")
    async with fast_process(spec) as proc:
        await proc.call("stderr", {"text": "connecting with token=abc123secretvalue now"}, timeout=10)
        await proc.call("stderr", {"text": "second line"}, timeout=10)
        with anyio.fail_after(5):
            while len(proc.logs(10)) < 2:
                await anyio.sleep(0.01)
    lines = proc.logs(10)
    assert lines[-1] == "second line"
    assert "abc123secretvalue" not in lines[-2] and "[REDACTED]" in lines[-2]
    assert proc.logs(1) == ["second line"]
    assert proc.logs(0) == []


async def test_stderr_is_forwarded_to_the_plugin_logger_redacted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="plugin_host.plugin.well_behaved"):
        async with fast_process(make_spec(tmp_path, "well_behaved")) as proc:
            await proc.call("stderr", {"text": "Authorization: Bearer abcdefghijklmnop"}, timeout=10)
            with anyio.fail_after(5):
                while not [r for r in caplog.records if "Authorization" in r.getMessage()]:
                    await anyio.sleep(0.01)
    record = next(r for r in caplog.records if "Authorization" in r.getMessage())
    assert record.name == "plugin_host.plugin.well_behaved"
    assert "abcdefghijklmnop" not in record.getMessage()


async def test_exception_in_body_propagates_and_process_is_stopped(tmp_path: Path) -> None:
    proc = fast_process(make_spec(tmp_path, "well_behaved"))
    with pytest.raises(ZeroDivisionError):
        async with proc:
            raise ZeroDivisionError
    assert proc.returncode == 0
    assert not proc_alive(proc.pid)


async def test_stderr_flood_is_bounded_and_does_not_stall(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="plugin_host.plugin.stderr_flood")
    flood = fast_process(make_spec(tmp_path, "stderr_flood"))
    other = fast_process(make_spec(tmp_path, "well_behaved"))
    async with flood, other:
        await flood.call("flood", {"mb": 24}, timeout=10)
        answered = 0
        with anyio.fail_after(60):
            while not await flood.call("flood_done", timeout=30):
                # both the flooding plugin and another one keep answering meanwhile
                assert await flood.call("echo", {"n": answered}, timeout=30) == {"n": answered}
                assert await other.call("echo", {"n": answered}, timeout=30) == {"n": answered}
                answered += 1
            while not flood.logs(1) or flood.logs(1)[-1] != "flood finished":
                await anyio.sleep(0.01)
        lines = flood.logs(5000)
    assert len(lines) == 1000
    assert all(len(line.encode()) <= STDERR_LINE_BYTES + 64 for line in lines)
    assert not any("sk-live-0123456789abcdefABCDEF" in line for line in lines)
    # forwarding to the host's log is rate-limited: ~45,000 lines were written
    forwarded = [r for r in caplog.records if r.name == "plugin_host.plugin.stderr_flood"]
    assert len(forwarded) < 20_000
    assert not any("sk-live-0123456789abcdefABCDEF" in r.getMessage() for r in forwarded)


async def test_endless_stderr_line_is_cut(tmp_path: Path) -> None:
    proc = fast_process(make_spec(tmp_path, "stderr_flood"))
    async with proc:
        await proc.call("flood", {"mb": 0}, timeout=10)
        with anyio.fail_after(30):
            while not proc.logs(1) or proc.logs(1)[-1] != "flood finished":
                await anyio.sleep(0.01)
        first = proc.logs(1000)[0]
    assert first.startswith("x" * 100) and first.endswith("[truncated]")
    assert len(first.encode()) <= STDERR_LINE_BYTES + 64


# ---------------------------------------------------------------- stdout protocol


async def test_garbage_on_stdout_is_counted_and_ignored(tmp_path: Path) -> None:
    seen: list[str] = []
    proc = fast_process(make_spec(tmp_path, "garbage"), on_violation=lambda kind, head: seen.append(kind))
    async with proc:
        assert await proc.call("echo", {"x": 1}, timeout=10) == {"x": 1}
        assert await proc.call("spew", {"lines": 5000}, timeout=30) == {"spewed": 5000}
        assert await proc.call("echo", {"x": 2}, timeout=10) == {"x": 2}
        stats = proc.connection.stats
    assert stats.protocol_violations >= 5000 + 10
    assert len(seen) == stats.protocol_violations + stats.oversized_messages


async def test_oversized_line_is_discarded(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "oversized", manifest={"limits": {"maxMessageBytes": 4096}})
    proc = fast_process(spec)
    async with proc:
        with pytest.raises(RpcError) as info:
            await proc.call("big", {"size": 10_000}, timeout=0.5)
        assert info.value.code == TIMED_OUT
        assert await proc.call("big_partial", timeout=10) == {"ok": True}
        assert await proc.call("echo", {"still": "fine"}, timeout=10) == {"still": "fine"}
        assert proc.connection.stats.oversized_messages == 2


# ---------------------------------------------------------------- exit and stop


async def test_exit_is_detected_while_a_grandchild_holds_stdout(tmp_path: Path) -> None:
    proc = fast_process(make_spec(tmp_path, "grandchild"))
    async with proc:
        pids = await proc.call("pids", timeout=10)
        with pytest.raises(RpcError) as info:
            # the plugin dies without answering; its grandchild keeps stdout open
            await proc.call("die", timeout=60)
        assert info.value.code == UNAVAILABLE
        assert proc.exited and proc.returncode == 1
        assert proc_alive(pids["child"])
        with pytest.raises(RpcError) as again:
            await proc.call("pids", timeout=60)
        assert again.value.code == UNAVAILABLE
    await wait_dead(pids["pid"], pids["child"])


async def test_stop_kills_sigterm_ignoring_group_fast(tmp_path: Path) -> None:
    proc = fast_process(make_spec(tmp_path, "grandchild"))
    async with proc:
        pids = await proc.call("pids", timeout=10)
        assert all(proc_alive(p) for p in pids.values())
        code = await proc.stop()
    assert code == -9
    await wait_dead(pids["pid"], pids["child"], within=2)


async def test_default_stop_sequence_with_sigterm_ignoring_plugin(tmp_path: Path) -> None:
    """The real 2 s / 2 s / 3 s sequence once: shutdown answered, EOF and SIGTERM ignored, SIGKILL."""
    proc = PluginProcess(make_spec(tmp_path, "grandchild"))
    with anyio.fail_after(30):
        async with proc:
            pids = await proc.call("pids", timeout=10)
    assert proc.returncode == -9
    await wait_dead(pids["pid"], pids["child"], within=2)


async def test_stop_when_owner_is_cancelled_still_reaps(tmp_path: Path) -> None:
    proc = fast_process(make_spec(tmp_path, "grandchild"))
    pids: dict[str, int] = {}
    with anyio.move_on_after(1):
        async with proc:
            pids.update(await proc.call("pids", timeout=10))
            await anyio.sleep_forever()
    assert proc.returncode is not None
    await wait_dead(*pids.values(), within=2)


async def test_graceful_plugin_exits_on_shutdown_and_eof(tmp_path: Path) -> None:
    proc = PluginProcess(make_spec(tmp_path, "well_behaved"))
    async with proc:
        await proc.call("echo", timeout=10)
    assert proc.returncode == 0


async def test_stop_is_idempotent_and_calls_fail_after(tmp_path: Path) -> None:
    proc = fast_process(make_spec(tmp_path, "well_behaved"))
    async with proc:
        assert await proc.stop() == 0
        assert await proc.stop() == 0
        with pytest.raises(RpcError) as info:
            await proc.call("echo", timeout=1)
        assert info.value.code == UNAVAILABLE


@pytest.mark.parametrize("delay", [0, 0.001, 0.005, 0.02, 0.1])
async def test_owner_cancelled_at_any_moment_never_hangs(tmp_path: Path, delay: float) -> None:
    proc = fast_process(make_spec(tmp_path, "well_behaved"))
    with anyio.fail_after(15):
        with anyio.move_on_after(delay):
            async with proc:
                await proc.call("echo", timeout=10)
                await anyio.sleep_forever()
    if proc.pid is not None:
        assert proc.returncode is not None
        assert not proc_alive(proc.pid)


async def test_requests_of_the_plugin_are_bounded_by_its_concurrency_limit(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "well_behaved", manifest={"limits": {"maxConcurrency": 3}})
    async with fast_process(spec) as proc:
        assert proc.connection.max_incoming == 3 + 256
