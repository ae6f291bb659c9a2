"""The composition root: the whole service built from its settings (runtime, plugin host, admin API).

The only place that knows every layer: `plugin_host` <- `channel_runtime` <- `admin_api` <- here.
An application that embeds channel-runtime builds the same objects itself (README "Embed it").
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from channel_runtime.settings import Settings, SidecarSettings

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from plugin_host.host import PluginHost

log = logging.getLogger("channel_runtime")


class CliError(Exception):
    """A command failed in a way the user can act on: printed as one line, exit code 1."""


def load_handler(spec: str) -> Any:
    """`echo` or `module:function` -> the async handler of the runtime."""
    if spec == "echo":
        from channel_runtime.runtime import echo_handler

        return echo_handler
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"--handler must be 'echo' or 'module:function', not {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import handler module {module_name!r}: {exc}") from None
    handler: Any = module
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
    from channel_runtime.runtime import ChannelRuntime
    from channel_runtime.store import is_shared_url
    from plugin_host.host import PluginHost

    registry_backend = None
    node = None
    if is_shared_url(settings.store_url):
        # several hosts (SPEC 10): the registry and the archives live in the shared database too
        from channel_runtime.store.postgres_registry import PostgresRegistry

        registry_backend = PostgresRegistry(settings.store_url)
        try:
            node = settings.node()
        except ValueError as exc:
            raise CliError(str(exc)) from None
    secret_key = settings.secret_key()
    # every secret the host holds is masked in whatever its plugins say (logs, stderr, answers)
    host = PluginHost(
        settings.home,
        registry_backend=registry_backend,
        secrets=[*settings.secrets(), *(part.strip() for part in secret_key.split(","))],
        sandbox=settings.sandbox(),
    )
    runtime = ChannelRuntime(
        handler=load_handler(settings.handler),
        store=settings.store_url,
        plugin_host=host,
        home=settings.home,
        secret_key=secret_key,
        node=node,
    )

    if settings.sidecar_url and runtime.connections is not None:
        from channel_runtime.remote import SidecarClient

        # kinds no local plugin provides are onboarded through the remote sidecar (SPEC 11)
        try:
            runtime.connections.remote = SidecarClient(
                settings.sidecar_url, settings.sidecar_token or "", callback_base_url=settings.public_url
            )
        except ValueError as exc:
            raise CliError(f"CHANNEL_RUNTIME_SIDECAR_URL: {exc}") from None

    return create_app(host=host, runtime=runtime, settings=settings, host_setup=[_first_start] if bundled else [])


def build_sidecar_app(settings: SidecarSettings, *, bundled: bool = True) -> Starlette:
    """`channel-runtime sidecar` as one ASGI app: the plugin host, the sidecar, the connector API (SPEC 11)."""
    from admin_api.sidecar import create_sidecar_app
    from channel_runtime.sidecar import Sidecar
    from plugin_host.host import PluginHost

    host = PluginHost(settings.home)
    sidecar = Sidecar(
        plugin_host=host,
        store=settings.service.store_url,
        bridge_base_url=settings.bridge_base_url,
        bridge_token=settings.bridge_token,
        home=settings.home,
        secret_key=settings.service.secret_key(),
        command_timeout=settings.command_timeout,
        forward_retry_cap=settings.forward_retry_cap,
    )
    return create_sidecar_app(
        host=host, sidecar=sidecar, settings=settings, host_setup=[_first_start] if bundled else []
    )


async def _first_start(host: PluginHost) -> None:
    from channel_runtime.bundled import install_bundled

    installed = await install_bundled(host)
    if installed:
        log.info("installed bundled plugins: %s", ", ".join(installed))
