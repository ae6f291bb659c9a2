"""Liveness and readiness (SPEC 7.3): public, tiny, never cached."""

from __future__ import annotations

from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

READY_TIMEOUT = 2.0
_NO_CACHE = {"Cache-Control": "no-store"}


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"}, headers=_NO_CACHE)


async def readyz(request: Request) -> Response:
    checks = await _checks(request)
    ready = all(checks.values())
    body: dict[str, Any] = {"status": "ready" if ready else "not_ready", "checks": checks}
    # SPEC 5.3: a host without a plugin sandbox says so (ready all the same; the warning is loud)
    body["sandbox"] = request.app.state.host.sandbox.status.view()
    return JSONResponse(body, status_code=200 if ready else 503, headers=_NO_CACHE)


async def _checks(request: Request) -> dict[str, bool]:
    host = request.app.state.host
    runtime: Any = request.app.state.runtime
    checks = {"host": bool(host.started), "registry": _registry_answers(host)}
    if runtime is not None:
        checks["runtime"] = bool(runtime.started)
        checks["store"] = await _store_answers(runtime) if checks["runtime"] else False
    return checks


def _registry_answers(host: Any) -> bool:
    try:
        host.registry.list()
    except Exception:
        return False
    return True


async def _store_answers(runtime: Any) -> bool:
    with anyio.move_on_after(READY_TIMEOUT):
        try:
            await runtime.store.inbox.pending_count()
        except Exception:
            return False
        return True
    return False


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
