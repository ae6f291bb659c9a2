"""Run one app of the ingest bench under uvicorn with the bench's fixed settings.

    python -m bench._serve ours|sidecar|ceiling --port P [--home DIR]

Both apps get the same uvicorn settings: one worker (this process), the asyncio
loop, the h11 HTTP implementation, access log off, lifespan on. `ours` is the
full service `channel-runtime serve` builds (`channel_runtime_cli.compose.build_app`),
without the first-start install of the bundled plugins; its settings come from
the environment (CHANNEL_RUNTIME_BRIDGE_TOKEN, ...) like the CLI's. `sidecar` is
`channel-runtime sidecar`'s app (`compose.build_sidecar_app`, bundled plugins installed),
its settings from the seed's environment (CONNECTOR_API_TOKEN, BEAVER_BRIDGE_BASE_URL, ...).
"""

from __future__ import annotations

import argparse
import logging

import anyio
import uvicorn


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("app", choices=["ours", "sidecar", "ceiling"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--home")
    p.add_argument("--handler", default="bench._handlers:noop")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.app == "ours":
        from channel_runtime.settings import Settings
        from channel_runtime_cli.compose import build_app

        settings = Settings.load(home=args.home, port=args.port, handler=args.handler)
        app = build_app(settings, bundled=False)
    elif args.app == "sidecar":
        from channel_runtime.settings import SidecarSettings
        from channel_runtime_cli.compose import build_sidecar_app

        app = build_sidecar_app(SidecarSettings.load(home=args.home, port=args.port))
    else:
        from bench._ceiling_app import app
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        lifespan="on",
        log_level="warning",
        access_log=False,
        loop="asyncio",
        http="h11",
        workers=1,
    )
    anyio.run(uvicorn.Server(config).serve)


if __name__ == "__main__":
    main()
