"""/metrics: Prometheus text from supervisor snapshots, read at scrape time."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from admin_api.metrics import PLUGIN_STATES, metrics_registry
from tests.support.admin import plugin_zip, running

SNAPSHOT = {
    "echo": {
        "state": "degraded",
        "health": "degraded",
        "counters": {"restarts": 3, "crashes": 2, "timeouts": 5, "protocolViolations": 7, "oversizedMessages": 1},
        "latencyMs": {
            "message.send": {"count": 10, "p50": 12.0, "p99": 250.0},
            "health": {"count": 0, "p50": None, "p99": None},
        },
        "rpcErrors": {"-32001": 5},
    },
    "idle": {"state": "disabled"},
}


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_collector_reads_snapshots_at_scrape_time() -> None:
    current = {"snap": SNAPSHOT}
    registry = metrics_registry(lambda: current["snap"])
    samples = _samples(generate_latest(registry).decode())
    for state in PLUGIN_STATES:
        expected = 1.0 if state == "degraded" else 0.0
        assert samples[("channel_runtime_plugin_state", (("plugin", "echo"), ("state", state)))] == expected
    assert samples[("channel_runtime_plugin_state", (("plugin", "idle"), ("state", "disabled")))] == 1.0
    assert samples[("channel_runtime_plugin_restarts_total", (("plugin", "echo"),))] == 3
    assert samples[("channel_runtime_plugin_crashes_total", (("plugin", "echo"),))] == 2
    assert samples[("channel_runtime_plugin_timeouts_total", (("plugin", "echo"),))] == 5
    assert samples[("channel_runtime_plugin_protocol_violations_total", (("plugin", "echo"),))] == 7
    assert samples[("channel_runtime_plugin_oversized_messages_total", (("plugin", "echo"),))] == 1
    assert samples[("channel_runtime_plugin_restarts_total", (("plugin", "idle"),))] == 0
    key = (
        "channel_runtime_plugin_call_latency_seconds",
        (("method", "message.send"), ("plugin", "echo"), ("quantile", "0.99")),
    )
    assert samples[key] == pytest.approx(0.25)
    assert (
        samples[("channel_runtime_plugin_call_latency_seconds_count", (("method", "message.send"), ("plugin", "echo")))]
        == 10
    )
    assert samples[("channel_runtime_plugin_rpc_errors_total", (("code", "-32001"), ("plugin", "echo")))] == 5

    current["snap"] = {}
    assert 'plugin="echo"' not in generate_latest(registry).decode()


@pytest.mark.anyio
async def test_metrics_endpoint_with_a_running_plugin(tmp_path: Path) -> None:
    async with running(tmp_path / "home") as (app, http):
        await http.post("/api/plugins", content=plugin_zip(tmp_path), headers={"Content-Type": "application/zip"})
        await http.post("/api/plugins/echo/enable")
        await app.state.host.client("echo").health()
        r = await http.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        samples = _samples(r.text)
        assert samples[("channel_runtime_plugin_state", (("plugin", "echo"), ("state", "running")))] == 1.0
        await http.post("/api/plugins/echo/disable")
        samples = _samples((await http.get("/metrics")).text)
        assert samples[("channel_runtime_plugin_state", (("plugin", "echo"), ("state", "disabled")))] == 1.0
