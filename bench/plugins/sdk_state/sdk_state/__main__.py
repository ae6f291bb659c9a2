"""The SDK side of bench/rpc.py's state figures: `bench.state` runs `plugin.state.put` and times it.

The clock runs here, in the plugin, around each `await plugin.state.put(...)`: one
put is the full round trip plugin -> host -> store -> plugin, epoch included.
"""

from __future__ import annotations

import math
import time
from typing import Any

import anyio

from plugin_host.sdk import Context, Plugin

plugin = Plugin()


@plugin.method("bench.state")
async def bench_state(ctx: Context, params: Any) -> dict[str, Any]:
    connection_id, count, in_flight = params["connectionId"], params["count"], params["inFlight"]
    clock = time.perf_counter
    latencies: list[float] = []
    todo = iter(range(count))

    async def writer() -> None:
        for i in todo:
            began = clock()
            await plugin.state.put(f"cursor_{i % 64}", {"offset": i, "token": "t" * 32}, connection_id=connection_id)
            latencies.append(clock() - began)

    began = clock()
    async with anyio.create_task_group() as tg:
        for _ in range(in_flight):
            tg.start_soon(writer)
    elapsed = clock() - began
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies), max(1, math.ceil(p / 100 * len(latencies)))) - 1] * 1e6

    return {"p50Us": pct(50), "p99Us": pct(99), "perSecond": count / elapsed}


if __name__ == "__main__":
    plugin.run()
