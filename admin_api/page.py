"""The admin page: `GET /admin` (HTML), its script and style under `/admin/static/`, and `GET /` → `/admin`.

Everything the page needs is served from this package (no CDN, no build step), so
the page works offline and its Content-Security-Policy allows only this origin.
"""

from __future__ import annotations

import functools
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from .errors import ApiError

PAGE_PATH = Path(__file__).with_name("admin.html")
STATIC_DIR = Path(__file__).with_name("static")
STATIC_FILES = frozenset({"admin.js", "admin.css"})
_STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
_HEADERS = {
    # no inline script or style at all: a page that shows plugin-supplied text cannot be made to run it
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@functools.cache
def _page() -> str:
    return PAGE_PATH.read_text("utf-8")


def _static(name: str) -> bytes | None:
    # only the package's own files, by exact name: no path reaches outside static/
    return _read_static(name) if name in STATIC_FILES else None


@functools.cache
def _read_static(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


async def admin_page(request: Request) -> Response:
    return HTMLResponse(_page(), headers=_HEADERS)


async def static_file(request: Request) -> Response:
    name = request.path_params["name"]
    content = _static(name)
    if content is None:
        raise ApiError("not_found", f"the admin page has no file {name!r}", status=404)
    return Response(content, media_type=_STATIC_TYPES[Path(name).suffix], headers=_HEADERS)


async def root(request: Request) -> Response:
    # relative to where the app is mounted
    return RedirectResponse(request.scope.get("root_path", "").rstrip("/") + "/admin", status_code=307)


routes = [
    Route("/", root, methods=["GET"]),
    Route("/admin", admin_page, methods=["GET"]),
    Route("/admin/static/{name}", static_file, methods=["GET"]),
]
