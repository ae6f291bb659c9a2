"""The `channel-runtime` command (SPEC 8).

channel-runtime serve [--home DIR] [--host 127.0.0.1] [--port 8080] [--store URL] [--handler echo|module:function]
channel-runtime sidecar [--home DIR] [--host 0.0.0.0] [--port 8787]
channel-runtime plugin new NAME [--kind KIND]
channel-runtime plugin validate DIR|ZIP
channel-runtime plugin pack DIR [-o FILE.zip]
channel-runtime plugin check DIR|ZIP
channel-runtime plugin install FILE.zip [--home DIR]
channel-runtime plugin list [--home DIR]
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from channel_runtime.settings import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    SIDECAR_DEFAULT_HOST,
    SIDECAR_DEFAULT_PORT,
    Settings,
    SettingsError,
    SidecarSettings,
)

from .compose import CliError, build_app, build_sidecar_app
from .plugin_commands import cmd_check, cmd_install, cmd_list, cmd_new, cmd_pack, cmd_validate

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

    sidecar = commands.add_parser(
        "sidecar", help="serve the external-connector HTTP contract for an application (SPEC 11)"
    )
    sidecar.add_argument("--home", help="state folder (default $CONNECTOR_HOME or ./.channel-runtime-sidecar)")
    sidecar.add_argument(
        "--host", default=SIDECAR_DEFAULT_HOST, help=f"address to listen on (default {SIDECAR_DEFAULT_HOST})"
    )
    sidecar.add_argument(
        "--port", type=_port, default=SIDECAR_DEFAULT_PORT, help=f"port (default {SIDECAR_DEFAULT_PORT})"
    )
    sidecar.set_defaults(run=cmd_sidecar)

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


def cmd_serve(args: argparse.Namespace) -> int:
    _configure_logging()
    try:
        settings = Settings.load(home=args.home, store=args.store, host=args.host, port=args.port, handler=args.handler)
    except SettingsError as exc:
        raise CliError(str(exc)) from None
    from .server import open_files_raised

    open_files = open_files_raised()  # before anything opens: sockets, plugins' pipes, the database
    app = build_app(settings)
    print(f"channel-runtime: admin page at {settings.admin_url}", flush=True)
    _print_admin_token(settings)
    return _run(app, settings, open_files)


def cmd_sidecar(args: argparse.Namespace) -> int:
    _configure_logging()
    try:
        settings = SidecarSettings.load(home=args.home, host=args.host, port=args.port)
    except SettingsError as exc:
        raise CliError(str(exc)) from None
    from .server import open_files_raised

    open_files = open_files_raised()
    app = build_sidecar_app(settings)
    service = settings.service
    print(f"channel-runtime sidecar: connector API on http://{service.host}:{service.port}", flush=True)
    if not settings.connector_token:
        print("channel-runtime sidecar: CONNECTOR_API_TOKEN is not set: every connector request is refused", flush=True)
    if not settings.bridge_base_url:
        print(
            "channel-runtime sidecar: BEAVER_BRIDGE_BASE_URL is not set: inbound events wait in the queue", flush=True
        )
    print(f"channel-runtime sidecar: admin page at {service.admin_url}", flush=True)
    _print_admin_token(service)
    return _run(app, service, open_files)


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")


def _print_admin_token(settings: Settings) -> None:
    if settings.admin_token_generated:
        # printed once, on the terminal only: never through the logger
        print(
            f"channel-runtime: admin token (saved in {settings.home / 'admin-token'}): {settings.admin_token}",
            flush=True,
        )


def _run(app: object, settings: Settings, open_files: int) -> int:
    import anyio
    import uvicorn

    from .server import hide_query_strings, quiet_repeats, server_config

    server = uvicorn.Server(server_config(app, settings, open_files=open_files))
    quiet_repeats()  # uvicorn's loggers exist now
    hide_query_strings()
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


if __name__ == "__main__":
    raise SystemExit(main())
