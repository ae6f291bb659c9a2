"""PluginHost: every installed plugin, its registry entry and its running supervisor (SPEC 5.1-5.2).

With a shared registry (several hosts on one database, SPEC 10) the registry is
the truth every host converges on: an install stores the archive with the
version, each host materialises a version from it (checking its sha256) before
it runs it, and a watch loop applies what another host changed (install,
enable, disable, activate, config, uninstall) within `registry_poll` seconds,
or at once when the backend's notice arrives.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import os
import shutil
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import anyio
import anyio.abc
import msgspec

from .client import PluginClient
from .clock import Clock, SystemClock
from .errors import Refusal
from .files import private_dir
from .lifetime import owned_task_group
from .manifest import Manifest
from .package import (
    MAX_UPLOAD_BYTES,
    InstalledPackage,
    PackageError,
    install_package,
    installed_sha256,
    sweep_temporary,
)
from .process import LaunchSpec, LogLine
from .protocol import ConnectorDescriptor
from .redact import Redactor, secret_values
from .registry import PluginRecord, PluginRegistry, RegistryBackend, VersionRecord
from .sandbox import Sandbox
from .services import HostServices
from .supervisor import PluginSupervisor, StartError

log = logging.getLogger(__name__)


class HostError(Refusal):
    """A refused lifecycle operation (install, enable, activate, uninstall...)."""


@dataclass
class InstallOutcome:
    plugin_id: str
    version: str
    sha256: str
    created: bool


@dataclass
class _Running:
    version: str
    supervisor: PluginSupervisor


class PluginHost(anyio.AsyncContextManagerMixin):
    """Every installed plugin and its supervisor. Its life is one `async with PluginHost(...)`
    (`start()`/`stop()` are thin wrappers for owners that cannot nest, called from one task)."""

    def __init__(
        self,
        home: Path,
        *,
        services: HostServices | None = None,
        clock: Clock | None = None,
        host_env: Mapping[str, str] | None = None,
        supervisor_options: dict[str, Any] | None = None,
        registry_backend: RegistryBackend | None = None,
        registry_poll: float = 2.0,
        sandbox: Sandbox | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        self.home = private_dir(Path(home))
        self.plugins_dir = self.home / "plugins"
        self.data_dir = self.home / "plugin-data"
        # SPEC 5.3: every plugin confined; the home (state, keys, other plugins) is out of its reach
        self.sandbox = sandbox or Sandbox(hidden=[self.home], search_path=(host_env or os.environ).get("PATH"))
        self._clock = clock or SystemClock()
        self._host_env = host_env
        self._services = services
        self._supervisor_options = supervisor_options or {}
        # the host's own secrets (admin and bridge tokens, credentials key): masked in every plugin's output
        self._secrets: list[str] = [s for s in secrets if s]
        # the single-host registry is `<home>/state.db`; several hosts share one (SPEC 10)
        self.registry = PluginRegistry(registry_backend or self.home / "state.db", clock=self._clock)
        self._registry_poll = registry_poll
        self._running: dict[str, _Running] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._install_lock = anyio.Lock()
        self._started = False
        self._tg: anyio.abc.TaskGroup | None = None  # owns every supervisor's tasks while the host runs

    @property
    def services(self) -> HostServices:
        """The application side of plugin -> host methods (a do-nothing default until one is bound)."""
        if self._services is None:
            self._services = HostServices()
        return self._services

    def bind_services(self, services: HostServices) -> None:
        """Give the host its application side; once, before it starts (the channel runtime does it)."""
        if self._services is not None and self._services is not services:
            raise RuntimeError("this plugin host already serves another application")
        if self._started:
            raise RuntimeError("bind the host's services before it starts")
        self._services = services

    def add_secrets(self, *values: str) -> None:
        """More of the host's own secrets: every plugin's output masks them from now on."""
        fresh = [v for v in values if v]
        self._secrets += fresh
        for running in self._running.values():
            running.supervisor.redactor.add(*fresh)

    def redactor(self, plugin_id: str) -> Redactor:
        """What masks `plugin_id`'s words: its supervisor's redactor (every secret it was handed), or the host's."""
        running = self._running.get(plugin_id)
        return running.supervisor.redactor if running else Redactor(self._secrets)

    def client(self, plugin_id: str) -> PluginClient:
        """Typed host -> plugin calls to `plugin_id` (valid across restarts and hot swaps)."""
        return PluginClient(self, plugin_id)

    # ---------------------------------------------------------------- lifetime

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[PluginHost]:
        sweep_temporary(self.plugins_dir)  # leftovers of an install killed mid-way
        await self.registry.open()
        await self.sandbox.probe()  # once, before any plugin starts; a missing mechanism is logged loudly
        try:
            async with owned_task_group() as tg:
                self._tg = tg
                self._started = True
                try:
                    # side by side: a plugin slow to handshake must not hold back the others
                    async with anyio.create_task_group() as starting:
                        for record in self.registry.list():
                            if record.enabled and record.active_version:
                                starting.start_soon(self._start_reporting, record.id, record.active_version)
                    if self.registry.shared:
                        tg.start_soon(self._watch_registry)
                    yield self
                finally:
                    self._started = False
                    with anyio.CancelScope(shield=True):
                        # the application hands what the plugins serve elsewhere first (SPEC 10)
                        try:
                            await self.services.before_stop()
                        except Exception:
                            log.exception("handing over before the host stops failed")
                        async with anyio.create_task_group() as stopping:
                            for plugin_id in list(self._running):
                                stopping.start_soon(self._stop, plugin_id)
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True):
                await self.registry.aclose()

    async def start(self) -> None:
        """Start every enabled plugin; a plugin that fails to start is left to its supervisor's backoff."""
        if not self._started:
            await self.__aenter__()

    async def stop(self) -> None:
        if self._tg is not None:
            await self.__aexit__(None, None, None)

    @property
    def started(self) -> bool:
        return self._started

    # ---------------------------------------------------------------- install / uninstall

    async def install(self, source: BinaryIO | IO[bytes] | Path, *, source_label: str = "upload") -> InstallOutcome:
        await self.registry.open()  # the CLI installs without starting the host
        async with self._install_lock:
            archive: bytes | None = None
            if self.registry.shared:
                # every host materialises the version from the stored archive: keep its bytes
                archive = await anyio.to_thread.run_sync(_read_bounded, source)
            package: InstalledPackage = await anyio.to_thread.run_sync(
                install_package, archive if archive is not None else source, self.plugins_dir
            )
            known = self.registry.version(package.id, package.version)
            if known is not None and known.sha256 != package.sha256:
                if package.created:  # this host had no copy yet: what it just extracted is not the registry's
                    shutil.rmtree(package.path, ignore_errors=True)
                raise PackageError(
                    "version_conflict",
                    f"{package.id} {package.version} is already installed from a different archive; "
                    "bump the version or uninstall it first",
                    {
                        "id": package.id,
                        "version": package.version,
                        "installedSha256": known.sha256,
                        "sha256": package.sha256,
                    },
                    status=409,
                )
            created = await self.registry.add_version(package.manifest, package.sha256, source_label, archive=archive)
        # several hosts: new means new to the shared registry, whatever this machine had on disk
        return InstallOutcome(
            package.id, package.version, package.sha256, created if self.registry.shared else package.created
        )

    async def uninstall_version(self, plugin_id: str, version: str, *, force: bool = False) -> None:
        async with self._lock(plugin_id):
            record = self._record(plugin_id)
            if self.registry.version(plugin_id, version) is None:
                raise HostError("version_not_found", f"plugin {plugin_id} has no version {version}", status=404)
            if record.active_version == version:
                others = [v.version for v in self.registry.versions(plugin_id) if v.version != version]
                if not others:
                    # the last version: same rule as uninstalling the plugin
                    await self._check_unused(plugin_id, force)
                elif record.enabled and not force:
                    raise HostError(
                        "version_active",
                        f"version {version} of {plugin_id} is active; activate another version first",
                        {"activeVersion": version},
                        status=409,
                    )
                if plugin_id in self._running:
                    await self._stop(plugin_id)
                await self.registry.set_active(plugin_id, others[-1] if others else None)
                if others and record.enabled and self._started:
                    await self._start_reporting(plugin_id, others[-1])
            await self.registry.remove_version(plugin_id, version)
            shutil.rmtree(self.plugins_dir / plugin_id / version, ignore_errors=True)

    async def uninstall(self, plugin_id: str, *, force: bool = False) -> None:
        async with self._lock(plugin_id):
            self._record(plugin_id)
            await self._check_unused(plugin_id, force)
            if plugin_id in self._running:
                await self._stop(plugin_id)
            await self.registry.remove(plugin_id)
            shutil.rmtree(self.plugins_dir / plugin_id, ignore_errors=True)

    async def _check_unused(self, plugin_id: str, force: bool) -> None:
        in_use = await self.services.connections_in_use(plugin_id)
        if in_use and not force:
            raise HostError(
                "plugin_in_use",
                f"{in_use} connection(s) use plugin {plugin_id}; log them out or pass force=true",
                {"connections": in_use},
                status=409,
            )

    # ---------------------------------------------------------------- enable / disable / restart / activate

    async def enable(self, plugin_id: str) -> None:
        async with self._lock(plugin_id):
            record = self._record(plugin_id)
            if not record.active_version:
                raise HostError("no_version", f"plugin {plugin_id} has no installed version", status=409)
            self._check_kinds(plugin_id, self._manifest(plugin_id, record.active_version))
            await self.registry.set_enabled(plugin_id, True)
            if self._started and plugin_id not in self._running:
                await self._start_reporting(plugin_id, record.active_version)

    async def disable(self, plugin_id: str) -> None:
        async with self._lock(plugin_id):
            self._record(plugin_id)
            await self.registry.set_enabled(plugin_id, False)
            if plugin_id in self._running:
                await self._stop(plugin_id)

    async def restart(self, plugin_id: str) -> None:
        async with self._lock(plugin_id):
            record = self._record(plugin_id)
            if not record.enabled or not record.active_version:
                raise HostError("plugin_disabled", f"plugin {plugin_id} is disabled; enable it first", status=409)
            self._require_started()
            running = self._running.get(plugin_id)
            if running is None:
                await self._start_reporting(plugin_id, record.active_version)
                return
            try:
                await running.supervisor.restart()
            except StartError as exc:
                raise HostError(
                    "start_failed",
                    f"plugin {plugin_id} failed to start again: {exc}; it keeps retrying with backoff",
                    status=502,
                ) from None

    async def activate(self, plugin_id: str, version: str) -> None:
        """Hot swap: start and handshake `version`, swap, then stop the old one."""
        async with self._lock(plugin_id):
            record = self._record(plugin_id)
            if self.registry.version(plugin_id, version) is None:
                raise HostError("version_not_found", f"plugin {plugin_id} has no version {version}", status=404)
            manifest = self._manifest(plugin_id, version)
            old = self._running.get(plugin_id)
            if old is not None and old.version == version:
                return
            if not record.enabled or not self._started:
                await self.registry.set_active(plugin_id, version)
                return
            self._check_kinds(plugin_id, manifest)
            new = await self._supervise(plugin_id, version, manifest)
            try:
                await new.start()
            except BaseException as exc:
                with anyio.CancelScope(shield=True):  # a cancelled caller must not leak the new one
                    await new.aclose()
                if not isinstance(exc, Exception):
                    raise
                kept = f"version {old.version} keeps running" if old else "no version is running"
                raise HostError(
                    "activation_failed",
                    f"version {version} of {plugin_id} failed to start ({exc}); {kept}",
                    {"version": version, "runningVersion": old.version if old else None},
                    status=409 if old else 502,
                ) from None
            self._running[plugin_id] = _Running(version, new)
            await self.registry.set_active(plugin_id, version)
            if old is not None:
                await old.supervisor.aclose()

    async def set_config(self, plugin_id: str, config: dict[str, Any]) -> None:
        from .config_schema import validate_config  # jsonschema is heavy: only the admin path needs it

        async with self._lock(plugin_id):
            record = self._record(plugin_id)
            manifest = self._manifest(plugin_id, record.active_version) if record.active_version else None
            if manifest is not None:
                await validate_config(manifest, config)
            await self.registry.set_config(plugin_id, config)
            running = self._running.get(plugin_id)
            if running is not None:
                # config reaches a plugin only through initialize: restart it
                running.supervisor.config = config
                running.supervisor.redactor.add(*secret_values(config, running.supervisor.manifest.config_schema))
                try:
                    await running.supervisor.restart()
                except StartError as exc:  # the state and lastError show it; supervision goes on
                    log.warning("plugin %s did not restart with its new config: %s", plugin_id, exc)

    # ---------------------------------------------------------------- calls

    def supervisor(self, plugin_id: str) -> PluginSupervisor | None:
        running = self._running.get(plugin_id)
        return running.supervisor if running else None

    def plugin_for_kind(self, kind: str) -> str | None:
        """The enabled plugin providing connector `kind`, if any."""
        for record in self.registry.list():
            if record.enabled and record.active_version:
                if any(c.kind == kind for c in self._manifest(record.id, record.active_version).connectors):
                    return record.id
        return None

    # ---------------------------------------------------------------- views

    def describe(
        self,
        plugin_id: str,
        *,
        detail: bool = False,
        record: PluginRecord | None = None,
        versions: list[VersionRecord] | None = None,
    ) -> dict[str, Any]:
        record = record or self._record(plugin_id)
        if versions is None:
            versions = self.registry.versions(plugin_id)
        running = self._running.get(plugin_id)
        snap = running.supervisor.snapshot() if running else {}
        active = record.active_version
        # the active manifest is among the versions just read: no second query and decode
        manifest = next((v.manifest for v in versions if v.version == active), None) if active else None
        if running is not None:
            state = snap.get("state", "stopped")
        else:
            state = "stopped" if record.enabled else "disabled"
        permissions = manifest.permissions_view if manifest else None
        view: dict[str, Any] = {
            "id": plugin_id,
            "name": manifest.name if manifest else plugin_id,
            "description": manifest.description if manifest else "",
            "activeVersion": active,
            "runningVersion": running.version if running else None,
            "versions": [
                {
                    "version": v.version,
                    "sha256": v.sha256,
                    "installedAt": v.installed_at,
                    "source": v.source,
                    # what activating this version would grant: shown before an upgrade
                    "permissions": v.manifest.permissions_view,
                    "permissionsChanged": permissions is not None and v.manifest.permissions_view != permissions,
                }
                for v in versions
            ],
            "enabled": record.enabled,
            "state": state,
            "health": snap.get("health"),
            "restarts": snap.get("counters", {}).get("restarts", 0),
            "lastError": snap.get("lastError"),
            "lastErrorAt": snap.get("lastErrorAt"),
            "nextAttemptInSeconds": snap.get("nextAttemptInSeconds"),
            "connectors": [msgspec.to_builtins(c.descriptor()) for c in (manifest.connectors if manifest else [])],
            "permissions": permissions,
            "sandbox": self.sandbox.status.view(),
        }
        if detail:
            view["counters"] = snap.get(
                "counters",
                {"restarts": 0, "crashes": 0, "timeouts": 0, "protocolViolations": 0, "oversizedMessages": 0},
            )
            view["latencyMs"] = snap.get("latencyMs", {})
            view["pid"] = snap.get("pid")
            view["startedAt"] = snap.get("startedAt")
            view["config"] = record.config
            view["configSchema"] = manifest.config_schema if manifest else {}
        return view

    def list(self) -> list[dict[str, Any]]:
        versions = self.registry.all_versions()
        return [self.describe(r.id, record=r, versions=versions.get(r.id, [])) for r in self.registry.list()]

    def connectors(self) -> builtins.list[dict[str, Any]]:
        out: builtins.list[dict[str, Any]] = []
        for record in self.registry.list():
            if not record.enabled or not record.active_version:
                continue
            running = self._running.get(record.id)
            state = running.supervisor.state if running else "stopped"
            result = running.supervisor.initialize_result if running else None
            descriptors: builtins.list[ConnectorDescriptor] = (
                list(result.connectors)
                if result and result.connectors
                else [c.descriptor() for c in self._manifest(record.id, record.active_version).connectors]
            )
            redactor = running.supervisor.redactor if running else None
            for d in descriptors:
                item = msgspec.to_builtins(d)
                if redactor is not None:  # the plugin's own words: its known secrets never show
                    item = redactor.value(item)
                item["pluginId"] = record.id
                item["available"] = state in ("running", "degraded")
                out.append(item)
        return out

    def logs(self, plugin_id: str, tail: int = 200) -> builtins.list[str]:
        self._record(plugin_id)
        running = self._running.get(plugin_id)
        return running.supervisor.logs(tail) if running else []

    def log_lines(self, plugin_id: str, tail: int = 200, after: int = 0) -> builtins.list[LogLine]:
        self._record(plugin_id)
        running = self._running.get(plugin_id)
        return running.supervisor.log_lines(tail, after) if running else []

    def snapshots(self) -> dict[str, dict[str, Any]]:
        return {pid: r.supervisor.snapshot() for pid, r in self._running.items()}

    # ---------------------------------------------------------------- internals

    def _lock(self, plugin_id: str) -> anyio.Lock:
        return self._locks.setdefault(plugin_id, anyio.Lock())

    def _record(self, plugin_id: str) -> PluginRecord:
        record = self.registry.get(plugin_id)
        if record is None:
            raise HostError("plugin_not_found", f"no plugin {plugin_id} is installed", status=404)
        return record

    def _manifest(self, plugin_id: str, version: str) -> Manifest:
        v: VersionRecord | None = self.registry.version(plugin_id, version)
        if v is None:
            raise HostError("version_not_found", f"plugin {plugin_id} has no version {version}", status=404)
        return v.manifest

    def _check_kinds(self, plugin_id: str, manifest: Manifest) -> None:
        kinds = {c.kind for c in manifest.connectors}
        for other in self.registry.list():
            if other.id == plugin_id or not other.enabled or not other.active_version:
                continue
            clash = kinds & {c.kind for c in self._manifest(other.id, other.active_version).connectors}
            if clash:
                raise HostError(
                    "connector_kind_taken",
                    f"connector kind {', '.join(sorted(clash))} is already provided by enabled plugin {other.id}",
                    {"kinds": sorted(clash), "plugin": other.id},
                    status=409,
                )

    def _make_supervisor(self, plugin_id: str, version: str, manifest: Manifest) -> PluginSupervisor:
        record = self._record(plugin_id)
        spec = LaunchSpec(
            plugin_id=plugin_id,
            version=version,
            version_dir=self.plugins_dir / plugin_id / version,
            data_dir=self.data_dir / plugin_id,
            manifest=manifest,
            host_env=self._host_env,
            sandbox=self.sandbox,
        )
        sup = PluginSupervisor(
            spec,
            config=record.config,
            services=self.services,
            clock=self._clock,
            **self._supervisor_options,
        )
        sup.redactor.add(*self._secrets, *secret_values(record.config or {}, manifest.config_schema))
        return sup

    def _require_started(self) -> None:
        if not self._started or self._tg is None:
            raise HostError("host_not_started", "the plugin host is not running", status=503)

    async def _supervise(self, plugin_id: str, version: str, manifest: Manifest) -> PluginSupervisor:
        """A new supervisor whose tasks the host's task group owns (until `aclose()`)."""
        self._require_started()
        assert self._tg is not None
        await self._materialise(plugin_id, version)
        sup = self._make_supervisor(plugin_id, version, manifest)
        await self._tg.start(sup.serve)
        return sup

    async def _start(self, plugin_id: str, version: str) -> PluginSupervisor:
        """Start supervising; a failed first start raises but keeps retrying with backoff."""
        sup = await self._supervise(plugin_id, version, self._manifest(plugin_id, version))
        self._running[plugin_id] = _Running(version, sup)
        await sup.start(retry=True)
        return sup

    async def _start_reporting(self, plugin_id: str, version: str) -> None:
        """Start a plugin; a failed first start stays in backoff (state shows it) rather than raising."""
        try:
            await self._start(plugin_id, version)
        except Exception as exc:
            log.warning("plugin %s failed to start: %s", plugin_id, exc)

    async def _stop(self, plugin_id: str) -> None:
        running = self._running.pop(plugin_id, None)
        if running is not None:
            await running.supervisor.aclose()

    # ---------------------------------------------------------------- a shared registry (SPEC 10)

    async def _materialise(self, plugin_id: str, version: str) -> None:
        """Make sure this machine has the registry's package of `version` (a shared registry's archive)."""
        if not self.registry.shared:
            return
        record = self.registry.version(plugin_id, version)
        if record is None:
            raise HostError("version_not_found", f"plugin {plugin_id} has no version {version}", status=404)
        target = self.plugins_dir / plugin_id / version
        if installed_sha256(target) == record.sha256:
            return
        archive = await self.registry.archive(plugin_id, version)
        if archive is None:
            raise HostError("archive_missing", f"the registry keeps no archive of {plugin_id} {version}", status=502)
        digest = hashlib.sha256(archive).hexdigest()
        if digest != record.sha256:
            raise HostError(
                "archive_mismatch",
                f"the stored archive of {plugin_id} {version} has sha256 {digest}, not the recorded {record.sha256}",
                {"sha256": digest, "expected": record.sha256},
                status=502,
            )
        if target.exists():  # another archive's files under this version (an old registry): replaced
            await anyio.to_thread.run_sync(shutil.rmtree, target)
        package = await anyio.to_thread.run_sync(install_package, archive, self.plugins_dir)
        log.info("materialised plugin %s %s from the registry (sha256 %s)", plugin_id, version, package.sha256[:12])

    async def _watch_registry(self) -> None:
        """Converge on what other hosts changed in the shared registry."""
        while True:
            await self.registry.wait_for_change(self._registry_poll)
            try:
                if await self.registry.refresh():
                    await self.converge()
            except Exception:
                log.exception("applying registry changes failed; retrying at the next change")

    async def converge(self) -> None:
        """Run what the registry says, here: each plugin's enabled flag, active version and config."""
        for record in self.registry.list():
            async with self._lock(record.id):
                try:
                    await self._converge(record.id)
                except Exception as exc:
                    log.warning("plugin %s: could not apply the registry's state: %s", record.id, exc)
        for plugin_id in list(self._running):
            if self.registry.get(plugin_id) is None:  # uninstalled elsewhere
                async with self._lock(plugin_id):
                    await self._stop(plugin_id)
        async with self._install_lock:  # an install in progress has files but no registry row yet
            await anyio.to_thread.run_sync(self._remove_unlisted_versions)

    async def _converge(self, plugin_id: str) -> None:
        record = self.registry.get(plugin_id)
        if record is None:
            return
        wanted = record.active_version if record.enabled else None
        running = self._running.get(plugin_id)
        if wanted is None:
            if running is not None:
                await self._stop(plugin_id)
            return
        if running is None:
            await self._start_reporting(plugin_id, wanted)
        elif running.version != wanted:
            new = await self._supervise(plugin_id, wanted, self._manifest(plugin_id, wanted))
            try:
                await new.start()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await new.aclose()
                raise
            self._running[plugin_id] = _Running(wanted, new)
            await running.supervisor.aclose()
        elif running.supervisor.config != record.config:
            running.supervisor.config = record.config
            running.supervisor.redactor.add(*secret_values(record.config, running.supervisor.manifest.config_schema))
            try:
                await running.supervisor.restart()
            except StartError as exc:
                log.warning("plugin %s did not restart with its new config: %s", plugin_id, exc)

    def _remove_unlisted_versions(self) -> None:
        """Drop local copies of versions the shared registry no longer lists (uninstalled on another host)."""
        if not self.plugins_dir.is_dir():
            return
        for id_dir in self.plugins_dir.iterdir():
            if not id_dir.is_dir() or id_dir.name.startswith("."):
                continue
            running = self._running.get(id_dir.name)
            for version_dir in id_dir.iterdir():
                listed = self.registry.version(id_dir.name, version_dir.name) is not None
                if not listed and not (running and running.version == version_dir.name):
                    shutil.rmtree(version_dir, ignore_errors=True)


def _read_bounded(source: BinaryIO | IO[bytes] | Path) -> bytes:
    """An upload's bytes, at most one byte past the limit (the package check refuses that with 413)."""
    if isinstance(source, Path):
        with source.open("rb") as f:
            return f.read(MAX_UPLOAD_BYTES + 1)
    if isinstance(source, bytes | bytearray):
        return bytes(source)
    return source.read(MAX_UPLOAD_BYTES + 1)
