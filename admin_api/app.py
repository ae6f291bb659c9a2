"""`create_app`: the admin API as one Starlette application (SPEC 7)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from plugin_host.host import PluginHost

from . import page
from .auth import TokenAuth
from .errors import EXCEPTION_HANDLERS, UnexpectedErrors
from .metrics import metrics_endpoint, metrics_registry
from .openapi import openapi_json
from .routes import bridge, channels, connectors, health, nodes, onboarding, overview, plugins

if TYPE_CHECKING:
    from channel_runtime.settings import Settings

HostSetup = Callable[[PluginHost], Awaitable[None]]


def create_app(
    *,
    host: PluginHost,
    runtime: Any = None,
    settings: Settings,
    manage_lifecycle: bool = True,
    host_setup: Sequence[HostSetup] = (),
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The admin application around a plugin host (and, when given, a channel runtime).

    manage_lifecycle: the app's lifespan starts the runtime, then the host, runs
    `host_setup` (e.g. installing bundled plugins), and stops both in reverse
    order. Pass False when an embedding application owns them (a
    mounted app's lifespan does not run).
    """

    lifespan = owned_lifespan(host, runtime, host_setup) if manage_lifecycle else None
    routes: list[BaseRoute] = [
        # the hot paths first: Starlette tries routes in order
        *bridge.routes,
        *plugins.routes,
        *connectors.routes,
        *onboarding.routes,
        *channels.routes,
        *nodes.routes,
        *overview.routes,
        *extra_routes,
        *health.routes,
        Route("/metrics", metrics_endpoint(metrics_registry(plugin_snapshots(host))), methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        *page.routes,
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(UnexpectedErrors),
            Middleware(
                TokenAuth,
                admin_token=settings.admin_token,
                bridge_token=settings.bridge_token,
                metrics_open=settings.metrics_open,
            ),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    # no redirect to the trailing-slash-less path: Starlette builds it from the Host header
    app.router.redirect_slashes = False
    app.state.host = host
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.secrets = tuple(settings.secrets())
    return app


class Owned(Protocol):
    """An application that a lifespan starts before the plugin host and stops after it."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def owned_lifespan(
    host: PluginHost, runtime: Owned | None, host_setup: Sequence[HostSetup] = ()
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """The app's lifespan: start the runtime (or sidecar), then the host, run `host_setup`; stop in reverse."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # the runtime first: starting plugins ask it for the connections they resume;
        # and last to stop: stopping plugins may still deliver events to it
        if runtime is not None:
            await runtime.start()
        try:
            await host.start()
            try:
                for setup in host_setup:
                    await setup(host)
                yield
            finally:
                await host.stop()
        finally:
            if runtime is not None:
                await runtime.stop()

    return lifespan


def plugin_snapshots(host: PluginHost) -> Callable[[], dict[str, dict[str, Any]]]:
    """Every installed plugin: the supervisor's snapshot when it runs, else its registry state."""

    def snapshots() -> dict[str, dict[str, Any]]:
        running = host.snapshots()
        out: dict[str, dict[str, Any]] = {}
        for record in host.registry.list():
            out[record.id] = running.get(record.id) or {"state": "stopped" if record.enabled else "disabled"}
        return out

    return snapshots
