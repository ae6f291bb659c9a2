"""The SDK side of `bench/rpc.py`: the smallest useful plugin, one `echo` method."""

from __future__ import annotations

from typing import Any

from plugin_host.sdk import Context, Plugin

plugin = Plugin()


@plugin.method("echo")
async def echo(ctx: Context, params: Any) -> Any:
    return params


if __name__ == "__main__":
    plugin.run()
