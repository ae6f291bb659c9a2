"""Least privilege for plugin processes (SPEC 5.3 "Sandboxed"): a `LaunchPlan -> LaunchPlan` transform.

    sandbox = Sandbox(hidden=[home])          # mode "auto" | "off" | "required"
    await sandbox.probe()                     # once: does bubblewrap work here? (status, warning)
    plan = sandbox.wrap(plan, spec)           # applied by plugin_host.launch.plan_launch
    sandbox.prepare(spec)                     # the data folder belongs to the plugin's uid

What a wrapped plan runs, outermost first:

    prlimit --as --nofile --nproc --core --      resource limits (inherited by everything below)
    bwrap <mounts> <namespaces> --cap-drop ALL --  bubblewrap: a fresh root made of bind mounts
    setpriv --reuid U --regid U --clear-groups --  a dedicated uid per plugin (host runs as root)
    env -u PWD --                                  the environment of SPEC 5.3, exactly
    <the plugin's argv>

Inside, the plugin sees: the system's programs and libraries (/usr, /etc minus its
secrets, /opt, and every PATH entry), the host's Python and its site-packages (the
SDK, httpx...), its version folder read-only, its data folder read-write (the only
writable place besides a private /tmp), and the manifest's `permissions.readPaths`
read-only. The host's home is an empty tmpfs (state database, secret key, admin
token, other plugins' files and data are not there), /proc is the plugin's own PID
namespace, `permissions.network: false` adds an empty network namespace. No
capabilities are left; a host running as root gives each plugin its own uid, so
root-owned files are unreadable and the process limit counts only that plugin.

Where bubblewrap is missing or cannot create namespaces (mode "auto"), plugins run
without isolation and `status.warning` says so; the host logs it, `/readyz` and the
plugin API answers carry it. Mode "required" refuses to start plugins instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import anyio

from .launch import LaunchError, LaunchSpec, sdk_root
from .process_group import LaunchPlan

log = logging.getLogger(__name__)

SandboxMode = Literal["auto", "off", "required"]
SANDBOX_MODES: tuple[SandboxMode, ...] = ("auto", "off", "required")

# read-only system roots: programs, libraries, configuration, certificates, time zones
SYSTEM_ROOTS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
# files and folders of /etc that hold the machine's own secrets: masked even though /etc is visible
ETC_SECRET_FILES = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers")
ETC_SECRET_DIRS = ("/etc/ssh", "/etc/ssl/private", "/etc/sudoers.d")
# DNS through systemd-resolved: /etc/resolv.conf is often a link into it
EXTRA_READ_ROOTS = ("/run/systemd/resolve",)
# users' home folders: a PATH entry inside one exposes its tool folder (~/.pyenv, ~/.nvm), not the home
USER_HOME_ROOTS = ("/root", "/home")
# dedicated uids: UID_BASE + crc32(plugin id) % UID_SPAN (far above any uid a system allocates)
UID_BASE = 1 << 29
UID_SPAN = 1 << 24
PROBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class ResourceLimits:
    """Per-plugin limits; None leaves one unset. `processes` counts the plugin's uid (dedicated uids only)."""

    memory_bytes: int | None = 2 * 2**30  # RLIMIT_AS: address space, threads' stacks included
    processes: int | None = 512  # RLIMIT_NPROC: processes and threads
    open_files: int | None = 4096  # RLIMIT_NOFILE

    def view(self) -> dict[str, int | None]:
        return {"memoryBytes": self.memory_bytes, "processes": self.processes, "openFiles": self.open_files}


@dataclass(frozen=True)
class SandboxStatus:
    """What the host can promise about plugin isolation, as `/readyz` and the plugin API show it."""

    mechanism: Literal["bubblewrap", "none"]
    mode: SandboxMode
    dedicated_uid: bool = False
    limits: dict[str, int | None] = field(default_factory=dict)  # the limits actually applied
    warning: str | None = None

    @property
    def isolated(self) -> bool:
        return self.mechanism != "none"

    def view(self) -> dict[str, Any]:
        return {
            "mechanism": self.mechanism,
            "mode": self.mode,
            "isolated": self.isolated,
            "dedicatedUid": self.dedicated_uid,
            "limits": dict(self.limits),
            "warning": self.warning,
        }


