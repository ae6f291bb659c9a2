"""plugin_host.launch: the command of SPEC 4 `runtime` and the environment of SPEC 5.3.

The rules are checked on real files; the last tests start a real plugin through
`bin/run` with the host.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from plugin_host.host import PluginHost
from plugin_host.launch import (
    PASSTHROUGH_ENV,
    LaunchError,
    LaunchSpec,
    plan_launch,
    plugin_env,
    prepare_launch,
    runtime_argv,
)
from plugin_host.manifest import Runtime
from plugin_host.package import pack_directory
from tests.fault_plugins import FAULT_DIR, default_host_env, make_spec

pytestmark = pytest.mark.anyio

HOST_PATH = os.environ.get("PATH", "/usr/bin:/bin")


def _file(path: Path, text: str = "", executable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755 if executable else 0o644)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A version folder with one file of each kind the rules tell apart."""
    root = tmp_path / "version"
    _file(root / "bin" / "run", "#!/bin/sh\n", executable=True)
    _file(root / "run.sh", "#!/bin/sh\n", executable=True)
    _file(root / "bin" / "data.txt", "not a program")
    (root / "bin" / "folder").mkdir()
    _file(root / "mod.py")
    _file(root / "pkg" / "__init__.py")
    _file(root / "pkg" / "__main__.py")
    _file(root / "pkg" / "sub.py")
    _file(root / "nomain" / "__init__.py")
    _file(root / "lib" / "vendored.py")
    _file(root / "lib" / "vpkg" / "__main__.py")
    outside = tmp_path / "outside"
    _file(outside / "prog", "#!/bin/sh\n", executable=True)
    _file(outside / "escaped.py")
    (root / "bin" / "link-out").symlink_to(outside / "prog")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "escaped.py").symlink_to(outside / "escaped.py")
    return root


def command(*argv: str) -> Runtime:
    return Runtime(type="command", command=list(argv))


def python(module: str) -> Runtime:
    return Runtime(type="python", module=module)


# ---------------------------------------------------------------- accepted


@pytest.mark.parametrize(
    ("runtime", "expected"),
    [
        (command("bin/run"), ["{root}/bin/run"]),
        (command("./bin/run"), ["{root}/bin/run"]),
        (command("./run.sh", "--flag"), ["{root}/run.sh", "--flag"]),
        (command("bin/run", "bin/data.txt", "-x"), ["{root}/bin/run", "{root}/bin/data.txt", "-x"]),
        # an argument path must stay inside, but need not exist (the program is what must)
        (command("bin/run", "./conf/later.json"), ["{root}/bin/run", "{root}/conf/later.json"]),
        (command("sh", "-c", "exit 0"), ["{sh}", "-c", "exit 0"]),
    ],
)
def test_command_paths_resolve_inside_the_version_folder(folder: Path, runtime: Runtime, expected: list[str]) -> None:
    root = folder.resolve()
    sh = shutil.which("sh", path=HOST_PATH)
    want = [part.format(root=root, sh=sh) for part in expected]
    assert runtime_argv(runtime, folder, search_path=HOST_PATH) == want


@pytest.mark.parametrize("module", ["mod", "pkg", "pkg.sub", "vendored", "vpkg"])
def test_python_module_found_in_the_folder_or_its_lib(folder: Path, module: str) -> None:
    assert runtime_argv(python(module), folder, search_path=HOST_PATH, python="/py") == ["/py", "-m", module]


# ---------------------------------------------------------------- refused, naming the field and the rule


