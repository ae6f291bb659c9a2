"""`/api/deliveries`: outbox deliveries in every state and inbox dead letters; retry and discard (SPEC 6.4, 7.3).

A delivery is `channel_runtime.deliveries.DeliveryView` as JSON (camelCase). The
listing answers a JSON array, newest first; when more follow, the `X-Next-Cursor`
header carries the opaque cursor of the next page (`?cursor=`), up to `limit`
(default 50, at most 500) deliveries a page.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from channel_runtime.deliveries import DeliveryView
from channel_runtime.runtime import MAX_PAGE

from ..errors import ApiError
from ..redaction import redact_all
from .bridge import runtime_of

NEXT_CURSOR_HEADER = "X-Next-Cursor"
_MAX_FILTER_CHARS = 512


def _answer(
    request: Request, value: DeliveryView | list[DeliveryView], headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(redact_all(msgspec.to_builtins(value), request.app.state.secrets), headers=headers)


def _filter(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    if len(value) > _MAX_FILTER_CHARS:
        raise ApiError(
            "invalid_parameter", f"{name} is longer than {_MAX_FILTER_CHARS} characters", {"parameter": name}
        )
    return value


def _limit(request: Request) -> int:
    text = request.query_params.get("limit", "50")
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise ApiError("invalid_parameter", f"limit must be an integer from 1 to {MAX_PAGE}", {"parameter": "limit"})
    return int(text)


async def list_deliveries(request: Request) -> Response:
    direction = _filter(request, "direction")
    if direction not in (None, "outbound", "inbound"):
        raise ApiError("invalid_parameter", "direction must be outbound or inbound", {"parameter": "direction"})
    views, cursor = await runtime_of(request).deliveries(
        status=_filter(request, "status"),
        channel_id=_filter(request, "channelId"),
        peer_id=_filter(request, "peerId"),
        direction=direction,  # type: ignore[arg-type]  # checked just above
        limit=_limit(request),
        cursor=_filter(request, "cursor"),
    )
    return _answer(request, views, {NEXT_CURSOR_HEADER: cursor} if cursor else None)


async def get_delivery(request: Request) -> Response:
    delivery_id = request.path_params["delivery_id"]
    view = await runtime_of(request).delivery(delivery_id)
    if view is None:
        raise ApiError("delivery_not_found", f"no delivery {delivery_id[:80]!r}", status=404)
    return _answer(request, view)


async def retry_delivery(request: Request) -> Response:
    return _answer(request, await runtime_of(request).retry_delivery(request.path_params["delivery_id"]))


async def discard_delivery(request: Request) -> Response:
    await runtime_of(request).discard_delivery(request.path_params["delivery_id"])
    return Response(status_code=204)


routes = [
    Route("/api/deliveries", list_deliveries, methods=["GET"]),
    Route("/api/deliveries/{delivery_id}", get_delivery, methods=["GET"]),
    Route("/api/deliveries/{delivery_id}", discard_delivery, methods=["DELETE"]),
    Route("/api/deliveries/{delivery_id}/retry", retry_delivery, methods=["POST"]),
]
