"""`GET /api/events`: Server-Sent Events of host changes, for live pages (SPEC 7.3).

Frames are `id: {run}-{n}`, `event: {type}` and `data: {"time": epoch, ...fields}`
(types and fields: `channel_runtime.events`). A client that reconnects with the
`Last-Event-ID` header (or `?lastEventId=`) gets what it missed from the host's
ring of recent events, or first a `reset` event when that is no longer possible
(reload the state, then follow). A comment line is sent every
`HEARTBEAT_SECONDS` so proxies keep the stream open. A reader too slow to keep
up is dropped (the stream ends; reconnect to resume); at most
`EventHub.max_subscribers` streams are served at once (503 beyond).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from channel_runtime.events import Event, EventHub, TooManySubscribers

from ..redaction import redact_all
from .bridge import runtime_of

HEARTBEAT_SECONDS = 15.0
RECONNECT_MS = 3000
_MAX_ID_CHARS = 64


async def events(request: Request) -> Response:
    hub: EventHub = runtime_of(request).events
    last = request.headers.get("last-event-id") or request.query_params.get("lastEventId") or None
    last = last[:_MAX_ID_CHARS] if last else None
    secrets = request.app.state.secrets
    hub.check_capacity()  # 503 in the JSON shape before the stream starts

    def frame(event: Event) -> bytes:
        data = msgspec.json.encode(redact_all({"time": event.time, **event.data}, secrets)).decode()
        return f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n".encode()

    async def body() -> AsyncIterator[bytes]:
        try:
            # subscribed once the stream runs, so a response never sent holds no subscription;
            # the first frame says the subscription is live
            async with hub.subscribe(last) as stream:
                yield f"retry: {RECONNECT_MS}\n\n".encode()
                while True:
                    with anyio.move_on_after(HEARTBEAT_SECONDS) as idle:
                        try:
                            event = await stream.receive()
                        except (anyio.EndOfStream, anyio.ClosedResourceError):
                            return  # dropped as a slow reader, or the host stops
                    if idle.cancelled_caught:
                        yield b": heartbeat\n\n"
                        continue
                    yield frame(event)
        except TooManySubscribers:
            return  # lost the race for the last place: the client retries after `retry`

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


routes = [Route("/api/events", events, methods=["GET"])]
