"""SPEC 5.6 vendor command runner: templates from env only, argv safety, timeouts, redaction."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest

from plugin_host.errors import VENDOR_COMMAND_FAILED, RpcError
from plugin_host.redact import MASK
from plugin_host.sdk import VendorCommand, VendorCommandError, VendorResult, VendorRunner

pytestmark = pytest.mark.anyio

PY = sys.executable
PRINT_ARGV = "import json, sys; print(json.dumps(sys.argv[1:]))"


def command(*argv: str, env_var: str = "TEST_VENDOR_COMMAND") -> VendorCommand:
    return VendorCommand.from_env(env_var, {env_var: json.dumps(list(argv))})


@pytest.fixture
def runner(tmp_path: Path) -> VendorRunner:
    return VendorRunner(tmp_path)


# ---------------------------------------------------------------- templates


def test_template_comes_from_the_environment_as_json_or_shell_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VENDOR_JSON", '["vendor", "send", "--to", "{peer}"]')
    monkeypatch.setenv("VENDOR_WORDS", "vendor 'login now' --code={code}")
    assert VendorCommand.from_env("VENDOR_JSON").template == ("vendor", "send", "--to", "{peer}")
    words = VendorCommand.from_env("VENDOR_WORDS")
    assert words.template == ("vendor", "login now", "--code={code}")
    assert words.placeholders == {"code"}


def test_missing_or_bad_template_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VENDOR_UNSET", raising=False)
    with pytest.raises(VendorCommandError, match="VENDOR_UNSET is not set"):
        VendorCommand.from_env("VENDOR_UNSET")
    with pytest.raises(VendorCommandError, match="JSON array of strings"):
        VendorCommand.from_env("X", {"X": '["ok", 1]'})
    for element in ("{peer.__class__}", "{peer[0]}", "{peer!r}", "{peer:>10}", "{0}", "{}", "{unclosed"):
        with pytest.raises(VendorCommandError):
            command("vendor", element)


def test_missing_placeholder_argument_is_named() -> None:
    cmd = command("vendor", "{peer}", "--text={text}")
    with pytest.raises(VendorCommandError, match="peer, text"):
        cmd.format({})


async def test_run_refuses_a_raw_argv(runner: VendorRunner) -> None:
    with pytest.raises(TypeError):
        await runner.run(["echo", "hi"], {}, timeout=5)  # type: ignore[arg-type]


async def test_an_argument_value_stays_one_argv_element(runner: VendorRunner) -> None:
    hostile = "a b; rm -rf / $(touch pwned) `touch pwned2` | cat\n--flag \"quoted\" '{other}'"
    cmd = command(PY, "-c", PRINT_ARGV, "{value}", "--to={value}", "{value}{value}")
    result = await runner.run(cmd, {"value": hostile, "other": "x"}, timeout=10)
    assert json.loads(result.stdout) == [hostile, f"--to={hostile}", hostile * 2]
    assert not (Path(runner.cwd) / "pwned").exists() and not (Path(runner.cwd) / "pwned2").exists()


def test_values_must_be_strings_without_nul() -> None:
    cmd = command("vendor", "{v}")
    with pytest.raises(VendorCommandError):
        cmd.format({"v": 1})  # type: ignore[dict-item]
    with pytest.raises(VendorCommandError):
        cmd.format({"v": "a\x00b"})


# ---------------------------------------------------------------- running


async def test_runs_in_state_dir_in_its_own_session_with_input(runner: VendorRunner, tmp_path: Path) -> None:
    script = (
        "import os, sys; print(os.getcwd() == sys.argv[1]); print(os.getpgid(0) == os.getpid());"
        " print(sys.stdin.read())"
    )
    result = await runner.run(
        command(PY, "-c", script, "{cwd}"), {"cwd": str(tmp_path)}, timeout=10, input=b"from stdin"
    )
    assert result == VendorResult(0, "True\nTrue\nfrom stdin\n", "")


async def test_stdin_is_empty_without_input(runner: VendorRunner) -> None:
    result = await runner.run(command(PY, "-c", "import sys; print(repr(sys.stdin.read()))"), timeout=10)
    assert result.stdout == "''\n"


async def test_non_zero_exit_is_vendor_command_failed_with_redacted_stderr(runner: VendorRunner) -> None:
    script = "import sys; sys.stderr.write('login failed for hunter2-password token=abc123def\\n'); sys.exit(3)"
    with pytest.raises(RpcError) as exc:
        await runner.run(command(PY, "-c", script), timeout=10, secrets=["hunter2-password"])
    assert exc.value.code == VENDOR_COMMAND_FAILED == -32014
    assert exc.value.data["exitCode"] == 3
    assert "hunter2" not in exc.value.data["stderr"] and "abc123def" not in exc.value.data["stderr"]
    assert MASK in exc.value.data["stderr"]
    unchecked = await runner.run(command(PY, "-c", script), timeout=10, secrets=["hunter2-password"], check=False)
    assert unchecked.exit_code == 3 and "hunter2" not in unchecked.stderr


async def test_output_is_redacted_before_it_is_returned(tmp_path: Path) -> None:
    token = "x9Kf2LmQ8rT4vW7yZ1aB3cD5eF6gH0jN"  # token-shaped: long, letters and digits
    script = f"print('session {token}'); print('app secret s3cr3t-v4lue'); print('Bearer abcdef123456')"
    runner = VendorRunner(tmp_path, secrets=["s3cr3t-v4lue"])
    result = await runner.run(command(PY, "-c", script), timeout=10)
    for leaked in (token, "s3cr3t-v4lue", "abcdef123456"):
        assert leaked not in result.stdout
    assert result.stdout.count(MASK) == 3


async def test_output_is_bounded_to_its_tail(tmp_path: Path) -> None:
    runner = VendorRunner(tmp_path, max_output_bytes=1000)
    script = "import sys; sys.stdout.write('a' * 100000 + 'THE END'); sys.stderr.write('e' * 5000)"
    result = await runner.run(command(PY, "-c", script), timeout=10)
    assert result.truncated
    assert len(result.stdout) == 1000 and result.stdout.endswith("THE END")
    assert len(result.stderr) == 1000


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie nobody reaped yet (e.g. no init reaper in a container) is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def _wait_gone(*pids: int) -> None:
    with anyio.fail_after(10):
        while any(_alive(pid) for pid in pids):
            await anyio.sleep(0.02)


SPAWNS_GRANDCHILD = (
    "sleep 300 & echo $! > grandchild.pid; echo $$ > child.pid; "
    "echo started; echo 'progress token=tok_abcdef123' >&2; wait"
)


async def test_timeout_kills_the_whole_process_group(runner: VendorRunner, tmp_path: Path) -> None:
    with pytest.raises(RpcError) as exc:
        await runner.run(command("sh", "-c", SPAWNS_GRANDCHILD), timeout=1)
    assert exc.value.code == VENDOR_COMMAND_FAILED
    assert exc.value.data["exitCode"] is None
    assert "tok_abcdef123" not in exc.value.data["stderr"] and "progress" in exc.value.data["stderr"]
    child = int((tmp_path / "child.pid").read_text())
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    await _wait_gone(child, grandchild)


async def test_cancelling_the_caller_kills_the_process_group(runner: VendorRunner, tmp_path: Path) -> None:
    with anyio.move_on_after(1):
        await runner.run(command("sh", "-c", SPAWNS_GRANDCHILD), timeout=300)
    child = int((tmp_path / "child.pid").read_text())
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    await _wait_gone(child, grandchild)


async def test_a_missing_program_is_vendor_command_failed(runner: VendorRunner) -> None:
    with pytest.raises(RpcError) as exc:
        await runner.run(command("/nonexistent/vendor-cli", "login"), timeout=5)
    assert exc.value.code == VENDOR_COMMAND_FAILED and exc.value.data["exitCode"] is None


async def test_exit_with_a_background_child_holding_the_pipes_is_not_a_timeout(
    runner: VendorRunner, tmp_path: Path
) -> None:
    result = await runner.run(command("sh", "-c", "sleep 300 & echo $! > background.pid; echo hi"), timeout=5)
    assert result.exit_code == 0
    assert result.stdout == "hi\n"
    # the group is killed on a normal exit too: the background child does not outlive the call
    await _wait_gone(int((tmp_path / "background.pid").read_text()))
