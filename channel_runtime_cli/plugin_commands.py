"""`channel-runtime plugin ...`: write, check, pack and install plugins (SPEC 8)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from channel_runtime.settings import resolve_home

from .compose import CliError

if TYPE_CHECKING:
    from plugin_host.host import PluginHost


def _existing(path_text: str) -> Path:
    path = Path(path_text)
    if not path.exists():
        raise CliError(f"{path} does not exist")
    return path


def _package_error_text(exc: Any) -> str:
    lines = [f"{exc.code}: {exc.message}"]
    details = exc.details if isinstance(exc.details, dict) else {}
    for issue in details.get("errors", [])[:10]:
        lines.append(f"  {issue.get('path') or '/'}: {issue.get('message')}")
    return "\n".join(lines)


def cmd_new(args: argparse.Namespace) -> int:
    from plugin_host.scaffold import ScaffoldError, scaffold_plugin

    try:
        folder = scaffold_plugin(args.name, Path.cwd(), kind=args.kind)
    except ScaffoldError as exc:
        raise CliError(str(exc)) from None
    print(f"created {folder}/")
    print(f"next: channel-runtime plugin check {folder}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from plugin_host.package import PackageError, inspect_package

    path = _existing(args.path)
    try:
        info = inspect_package(path)
    except PackageError as exc:
        print(f"INVALID {path}\n{_package_error_text(exc)}")
        return 1
    m = info.manifest
    print(f"OK {path}: {m.id} {m.version} ({m.name}), {info.size} bytes packed, sha256 {info.sha256}")
    for c in m.connectors:
        print(f"  connector {c.kind} ({c.auth_type}): {', '.join(c.capabilities) or 'no capabilities'}")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from plugin_host.manifest import MANIFEST_NAME, ManifestError, load_manifest
    from plugin_host.package import PackageError, pack_directory

    src = _existing(args.path)
    if not src.is_dir():
        raise CliError(f"{src} is not a folder")
    try:
        manifest = load_manifest((src / MANIFEST_NAME).read_bytes())
    except FileNotFoundError:
        raise CliError(f"{src} has no {MANIFEST_NAME}") from None
    except ManifestError as exc:
        raise CliError(f"{exc.code}: {exc.message}") from None
    out = Path(args.output) if args.output else Path.cwd() / f"{manifest.id}-{manifest.version}.zip"
    try:
        pack_directory(src, out)
    except PackageError as exc:
        print(f"INVALID {src}\n{_package_error_text(exc)}")
        return 1
    print(f"packed {manifest.id} {manifest.version} into {out} ({out.stat().st_size} bytes)")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from plugin_host.conformance import check_plugin

    return check_plugin(_existing(args.path))


def _host(home_flag: str | None) -> PluginHost:
    from plugin_host.host import PluginHost

    return PluginHost(resolve_home(home=home_flag))


def cmd_install(args: argparse.Namespace) -> int:
    import anyio

    from plugin_host.package import PackageError

    path = _existing(args.path)
    host = _host(args.home)

    async def install() -> Any:
        try:
            return await host.install(path, source_label=f"cli:{path.name}")
        finally:
            await host.registry.aclose()

    try:
        outcome = anyio.run(install)
    except PackageError as exc:
        print(f"REFUSED {path}\n{_package_error_text(exc)}")
        return 1
    what = "installed" if outcome.created else "already installed (same sha256)"
    print(f"{what}: {outcome.plugin_id} {outcome.version} into {host.home}")
    print("enable it from the admin page or with POST /api/plugins/{id}/enable".replace("{id}", outcome.plugin_id))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from plugin_host.registry import PluginRegistry

    home = resolve_home(home=args.home)
    db = home / "state.db"
    if not db.exists():
        print(f"no plugins installed in {home}")
        return 0

    async def read() -> list[tuple[str, str, str, str]]:
        registry = PluginRegistry(db)
        await registry.open()
        try:
            return [
                (
                    r.id,
                    r.active_version or "-",
                    "yes" if r.enabled else "no",
                    ", ".join(v.version for v in registry.versions(r.id)),
                )
                for r in registry.list()
            ]
        finally:
            await registry.aclose()

    import anyio

    rows = anyio.run(read)
    if not rows:
        print(f"no plugins installed in {home}")
        return 0
    print(_table(("ID", "ACTIVE", "ENABLED", "VERSIONS"), rows))
    return 0


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip() for row in [header, *rows]
    ]
    return "\n".join(lines)
