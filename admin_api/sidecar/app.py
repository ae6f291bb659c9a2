"""`create_sidecar_app`: `channel-runtime sidecar` as one Starlette application (SPEC 11).

The connector contract (`routes`, `CONNECTOR_API_TOKEN`) beside what watches the
plugins the same way as `serve`: `/api/plugins…` and `/api/connectors` (admin
token), read-only `/api/connections`, `/webhooks/{connectionId}`, `/healthz`,
`/readyz`, `/metrics` (plugins plus the forwarder and the sends) and `/admin`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from channel_runtime.sidecar import Sidecar
from plugin_host.host import PluginHost

from .. import page
from ..app import HostSetup, owned_lifespan, plugin_snapshots
from ..auth import TokenAuth
from ..errors import EXCEPTION_HANDLERS, UnexpectedErrors
from ..metrics import metrics_registry
from ..routes import bridge, connectors, health, onboarding, plugins
from . import routes as connector_routes
from .auth import ConnectorAuth

if TYPE_CHECKING:
    from channel_runtime.settings import SidecarSettings

SEND_OUTCOMES = ("sent", "duplicate", "in_progress", "failed")


class SidecarCollector(Collector):
    """The forwarder's backlog and health, and `/send` outcomes (stats refreshed by the endpoint)."""

    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar

    def collect(self) -> Iterator[Metric]:
        if not self._sidecar.started:
            return
        stats = self._sidecar.forwarder.stats
        gauges = {
            "channel_runtime_sidecar_forward_backlog": (
                "Events queued for the application, not yet delivered",
                stats.backlog,
            ),
            "channel_runtime_sidecar_forward_dead": ("Events the application refused for good", stats.dead),
            "channel_runtime_sidecar_forward_failing": ("1 while the latest delivery try failed", float(stats.failing)),
            "channel_runtime_sidecar_forward_last_error_timestamp_seconds": (
                "When a delivery last failed (0: never)",
                stats.last_error_at or 0.0,
            ),
            "channel_runtime_sidecar_forward_last_delivery_timestamp_seconds": (
                "When an event was last delivered (0: never)",
                stats.last_delivered_at or 0.0,
            ),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=float(value))
        yield CounterMetricFamily(
            "channel_runtime_sidecar_forwarded", "Events delivered to the application", value=stats.delivered
        )
        yield CounterMetricFamily(
            "channel_runtime_sidecar_forward_failures", "Delivery tries that failed", value=stats.failures
        )
        sends = CounterMetricFamily("channel_runtime_sidecar_sends", "/send requests by outcome", labels=["outcome"])
        for outcome in SEND_OUTCOMES:
            sends.add_metric([outcome], float(self._sidecar.sends.get(outcome, 0)))
        yield sends


def create_sidecar_app(
    *,
    host: PluginHost,
    sidecar: Sidecar,
    settings: SidecarSettings,
    manage_lifecycle: bool = True,
    host_setup: Sequence[HostSetup] = (),
) -> Starlette:
    """The sidecar's application; its lifespan starts the sidecar, then the host (and `host_setup`)."""
    registry = metrics_registry(plugin_snapshots(host))
    registry.register(SidecarCollector(sidecar))

    async def metrics(request: Request) -> Response:
        if sidecar.started:
            await sidecar.forwarder.refresh()  # the backlog as of this scrape
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    watching = [
        r
        for r in onboarding.routes
        if isinstance(r, Route) and r.path.startswith("/api/connections") and r.methods == {"GET", "HEAD"}
    ]
    webhooks = [r for r in bridge.routes if isinstance(r, Route) and r.path.startswith("/webhooks/")]
    routes: list[BaseRoute] = [
        *connector_routes.routes,
        *webhooks,
        *plugins.routes,
        *connectors.routes,
        *watching,
        *health.routes,
        Route("/metrics", metrics, methods=["GET"]),
        *page.routes,
    ]
    service = settings.service
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(UnexpectedErrors),
            Middleware(ConnectorAuth, connector_token=settings.connector_token),
            Middleware(
                TokenAuth, admin_token=service.admin_token, bridge_token=None, metrics_open=service.metrics_open
            ),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=owned_lifespan(host, sidecar, host_setup) if manage_lifecycle else None,
    )
    app.state.host = host
    app.state.runtime = sidecar
    app.state.settings = service
    app.state.secrets = tuple(settings.secrets())
    return app
