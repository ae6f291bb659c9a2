"""`/metrics`: Prometheus text read at scrape time from the plugin supervisors' snapshots and the runtime.

Runtime metrics (when the app has a channel runtime):
- `channel_runtime_deliveries{state}`: outbox deliveries `queued`, `sending`, `deferred`, `dead` now
- `channel_runtime_inbox_dead_letters`: inbox dead letters now
- `channel_runtime_deliveries_sent_total`, `channel_runtime_delivery_deferrals_total{reason}`,
  `channel_runtime_dead_letters_total{reason}`: what the dispatcher did since the runtime started
- `channel_runtime_connections{status}`: connections by status now;
  `channel_runtime_connections_session_expired`: accounts waiting for a re-login (SPEC 6.5)
- `channel_runtime_event_subscribers`, `channel_runtime_event_subscribers_dropped_total`: `GET /api/events`
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from channel_runtime.runtime import ChannelRuntime

PLUGIN_STATES = ("stopped", "starting", "running", "degraded", "backoff", "failed", "disabled")
CONNECTION_STATUSES = ("pending", "pairing", "connected", "disconnected", "error", "revoked")
LIVE_DELIVERY_STATES = ("queued", "sending", "deferred", "dead")
DEFER_REASONS = ("rate_budget", "reply_window", "not_connected", "retry_after")

# snapshot counter key -> metric name (without the `_total` suffix the client adds)
_COUNTERS = {
    "restarts": ("channel_runtime_plugin_restarts", "Restarts of the plugin process"),
    "crashes": ("channel_runtime_plugin_crashes", "Unexpected exits of the plugin process"),
    "timeouts": ("channel_runtime_plugin_timeouts", "Calls to the plugin that timed out"),
    "protocolViolations": (
        "channel_runtime_plugin_protocol_violations",
        "Lines on the plugin's stdout that are not JSON-RPC",
    ),
    "oversizedMessages": (
        "channel_runtime_plugin_oversized_messages",
        "Messages over maxMessageBytes, in either direction",
    ),
}

Snapshots = Callable[[], Mapping[str, Mapping[str, Any]]]


class PluginCollector(Collector):
    """Turns `{plugin_id: snapshot}` into metric families; the snapshot is the supervisor's.

    A snapshot has `state`, `counters {restarts, crashes, timeouts, protocolViolations,
    oversizedMessages}`, `latencyMs {method: {count, p50, p99}}` and, when the
    supervisor keeps them, `rpcErrors {code: count}`.
    """

    def __init__(self, snapshots: Snapshots) -> None:
        self._snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        snapshots = dict(self._snapshots())
        state = GaugeMetricFamily(
            "channel_runtime_plugin_state", "1 for the plugin's current supervision state", labels=["plugin", "state"]
        )
        counters = {key: CounterMetricFamily(name, doc, labels=["plugin"]) for key, (name, doc) in _COUNTERS.items()}
        latency = Metric("channel_runtime_plugin_call_latency_seconds", "Latency of calls to the plugin", "summary")
        errors = CounterMetricFamily(
            "channel_runtime_plugin_rpc_errors", "Calls answered with a JSON-RPC error", labels=["plugin", "code"]
        )
        for plugin, snap in sorted(snapshots.items()):
            current = str(snap.get("state") or "stopped")
            for name in PLUGIN_STATES if current in PLUGIN_STATES else (*PLUGIN_STATES, current):
                state.add_metric([plugin, name], 1.0 if name == current else 0.0)
            values = snap.get("counters") or {}
            for key, family in counters.items():
                family.add_metric([plugin], float(values.get(key, 0) or 0))
            for method, stats in sorted((snap.get("latencyMs") or {}).items()):
                labels = {"plugin": plugin, "method": method}
                for quantile, key in (("0.5", "p50"), ("0.99", "p99")):
                    if stats.get(key) is not None:
                        latency.add_sample(latency.name, {**labels, "quantile": quantile}, float(stats[key]) / 1000.0)
                latency.add_sample(latency.name + "_count", labels, float(stats.get("count", 0) or 0))
            for code, count in sorted((snap.get("rpcErrors") or {}).items(), key=lambda kv: str(kv[0])):
                errors.add_metric([plugin, str(code)], float(count))
        yield state
        yield from counters.values()
        yield latency
        yield errors


class RuntimeCollector(Collector):
    """Deliveries, connections and event subscribers of a channel runtime.

    The store is async and a collector is not: `refresh()` reads the counts before
    each scrape, `collect()` turns them into families.
    """

    def __init__(self, runtime: ChannelRuntime) -> None:
        self._runtime = runtime
        self._deliveries: dict[str, int] = {}
        self._inbox_dead = 0
        self._connections: dict[str, int] = {}
        self._expired = 0

    async def refresh(self) -> None:
        if not self._runtime.started:
            return
        store = self._runtime.store
        self._deliveries = {str(state): n for state, n in (await store.outbox.counts()).items()}
        self._inbox_dead = await store.inbox.dead_count()
        records = await store.connections.list()
        self._connections = {status: sum(1 for r in records if r.status == status) for status in CONNECTION_STATUSES}
        self._expired = sum(1 for r in records if r.error == "session_expired" and r.status != "revoked")

    def collect(self) -> Iterator[Metric]:
        runtime = self._runtime
        deliveries = GaugeMetricFamily(
            "channel_runtime_deliveries", "Outbox deliveries by state (sent ones are counted apart)", labels=["state"]
        )
        for state in LIVE_DELIVERY_STATES:
            deliveries.add_metric([state], float(self._deliveries.get(state, 0)))
        yield deliveries
        yield GaugeMetricFamily("channel_runtime_inbox_dead_letters", "Inbox dead letters", value=self._inbox_dead)
        counters = runtime.counters
        yield CounterMetricFamily(
            "channel_runtime_deliveries_sent", "Deliveries the platform accepted", value=counters.sent
        )
        deferrals = CounterMetricFamily(
            "channel_runtime_delivery_deferrals", "Deliveries that started waiting, by reason", labels=["reason"]
        )
        for reason in DEFER_REASONS:
            deferrals.add_metric([reason], float(counters.deferred.get(reason, 0)))
        yield deferrals
        dead = CounterMetricFamily(
            "channel_runtime_dead_letters", "Deliveries and inbox entries given up, by reason", labels=["reason"]
        )
        for reason, count in sorted(counters.dead.items()):
            dead.add_metric([reason], float(count))
        yield dead
        connections = GaugeMetricFamily("channel_runtime_connections", "Connections by status", labels=["status"])
        for status in CONNECTION_STATUSES:
            connections.add_metric([status], float(self._connections.get(status, 0)))
        yield connections
        yield GaugeMetricFamily(
            "channel_runtime_connections_session_expired",
            "Accounts whose platform session expired: they wait for a re-login",
            value=self._expired,
        )
        yield GaugeMetricFamily(
            "channel_runtime_event_subscribers", "Streams of GET /api/events", value=runtime.events.subscribers
        )
        yield CounterMetricFamily(
            "channel_runtime_event_subscribers_dropped",
            "Event streams dropped for reading too slowly",
            value=runtime.events.dropped,
        )


Refresh = Callable[[], Awaitable[None]]


def metrics_registry(snapshots: Snapshots) -> CollectorRegistry:
    """A registry of its own (not the process-global one), so several apps can live in one process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PluginCollector(snapshots))
    return registry


def add_runtime_metrics(registry: CollectorRegistry, runtime: ChannelRuntime) -> Refresh:
    """Register the runtime's metrics; await the returned function before each scrape."""
    collector = RuntimeCollector(runtime)
    registry.register(collector)
    return collector.refresh


def metrics_endpoint(registry: CollectorRegistry, refresh: Refresh | None = None) -> Callable[[Request], Any]:
    async def metrics(request: Request) -> Response:
        if refresh is not None:
            await refresh()
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