@pytest.mark.parametrize(
    ("runtime", "field", "code", "words"),
    [
        (command("/bin/sh"), "runtime.command[0]", "runtime_unsafe_path", "is an absolute path"),
        (command("sh", "/etc/passwd"), "runtime.command[1]", "runtime_unsafe_path", "is an absolute path"),
        (command("../outside/prog"), "runtime.command[0]", "runtime_unsafe_path", "'..' component"),
        (command("./bin/../../outside/prog"), "runtime.command[0]", "runtime_unsafe_path", "'..' component"),
        (command("bin/run", "x/../../y"), "runtime.command[1]", "runtime_unsafe_path", "'..' component"),
        (command("bin/link-out"), "runtime.command[0]", "runtime_unsafe_path", "leads out of the plugin folder"),
        (command("linked/prog"), "runtime.command[0]", "runtime_unsafe_path", "leads out of the plugin folder"),
        (command("bin/run", "linked/escaped.py"), "runtime.command[1]", "runtime_unsafe_path", "leads out"),
        (command("bin/missing"), "runtime.command[0]", "runtime_program_missing", "is not a file of the plugin"),
        (command("bin/folder"), "runtime.command[0]", "runtime_program_missing", "is not a file of the plugin"),
        (command("bin/data.txt"), "runtime.command[0]", "runtime_not_executable", "is not executable"),
        (command("run"), "runtime.command[0]", "runtime_program_missing", "is not found on PATH"),
        (command("no-such-program-xyz", "a"), "runtime.command[0]", "runtime_program_missing", "not found on PATH"),
        (command(), "runtime.command", "runtime_program_missing", "needs a program"),
        (python("missing"), "runtime.module", "runtime_module_missing", "missing.py or missing/__main__.py"),
        (python("pkg.nothing"), "runtime.module", "runtime_module_missing", "is not in the plugin"),
        (python("nomain"), "runtime.module", "runtime_module_missing", "has no __main__.py"),
        (python("escaped"), "runtime.module", "runtime_module_missing", "is not in the plugin"),
        (python("bin"), "runtime.module", "runtime_module_missing", "has no __main__.py"),
    ],
)
def test_refusals_name_the_field_and_the_rule(
    folder: Path, runtime: Runtime, field: str, code: str, words: str
) -> None:
    with pytest.raises(LaunchError) as info:
        runtime_argv(runtime, folder, search_path=HOST_PATH)
    assert info.value.field == field and info.value.code == code
    assert info.value.message.startswith(f"{field}: ") and words in info.value.message


def test_a_bare_program_is_looked_up_on_the_given_path(folder: Path, tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    _file(tools / "vendor-tool", "#!/bin/sh\n", executable=True)
    assert runtime_argv(command("vendor-tool"), folder, search_path=str(tools)) == [str(tools / "vendor-tool")]
    with pytest.raises(LaunchError, match="not found on PATH"):
        runtime_argv(command("vendor-tool"), folder, search_path=HOST_PATH)


# ---------------------------------------------------------------- environment


def test_environment_is_only_the_allowed_names() -> None:
    host = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "HOME": "/root",
        "TMPDIR": "/host-tmp",
        "PYTHONPATH": "/host/only",
        "PLUGIN_DIR": "/elsewhere",
        "LISTED": "yes",
        "UNLISTED": "no",
        "CHANNEL_RUNTIME_ADMIN_TOKEN": "admin-secret",
        "CONNECTOR_API_TOKEN": "sidecar-secret",  # the sidecar's own tokens (SPEC 11)
        "BEAVER_BRIDGE_TOKEN": "bridge-secret",
        "CONNECTOR_COMMAND_TIMEOUT_SECONDS": "30",  # not a secret: a plugin may list it
    }
    env = plugin_env(
        host,
        data_dir=Path("/data/p"),
        plugin_dir=Path("/plugins/p/1.0.0"),
        allowed=[
            "LISTED",
            "CHANNEL_RUNTIME_ADMIN_TOKEN",
            "CONNECTOR_API_TOKEN",
            "BEAVER_BRIDGE_TOKEN",
            "CONNECTOR_COMMAND_TIMEOUT_SECONDS",
            "HOME",
            "PYTHONPATH",
            "NOT_SET",
        ],
        pythonpath=["/plugins/p/1.0.0", "/sdk"],
    )
    assert env == {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "LISTED": "yes",
        "CONNECTOR_COMMAND_TIMEOUT_SECONDS": "30",
        "HOME": "/data/p",
        "TMPDIR": "/data/p/tmp",
        "PLUGIN_DIR": "/plugins/p/1.0.0",
        "PYTHONPATH": os.pathsep.join(["/plugins/p/1.0.0", "/sdk"]),
    }
    assert set(PASSTHROUGH_ENV) == {"PATH", "LANG", "LC_ALL", "TZ"}


