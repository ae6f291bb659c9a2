"""`/metrics`: Prometheus text read from the plugin supervisors' snapshots at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

PLUGIN_STATES = ("stopped", "starting", "running", "degraded", "backoff", "failed", "disabled")

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


def metrics_registry(snapshots: Snapshots) -> CollectorRegistry:
    """A registry of its own (not the process-global one), so several apps can live in one process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PluginCollector(snapshots))
    return registry


def metrics_endpoint(registry: CollectorRegistry) -> Callable[[Request], Any]:
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
