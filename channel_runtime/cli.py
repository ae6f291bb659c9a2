"""The `channel-runtime` command (SPEC 8).

channel-runtime serve [--home DIR] [--host 127.0.0.1] [--port 8080] [--store URL] [--handler echo|module:function]
channel-runtime plugin new NAME [--kind KIND]
channel-runtime plugin validate DIR|ZIP
channel-runtime plugin pack DIR [-o FILE.zip]
channel-runtime plugin check DIR|ZIP
channel-runtime plugin install FILE.zip [--home DIR]
channel-runtime plugin list [--home DIR]
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .settings import DEFAULT_HOST, DEFAULT_PORT, Settings, resolve_home

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from plugin_host.host import PluginHost

log = logging.getLogger("channel_runtime")


# ---------------------------------------------------------------- arguments


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 0-65535")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="channel-runtime",
        description="Connect chat platforms to an application through supervised plugin processes.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the runtime, the plugin host and the admin API")
    serve.add_argument("--home", help="state folder (default $CHANNEL_RUNTIME_HOME or ./.channel-runtime)")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("--store", help="store URL (default $CHANNEL_RUNTIME_STORE or sqlite:///<home>/state.db)")
    serve.add_argument("--handler", help="message handler: echo (default) or module:function")
    serve.set_defaults(run=cmd_serve)

    plugin = commands.add_parser("plugin", help="write, check, pack and install plugins")
    actions = plugin.add_subparsers(dest="action", required=True, metavar="ACTION")

    new = actions.add_parser("new", help="scaffold a plugin with the SDK")
    new.add_argument("name", metavar="NAME", help="plugin id: lower case letters, digits and _")
    new.add_argument("--kind", help="connector kind (default NAME)")
    new.set_defaults(run=cmd_new)

    validate = actions.add_parser("validate", help="check the manifest and the package rules")
    validate.add_argument("path", metavar="DIR|ZIP")
    validate.set_defaults(run=cmd_validate)

    pack = actions.add_parser("pack", help="zip a plugin folder")
    pack.add_argument("path", metavar="DIR")
    pack.add_argument("-o", "--output", metavar="FILE.zip", help="default ./<id>-<version>.zip")
    pack.set_defaults(run=cmd_pack)

    check = actions.add_parser("check", help="run the protocol conformance suite against a plugin")
    check.add_argument("path", metavar="DIR|ZIP")
    check.set_defaults(run=cmd_check)

    install = actions.add_parser("install", help="install a plugin zip into the home folder")
    install.add_argument("path", metavar="FILE.zip")
    install.add_argument("--home", help="state folder (default $CHANNEL_RUNTIME_HOME or ./.channel-runtime)")
    install.set_defaults(run=cmd_install)

    listing = actions.add_parser("list", help="list installed plugins")
    listing.add_argument("--home", help="state folder (default $CHANNEL_RUNTIME_HOME or ./.channel-runtime)")
    listing.set_defaults(run=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


class CliError(Exception):
    """A command failed in a way the user can act on: printed as one line, exit code 1."""


# ---------------------------------------------------------------- serve


def load_handler(spec: str) -> Any:
    """`echo` or `module:function` -> the async handler of the runtime."""
    if spec == "echo":
        from .runtime import echo_handler

        return echo_handler
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"--handler must be 'echo' or 'module:function', not {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import handler module {module_name!r}: {exc}") from None
    handler = module
    for part in attr.split("."):
        handler = getattr(handler, part, None)
        if handler is None:
            raise CliError(f"module {module_name!r} has no {attr!r}")
    if not callable(handler):
        raise CliError(f"handler {spec!r} is not callable")
    return handler


def build_app(settings: Settings, *, bundled: bool = True) -> Starlette:
    """The whole service as one ASGI app: runtime, plugin host, admin API; the lifespan owns them."""
    from admin_api import create_app
    from plugin_host.host import PluginHost

    from .bundled import install_bundled
    from .runtime import ChannelRuntime

    host = PluginHost(settings.home)
    runtime = ChannelRuntime(
        handler=load_handler(settings.handler),
        store=settings.store_url,
        plugin_host=host,
        home=settings.home,
        secret_key=settings.secret_key(),
    )

    async def first_start(host: PluginHost) -> None:
        installed = await install_bundled(host)
        if installed:
            log.info("installed bundled plugins: %s", ", ".join(installed))

    return create_app(host=host, runtime=runtime, settings=settings, host_setup=[first_start] if bundled else [])


def cmd_serve(args: argparse.Namespace) -> int:
    import anyio
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    settings = Settings.load(home=args.home, store=args.store, host=args.host, port=args.port, handler=args.handler)
    app = build_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, lifespan="on", log_level="info")
    server = uvicorn.Server(config)
    print(f"channel-runtime: admin page at {settings.admin_url}", flush=True)
    if settings.admin_token_generated:
        # printed once, on the terminal only: never through the logger
        print(
            f"channel-runtime: admin token (saved in {settings.home / 'admin-token'}): {settings.admin_token}",
            flush=True,
        )
    # uvicorn re-raises the signal that stopped it once it is done; after a graceful stop, exit 0 instead
    received: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, frame: received.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        anyio.run(server.serve)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        print("error: the server did not start (see the log above)", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- plugin commands


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
            host.registry.close()

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
    registry = PluginRegistry(db)
    try:
        rows = [
            (
                r.id,
                r.active_version or "-",
                "yes" if r.enabled else "no",
                ", ".join(v.version for v in registry.versions(r.id)),
            )
            for r in registry.list()
        ]
    finally:
        registry.close()
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


if __name__ == "__main__":
    raise SystemExit(main())