class SandboxUnavailable(LaunchError):
    """Mode "required" and no working mechanism: the plugin is not started."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="sandbox_unavailable")


def plugin_uid(plugin_id: str) -> int:
    """The dedicated uid (and gid) of a plugin: stable across restarts and hosts."""
    return UID_BASE + zlib.crc32(plugin_id.encode()) % UID_SPAN


class Sandbox:
    """How every plugin of one host is confined; `probe()` once before the first `wrap()`."""

    def __init__(
        self,
        *,
        hidden: Sequence[Path] = (),
        mode: SandboxMode = "auto",
        limits: ResourceLimits | None = None,
        search_path: str | None = None,
        dedicated_uids: bool | None = None,
    ) -> None:
        if mode not in SANDBOX_MODES:
            raise ValueError(f"sandbox mode must be one of {', '.join(SANDBOX_MODES)}, not {mode!r}")
        self.hidden = tuple(Path(p).resolve() for p in hidden)
        self.mode: SandboxMode = mode
        self.limits = limits or ResourceLimits()
        path = os.environ.get("PATH", "") if search_path is None else search_path
        self._bwrap = shutil.which("bwrap", path=path)
        self._setpriv = shutil.which("setpriv", path=path)
        self._prlimit = shutil.which("prlimit", path=path)
        self._env = shutil.which("env", path=path)
        self._want_uids = os.geteuid() == 0 if dedicated_uids is None else dedicated_uids
        self._status: SandboxStatus | None = None

    # ---------------------------------------------------------------- status

    @property
    def status(self) -> SandboxStatus:
        """The probed status (probing synchronously, once, if `probe()` was not awaited)."""
        if self._status is None:
            self._status = self._decide(self._run_probe_sync)
            self._announce()
        return self._status

    async def probe(self) -> SandboxStatus:
        """Find out, once, whether bubblewrap works on this machine (and with dedicated uids)."""
        if self._status is None:
            results: dict[tuple[str, ...], tuple[bool, str]] = {}
            for argv in self._probe_commands():
                results[tuple(argv)] = await self._run_probe(argv)
            self._status = self._decide(lambda argv: results[tuple(argv)])
            self._announce()
        return self._status

    def _probe_commands(self) -> list[list[str]]:
        if self.mode == "off" or self._bwrap is None:
            return []
        commands = [self._probe_argv(uid=None)]
        if self._want_uids and self._setpriv is not None:
            commands.append(self._probe_argv(uid=plugin_uid("probe")))
        return commands

    def _probe_argv(self, *, uid: int | None) -> list[str]:
        assert self._bwrap is not None
        argv = [self._bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--die-with-parent"]
        argv += self._capabilities(uid)
        argv.append("--")
        if uid is not None:
            assert self._setpriv is not None
            argv += self._setpriv_argv(uid)
        return [*argv, "true"]

    async def _run_probe(self, argv: list[str]) -> tuple[bool, str]:
        try:
            with anyio.fail_after(PROBE_TIMEOUT):
                result = await anyio.run_process(argv, check=False, stdin=subprocess.DEVNULL)
        except (OSError, TimeoutError) as exc:
            return False, str(exc) or "timed out"
        return result.returncode == 0, result.stderr.decode("utf-8", "replace").strip()

    @staticmethod
    def _run_probe_sync(argv: list[str]) -> tuple[bool, str]:
        # only when a launcher wraps before the owner awaited probe(): a few milliseconds, once
        try:
            result = subprocess.run(
                argv, capture_output=True, timeout=PROBE_TIMEOUT, check=False, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, str(exc)
        return result.returncode == 0, result.stderr.decode("utf-8", "replace").strip()

    def _decide(self, run: Any) -> SandboxStatus:
        limits = self._applied_limits(dedicated=False)
        if self.mode == "off":
            return SandboxStatus(
                "none",
                self.mode,
                limits=limits,
                warning="the plugin sandbox is turned off (CHANNEL_RUNTIME_SANDBOX=off): "
                "plugins run with the host's privileges and can read its secrets",
            )
        if self._bwrap is None:
            return SandboxStatus(
                "none",
                self.mode,
                limits=limits,
                warning="bubblewrap (bwrap) is not installed: plugins run WITHOUT a sandbox and can read the "
                "host's state database, secret key and admin token; install the Debian package `bubblewrap`",
            )
        commands = self._probe_commands()
        ok, detail = run(commands[0])
        if not ok:
            return SandboxStatus(
                "none",
                self.mode,
                limits=limits,
                warning=f"bubblewrap cannot create namespaces here ({detail[:300]}): plugins run WITHOUT a sandbox "
                "(allow unprivileged user namespaces, or run the host as root)",
            )
        dedicated = len(commands) > 1 and run(commands[1])[0]
        return SandboxStatus("bubblewrap", self.mode, dedicated, self._applied_limits(dedicated=dedicated))

    def _applied_limits(self, *, dedicated: bool) -> dict[str, int | None]:
        if self._prlimit is None:
            return {"memoryBytes": None, "processes": None, "openFiles": None}
        view = self.limits.view()
        if not dedicated:
            view["processes"] = None  # RLIMIT_NPROC counts the whole uid: only meaningful for a dedicated one
        return view

    def _announce(self) -> None:
        status = self._status
        assert status is not None
        if status.warning:
            log.warning("SANDBOX: %s", status.warning)
        else:
            log.info(
                "plugins run sandboxed with bubblewrap (%s; limits %s)",
                "a dedicated uid each" if status.dedicated_uid else "the host's uid, no capabilities",
                status.limits,
            )

    # ---------------------------------------------------------------- wrapping

    def wrap(self, plan: LaunchPlan, spec: LaunchSpec) -> LaunchPlan:
        """`plan` confined as the module docstring says (or only limited, without a mechanism)."""
        status = self.status
        if not status.isolated:
            if self.mode == "required":
                raise SandboxUnavailable(f"plugin {spec.plugin_id} not started: {status.warning}")
            return replace(plan, argv=(*self._prlimit_argv(status), *plan.argv))
        uid = plugin_uid(spec.plugin_id) if status.dedicated_uid else None
        argv = [*self._prlimit_argv(status), *self._bwrap_argv(plan, spec, uid)]
        if uid is not None:
            argv += self._setpriv_argv(uid)
        if self._env is not None:
            argv += [self._env, "-u", "PWD", "--"]  # bwrap sets PWD; SPEC 5.3 names every variable a plugin sees
        return replace(plan, argv=(*argv, *plan.argv))

    def prepare(self, spec: LaunchSpec) -> None:
        """Give the data folder to the plugin's dedicated uid (once: it keeps it)."""
        if not (self.status.isolated and self.status.dedicated_uid):
            return
        uid = plugin_uid(spec.plugin_id)
        if spec.data_dir.stat().st_uid == uid:
            return
        for root, dirs, files in os.walk(spec.data_dir):
            for name in (*dirs, *files):
                os.lchown(os.path.join(root, name), uid, uid)
        os.lchown(spec.data_dir, uid, uid)

    def _prlimit_argv(self, status: SandboxStatus) -> list[str]:
        if self._prlimit is None:
            return []
        argv = [self._prlimit, "--core=0"]
        limits = status.limits
        if limits.get("memoryBytes") is not None:
            argv.append(f"--as={limits['memoryBytes']}")
        if limits.get("openFiles") is not None:
            argv.append(f"--nofile={limits['openFiles']}")
        if limits.get("processes") is not None:
            argv.append(f"--nproc={limits['processes']}")
        return [*argv, "--"]

    def _capabilities(self, uid: int | None) -> list[str]:
        if os.geteuid() != 0:
            return []  # unprivileged bubblewrap leaves no capabilities anyway
        # bwrap run by root keeps every capability unless told. With a dedicated uid, bwrap must still
        # enter the data folder (owned by that uid, 0700) and setpriv must switch uids: the three
        # capabilities it keeps vanish at setpriv's setresuid, before the plugin's program runs
        keep = ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_DAC_OVERRIDE"] if uid else []
        return ["--cap-drop", "ALL", *keep]

    def _setpriv_argv(self, uid: int) -> list[str]:
        assert self._setpriv is not None
        return [self._setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all", "--"]

    def _bwrap_argv(self, plan: LaunchPlan, spec: LaunchSpec, uid: int | None) -> list[str]:
        assert self._bwrap is not None
        mounts = _Mounts()
        for root in SYSTEM_ROOTS:
            mounts.system(Path(root))
        for secret in ETC_SECRET_FILES:
            if os.path.isfile(secret):
                mounts.ops.append(("--ro-bind", "/dev/null", secret))
        for secret in ETC_SECRET_DIRS:
            if os.path.isdir(secret) and not os.path.islink(secret):
                mounts.tmpfs(Path(secret))
        # a private /tmp first: what is bound below (a venv under /tmp) shows through it
        mounts.tmpfs(Path("/tmp"))
        for root in EXTRA_READ_ROOTS:
            mounts.read_only(Path(root))
        for entry in (plan.env or {}).get("PATH", "").split(os.pathsep):
            if entry.startswith("/"):
                mounts.read_only(_tool_folder(Path(entry)))
        for folder in _python_folders():
            mounts.read_only(folder)
        for extra in spec.manifest.permissions.read_paths:
            mounts.read_only(Path(extra))
        # the host's home last: whatever the binds above brought of it is covered again
        for hidden in self.hidden:
            mounts.tmpfs(hidden)
        mounts.read_only(spec.version_dir, exact=True)
        mounts.writable(spec.data_dir)
        argv = [self._bwrap, *mounts.argv()]
        argv += ["--dev", "/dev", "--proc", "/proc", "--chdir", str(plan.cwd)]
        argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent"]
        if not spec.manifest.permissions.network:
            argv.append("--unshare-net")
        return [*argv, *self._capabilities(uid), "--"]


def _tool_folder(path: Path) -> Path:
    """A PATH entry inside a user's home exposes the tool folder it belongs to (~/.pyenv/shims -> ~/.pyenv)."""
    for base in USER_HOME_ROOTS:
        try:
            rel = path.relative_to(base)
        except ValueError:
            continue
        parts = rel.parts
        if base == "/home":  # /home/<user>/<tool>/...
            return Path(base, *parts[:2]) if len(parts) >= 2 else path
        return Path(base, parts[0]) if parts else path
    return path


def _python_folders() -> list[Path]:
    """The host's Python (installation, venv) and what it imports from: python-runtime plugins run it."""
    folders = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, str(sdk_root())}
    # sys.path[0] is the host's script folder or working directory, not something it imports from
    folders |= {p for p in sys.path[1:] if p.startswith("/") and os.path.isdir(p)}
    return [Path(p) for p in sorted(folders)]


