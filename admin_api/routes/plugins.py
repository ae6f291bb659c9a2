"""`/api/plugins`: install, inspect and drive plugins (SPEC 7.3)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from plugin_host.host import HostError, PluginHost
from plugin_host.redact import mark_secret_fields

from ..body import read_object, receive_upload
from ..errors import ApiError
from ..redaction import mask_config, redact_all, secret_values, unmask_config

LOGS_DEFAULT_TAIL = 200
LOGS_MAX_TAIL = 1000


def _host(request: Request) -> PluginHost:
    return request.app.state.host


def _secrets(request: Request) -> list[str]:
    return list(request.app.state.secrets)


def plugin_view(request: Request, plugin_id: str, *, detail: bool = False) -> dict[str, Any]:
    """A plugin as the API shows it: secret config values masked, every text redacted."""
    view = _host(request).describe(plugin_id, detail=detail)
    secrets = _secrets(request)
    if detail:
        schema = view.get("configSchema", {})
        secrets += secret_values(view.get("config"), schema)
        view["config"] = mask_config(view.get("config"), schema)
        view["configSchema"] = mark_secret_fields(schema)  # the page's form reads what the host masks
    return redact_all(view, secrets)


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise ApiError("invalid_parameter", f"{name} must be true or false", {"parameter": name}, status=400)


def _after(request: Request) -> int:
    raw = request.query_params.get("after", "0")
    if not raw.strip().isdigit() or len(raw) > 18:
        raise ApiError("invalid_parameter", "after must be a line sequence number", {"parameter": "after"}, status=400)
    return int(raw)


def _tail(request: Request) -> int:
    raw = request.query_params.get("tail")
    if raw is None:
        return LOGS_DEFAULT_TAIL
    if not raw.strip().isdigit():
        raise ApiError("invalid_parameter", "tail must be a whole number of lines", {"parameter": "tail"}, status=400)
    if int(raw) > LOGS_MAX_TAIL:  # as /openapi.json says: 0 to 1000
        raise ApiError("invalid_parameter", f"tail is at most {LOGS_MAX_TAIL} lines", {"parameter": "tail"}, status=400)
    return int(raw)


# ---------------------------------------------------------------- collection


async def list_plugins(request: Request) -> Response:
    secrets = _secrets(request)
    views = _host(request).list()
    for view in views:
        # manifests are the admin's own uploads; only what a plugin reported is free text
        view["lastError"] = redact_all(view["lastError"], secrets)
    return JSONResponse(views)


async def install_plugin(request: Request) -> Response:
    upload = await receive_upload(request)
    try:
        outcome = await _host(request).install(upload, source_label="upload")
    finally:
        upload.close()
    body = {
        "id": outcome.plugin_id,
        "version": outcome.version,
        "sha256": outcome.sha256,
        "created": outcome.created,
        "plugin": plugin_view(request, outcome.plugin_id),
    }
    return JSONResponse(body, status_code=201 if outcome.created else 200)


# ---------------------------------------------------------------- one plugin


async def get_plugin(request: Request) -> Response:
    return JSONResponse(plugin_view(request, request.path_params["plugin_id"], detail=True))


async def enable_plugin(request: Request) -> Response:
    plugin_id = request.path_params["plugin_id"]
    await _host(request).enable(plugin_id)
    return JSONResponse(plugin_view(request, plugin_id, detail=True))


async def disable_plugin(request: Request) -> Response:
    plugin_id = request.path_params["plugin_id"]
    await _host(request).disable(plugin_id)
    return JSONResponse(plugin_view(request, plugin_id, detail=True))


async def restart_plugin(request: Request) -> Response:
    plugin_id = request.path_params["plugin_id"]
    await _host(request).restart(plugin_id)
    return JSONResponse(plugin_view(request, plugin_id, detail=True))


async def activate_version(request: Request) -> Response:
    plugin_id = request.path_params["plugin_id"]
    body = await read_object(request)
    version = body.get("version")
    if not isinstance(version, str) or not version:
        raise ApiError("invalid_body", 'the body must be {"version": "<installed version>"}', status=422)
    await _host(request).activate(plugin_id, version)
    return JSONResponse(plugin_view(request, plugin_id, detail=True))


async def delete_version(request: Request) -> Response:
    plugin_id, version = request.path_params["plugin_id"], request.path_params["version"]
    await _host(request).uninstall_version(plugin_id, version, force=_flag(request, "force"))
    return JSONResponse(plugin_view(request, plugin_id, detail=True))


async def delete_plugin(request: Request) -> Response:
    await _host(request).uninstall(request.path_params["plugin_id"], force=_flag(request, "force"))
    return Response(status_code=204)


async def plugin_logs(request: Request) -> Response:
    plugin_id = request.path_params["plugin_id"]
    tail = _tail(request)
    host = _host(request)
    record_view = host.describe(plugin_id, detail=True)
    secrets = _secrets(request) + secret_values(record_view.get("config"), record_view.get("configSchema"))
    lines = host.log_lines(plugin_id, tail, _after(request))
    texts = redact_all([line.text for line in lines], secrets)
    if not _flag(request, "timestamps"):
        return JSONResponse(texts)
    # timestamps=true: {seq, at, line} per line, so a live tail asks only for what is newer (after=seq)
    return JSONResponse(
        [{"seq": line.seq, "at": _rfc3339(line.at), "line": text} for line, text in zip(lines, texts, strict=True)]
    )


def _rfc3339(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def put_config(request: Request) -> Response:
    plugin_id = request.path_params["plugin_id"]
    submitted = await read_object(request)
    host = _host(request)
    current = host.describe(plugin_id, detail=True)
    schema = current.get("configSchema", {})
    config = unmask_config(submitted, current.get("config"))
    try:
        await host.set_config(plugin_id, config)
    except HostError as exc:
        # schema errors quote the rejected values: mask the secret ones
        secrets = secret_values(config, schema)
        raise ApiError(
            exc.code, redact_all(exc.message, secrets), redact_all(exc.details, secrets), status=exc.status
        ) from None
    return JSONResponse(plugin_view(request, plugin_id, detail=True))


routes = [
    Route("/api/plugins", list_plugins, methods=["GET"]),
    Route("/api/plugins", install_plugin, methods=["POST"]),
    Route("/api/plugins/{plugin_id}", get_plugin, methods=["GET"]),
    Route("/api/plugins/{plugin_id}", delete_plugin, methods=["DELETE"]),
    Route("/api/plugins/{plugin_id}/enable", enable_plugin, methods=["POST"]),
    Route("/api/plugins/{plugin_id}/disable", disable_plugin, methods=["POST"]),
    Route("/api/plugins/{plugin_id}/restart", restart_plugin, methods=["POST"]),
    Route("/api/plugins/{plugin_id}/activate", activate_version, methods=["POST"]),
    Route("/api/plugins/{plugin_id}/versions/{version}", delete_version, methods=["DELETE"]),
    Route("/api/plugins/{plugin_id}/logs", plugin_logs, methods=["GET"]),
    Route("/api/plugins/{plugin_id}/config", put_config, methods=["PUT"]),
]
