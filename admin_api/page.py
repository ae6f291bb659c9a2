"""`GET /admin`: the admin page, one self-contained HTML file (no external assets)."""

from __future__ import annotations

import functools
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

PAGE_PATH = Path(__file__).with_name("admin.html")
# inline script and style only; the page talks to this origin and nothing else
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@functools.cache
def _page() -> str:
    return PAGE_PATH.read_text("utf-8")


async def admin_page(request: Request) -> Response:
    return HTMLResponse(_page(), headers=_HEADERS)
