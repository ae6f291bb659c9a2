"""What a plugin runs: the command of SPEC 4 `runtime` and the environment of SPEC 5.3.

    spec = LaunchSpec(plugin_id, version, version_dir, data_dir, manifest, host_env)
    plan = prepare_launch(spec)     # creates the data folder; LaunchPlan(argv, env, cwd=data_dir)
    child = await spawn(plan)       # plugin_host.process_group
    runtime_argv(manifest.runtime, folder, search_path=PATH)   # the checks of install and `plugin validate`

The host (`process.py`), `plugin check` (`conformance.py`) and the SDK's test
harness all launch through here, so a plugin is tested as the host runs it. The
sandbox (`plugin_host.sandbox`, SPEC 5.3) is a `LaunchPlan -> LaunchPlan` transform
applied in `plan_launch` when the spec carries one.

Command rules (SPEC 4): an element that starts with `./` or contains a `/` is a
path inside the plugin's version folder (absolute paths, `..` components and
symbolic links leading out are refused); a bare first element is a program on
PATH. The program must exist and, for a file of the plugin, be executable. A
python runtime's module must be a file of the version folder or of its `lib/`
(`M.py`, or a package `M/` with `__main__.py`). Every refusal is a
`LaunchError` naming the manifest field (`runtime.command[0]`, `runtime.module`).
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import plugin_host

from .errors import Refusal
from .manifest import Manifest, Runtime
from .process_group import LaunchPlan

if TYPE_CHECKING:
    from .sandbox import Sandbox

RESERVED_ENV_PREFIX = "CHANNEL_RUNTIME_"
# the sidecar's own secrets (SPEC 11): a manifest cannot ask for them either
RESERVED_ENV_NAMES = frozenset({"CONNECTOR_API_TOKEN", "BEAVER_BRIDGE_TOKEN"})
PASSTHROUGH_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
# set by the host; a manifest cannot pass host values for them
FIXED_ENV = frozenset({"HOME", "TMPDIR", "PLUGIN_DIR", "PYTHONPATH"})
TMP_DIRNAME = "tmp"  # TMPDIR, inside the data folder


class LaunchError(Refusal):
    """The plugin cannot be started as its manifest says; `code` names the rule, `details["field"]` the field.

    Codes: `runtime_unsafe_path`, `runtime_program_missing`, `runtime_not_executable`,
    `runtime_module_missing`, `spawn_failed`.
    """

    def __init__(self, message: str, *, field: str | None = None, code: str = "spawn_failed") -> None:
        super().__init__(code, message, {"field": field} if field else None)

    @property
    def field(self) -> str | None:
        return self.details.get("field")


@dataclass(frozen=True)
class LaunchSpec:
    plugin_id: str
    version: str
    version_dir: Path  # the extracted package (holds plugin.json)
    data_dir: Path  # <home>/plugin-data/<id>/: cwd, HOME, stateDir; <data_dir>/tmp is TMPDIR
    manifest: Manifest
    host_env: Mapping[str, str] | None = None  # defaults to os.environ
    python: str = sys.executable
    sandbox: Sandbox | None = None  # None: the plan runs as built (tests, `plugin check`, the SDK harness)


def sdk_root() -> Path:
    """The folder holding the `plugin_host` package, so `from plugin_host.sdk import Plugin` works."""
    return Path(plugin_host.__file__).resolve().parent.parent


# ---------------------------------------------------------------- the command


def runtime_argv(
    runtime: Runtime, version_dir: Path, *, search_path: str | None, python: str = sys.executable
) -> list[str]:
    """The argv of a manifest's `runtime`, every rule checked against the files of `version_dir`."""
    root = Path(version_dir).resolve()
    if runtime.type == "python":
        if not runtime.module:
            raise LaunchError(
                "runtime.module: a python runtime needs a module", field="runtime.module", code="runtime_module_missing"
            )
        _check_module(root, runtime.module)
        return [python, "-m", runtime.module]
    if not runtime.command:
        raise LaunchError(
            "runtime.command: a command runtime needs a program",
            field="runtime.command",
            code="runtime_program_missing",
        )
    argv: list[str] = []
    for i, element in enumerate(runtime.command):
        field = f"runtime.command[{i}]"
        if "/" in element:  # "./x" included
            path = _inside(root, element, field)
            if i == 0:
                _check_program(path, element, field)
            argv.append(str(path))
        elif i == 0:
            found = shutil.which(element, path=search_path)
            if found is None:
                raise LaunchError(
                    f"{field}: program {element!r} is not found on PATH "
                    "(a file of the plugin is written as a path: bin/run or ./bin/run)",
                    field=field,
                    code="runtime_program_missing",
                )
            argv.append(found)
        else:
            argv.append(element)
    return argv


def _inside(root: Path, element: str, field: str) -> Path:
    """`element` resolved against the version folder; refused unless it stays inside."""
    if element.startswith("/"):
        raise LaunchError(
            f"{field}: {element!r} is an absolute path; use a path inside the plugin folder or a program on PATH",
            field=field,
            code="runtime_unsafe_path",
        )
    if ".." in element.split("/"):
        raise LaunchError(
            f"{field}: {element!r} has a '..' component; paths stay inside the plugin folder",
            field=field,
            code="runtime_unsafe_path",
        )
    resolved = (root / element).resolve()
    if not resolved.is_relative_to(root):
        raise LaunchError(
            f"{field}: {element!r} leads out of the plugin folder (a symbolic link)",
            field=field,
            code="runtime_unsafe_path",
        )
    return resolved