def test_the_plan_runs_in_the_data_folder_which_prepare_creates(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "well_behaved")
    plan = plan_launch(spec)
    assert plan.cwd == spec.data_dir and not spec.data_dir.exists()
    assert plan.argv == (spec.python, "-m", "well_behaved")
    assert prepare_launch(spec) == plan
    for folder in (spec.data_dir, spec.data_dir / "tmp"):
        assert folder.is_dir() and stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_errors_at_spawn_time_name_the_plugin(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "well_behaved", manifest={"runtime": {"type": "command", "command": ["bin/run"]}})
    with pytest.raises(LaunchError) as info:
        plan_launch(spec)
    assert str(info.value) == "plugin well_behaved: runtime.command[0]: 'bin/run' is not a file of the plugin"


# ---------------------------------------------------------------- a real plugin started through bin/run


def _bin_run_plugin(tmp_path: Path, program: str) -> Path:
    """The raw well_behaved plugin behind a shell script `bin/run`, packed."""
    src = tmp_path / "src"
    shutil.copy(FAULT_DIR / "well_behaved.py", _mkdir(src) / "well_behaved.py")
    shutil.copy(FAULT_DIR / "_wire.py", src / "_wire.py")
    _file(src / "bin" / "run", '#!/bin/sh\nexec "$PLUGIN_PY" "$PLUGIN_DIR/well_behaved.py" "$@"\n', executable=True)
    manifest = {
        "manifestVersion": 1,
        "id": "binrun",
        "name": "bin/run",
        "version": "1.0.0",
        "protocolVersion": 1,
        "runtime": {"type": "command", "command": [program, "--from-manifest"]},
        "connectors": [{"kind": "binrun", "displayName": "bin/run", "authType": "credentials"}],
        "env": ["PLUGIN_PY"],
    }
    (src / "plugin.json").write_text(json.dumps(manifest))
    return pack_directory(src, tmp_path / "binrun.zip")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize("program", ["bin/run", "./bin/run"])
async def test_the_host_runs_a_plugin_through_bin_run(tmp_path: Path, program: str) -> None:
    host_env = {**default_host_env(), "PLUGIN_PY": sys.executable, "CHANNEL_RUNTIME_ADMIN_TOKEN": "t0ken-secret"}
    async with PluginHost(tmp_path / "home", host_env=host_env) as host:
        await host.install(_bin_run_plugin(tmp_path, program))
        await host.enable("binrun")
        supervisor = host.supervisor("binrun")
        assert supervisor is not None and supervisor.state == "running"
        env = await supervisor.call("env", {})
        where = await supervisor.call("cwd", {})
    version_dir = (tmp_path / "home" / "plugins" / "binrun" / "1.0.0").resolve()
    data_dir = tmp_path / "home" / "plugin-data" / "binrun"
    assert env["PLUGIN_DIR"] == str(tmp_path / "home" / "plugins" / "binrun" / "1.0.0")
    assert env["HOME"] == str(data_dir) and env["TMPDIR"] == str(data_dir / "tmp")
    assert env["PLUGIN_PY"] == sys.executable
    assert "PYTHONPATH" not in env and not any(name.startswith("CHANNEL_RUNTIME_") for name in env)
    assert where["cwd"] == str(data_dir)
    assert (version_dir / "bin" / "run").is_file()


def test_launch_spec_defaults_to_the_host_environment(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "well_behaved")
    bare = LaunchSpec(spec.plugin_id, spec.version, spec.version_dir, spec.data_dir, spec.manifest)
    assert plan_launch(bare).env is not None and plan_launch(bare).env.get("PATH") == os.environ.get("PATH")