class _Mounts:
    """bwrap mount operations in order, with the folders leading to each mount created traversable.

    bwrap creates missing parents of a mount point with mode 0700, which a dedicated uid
    cannot walk through: every parent that is not already part of a mount is made 0755 first.
    """

    def __init__(self) -> None:
        self.ops: list[tuple[str, ...]] = []
        self._mounts: list[tuple[Path, bool]] = []  # (destination, is a bind of existing content), in order
        self._made: set[Path] = set()

    def system(self, root: Path) -> None:
        if root.is_symlink():
            self.ops.append(("--symlink", os.readlink(root), str(root)))
            self._made.add(root)
        elif root.is_dir():
            self.read_only(root)

    def read_only(self, path: Path, *, exact: bool = False) -> None:
        # a link is followed: its target is what must be visible (/sbin -> usr/sbin is bound already)
        path = Path(os.path.abspath(path)) if exact else Path(os.path.realpath(path))
        if not path.exists():
            return
        if not exact and self._within_bind(path):
            return  # already visible through a bind above it
        self._bind("--ro-bind", path)

    def writable(self, path: Path) -> None:
        self._bind("--bind", Path(os.path.abspath(path)))

    def tmpfs(self, path: Path) -> None:
        """An empty private folder at `path` (what was there stays out of reach)."""
        self._parents(path)
        self.ops.append(("--perms", "0755", "--tmpfs", str(path)))
        self._mounts.append((path, False))

    def argv(self) -> list[str]:
        return [arg for op in self.ops for arg in op]

    def _bind(self, flag: str, path: Path) -> None:
        self._parents(path)
        self.ops.append((flag, str(path), str(path)))
        self._mounts.append((path, True))

    def _last_mount(self, path: Path) -> tuple[Path, bool] | None:
        for mount in reversed(self._mounts):
            if path == mount[0] or path.is_relative_to(mount[0]):
                return mount
        return None

    def _within_bind(self, path: Path) -> bool:
        mount = self._last_mount(path)
        return mount is not None and mount[1]

    def _parents(self, path: Path) -> None:
        for parent in reversed(path.parents):
            if parent == Path("/") or parent in self._made:
                continue
            mount = self._last_mount(parent)
            if mount is not None and (mount[0] == parent or mount[1]):
                continue  # a mount point, or inside bound content that has it
            self.ops.append(("--perms", "0755", "--dir", str(parent)))
            self._made.add(parent)