def _check_program(path: Path, element: str, field: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = 0
    if not stat.S_ISREG(mode):
        raise LaunchError(
            f"{field}: {element!r} is not a file of the plugin", field=field, code="runtime_program_missing"
        )
    if not mode & 0o111:
        raise LaunchError(
            f"{field}: {element!r} is not executable (chmod +x it before packing; packages keep the executable bit)",
            field=field,
            code="runtime_not_executable",
        )


def _check_module(root: Path, module: str) -> None:
    """`python -m module` must find it in the version folder or its lib/."""
    parts = module.split(".")
    for base in (root, root / "lib"):
        candidates = (base.joinpath(*parts[:-1], parts[-1] + ".py"), base.joinpath(*parts, "__main__.py"))
        for candidate in candidates:
            resolved = candidate.resolve()
            if resolved.is_file() and resolved.is_relative_to(root):
                return
    package = next((base.joinpath(*parts) for base in (root, root / "lib") if base.joinpath(*parts).is_dir()), None)
    if package is not None:
        where = package.relative_to(root).as_posix()
        message = (
            f"runtime.module: package {module!r} ({where}/) has no __main__.py, so `python -m {module}` cannot run it"
        )
    else:
        path = "/".join(parts)
        message = f"runtime.module: module {module!r} is not in the plugin ({path}.py or {path}/__main__.py, at the root or in lib/)"
    raise LaunchError(message, field="runtime.module", code="runtime_module_missing")


# ---------------------------------------------------------------- the environment


def _reserved(name: str) -> bool:
    return name.startswith(RESERVED_ENV_PREFIX) or name in RESERVED_ENV_NAMES


def plugin_env(
    host_env: Mapping[str, str],
    *,
    data_dir: Path,
    plugin_dir: Path | None,
    allowed: Iterable[str] = (),
    pythonpath: Sequence[str | os.PathLike[str]] | None = None,
) -> dict[str, str]:
    """Exactly the environment of SPEC 5.3: nothing of the host leaks unless listed.

    PATH, LANG, LC_ALL, TZ and the `allowed` names that are set in `host_env`
    (never `CHANNEL_RUNTIME_*` nor the sidecar's tokens, never one the host sets itself); HOME is the data
    folder, TMPDIR its `tmp/`, PLUGIN_DIR the version folder, PYTHONPATH when given.
    """
    env: dict[str, str] = {}
    for name in (*PASSTHROUGH_ENV, *allowed):
        if name in host_env and not _reserved(name) and name not in FIXED_ENV:
            env[name] = host_env[name]
    env["HOME"] = str(data_dir)
    env["TMPDIR"] = str(data_dir / TMP_DIRNAME)
    if plugin_dir is not None:
        env["PLUGIN_DIR"] = str(plugin_dir)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(os.fspath(p) for p in pythonpath)
    return env


def python_path(version_dir: Path | None) -> list[Path]:
    """PYTHONPATH of a python plugin: its folder, its `lib/` (vendored packages), then the SDK."""
    folders = [] if version_dir is None else [version_dir, version_dir / "lib"]
    return [*folders, sdk_root()]


# ---------------------------------------------------------------- the plan


def _host_env(spec: LaunchSpec) -> Mapping[str, str]:
    return os.environ if spec.host_env is None else spec.host_env


def build_command(spec: LaunchSpec) -> list[str]:
    """The argv of the spec's runtime; raises `LaunchError` naming the broken rule."""
    try:
        return runtime_argv(
            spec.manifest.runtime, spec.version_dir, search_path=_host_env(spec).get("PATH"), python=spec.python
        )
    except LaunchError as exc:
        raise LaunchError(f"plugin {spec.plugin_id}: {exc.message}", field=exc.field, code=exc.code) from None


def build_env(spec: LaunchSpec) -> dict[str, str]:
    python = spec.manifest.runtime.type == "python"
    return plugin_env(
        _host_env(spec),
        data_dir=spec.data_dir,
        plugin_dir=spec.version_dir,
        allowed=spec.manifest.env,
        pythonpath=python_path(spec.version_dir) if python else None,
    )


def plan_launch(spec: LaunchSpec) -> LaunchPlan:
    """What the plugin of `spec` runs: command, environment, working directory (its data folder),
    confined by the spec's sandbox when it has one."""
    plan = LaunchPlan(argv=tuple(build_command(spec)), env=build_env(spec), cwd=spec.data_dir)
    return plan if spec.sandbox is None else spec.sandbox.wrap(plan, spec)


def prepare_data_dir(data_dir: Path) -> None:
    """The plugin's private data folder and its TMPDIR, mode 0700."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (data_dir / TMP_DIRNAME).mkdir(exist_ok=True, mode=0o700)


def prepare_launch(spec: LaunchSpec) -> LaunchPlan:
    """`plan_launch(spec)` with the data folder created: what every launcher calls before `spawn`."""
    plan = plan_launch(spec)
    prepare_data_dir(spec.data_dir)
    if spec.sandbox is not None:
        spec.sandbox.prepare(spec)
    return plan
