"""admin_api/page.py: the page, its own files, and `/` → `/admin` (the page itself is tested in browser/)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.support.admin import ADMIN_TOKEN, client, lifespan, make_app

pytestmark = pytest.mark.anyio


async def test_the_page_loads_only_its_own_files(tmp_path: Path) -> None:
    app = make_app(tmp_path / "home")
    async with lifespan(app), client(app, token=None) as http:
        page = await http.get("/admin")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "connect-src 'self'" in policy
        # no CDN, no font, no inline script or style: every reference is this origin's
        references = re.findall(r'(?:src|href)="([^"]*)"', page.text)
        assert references and all(not re.match(r"^(https?:)?//", ref) for ref in references), references
        assert "<script>" not in page.text and "<style>" not in page.text and " style=" not in page.text
        for name, media in (("admin.js", "text/javascript"), ("admin.css", "text/css")):
            answer = await http.get(f"/admin/static/{name}")
            assert answer.status_code == 200 and answer.headers["content-type"].startswith(media)
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", answer.text), name  # nothing from outside
        assert ADMIN_TOKEN not in page.text


async def test_only_the_pages_files_are_served(tmp_path: Path) -> None:
    app = make_app(tmp_path / "home")
    async with lifespan(app), client(app, token=None) as http:
        for name in ("admin.html", "..%2Fpage.py", "%2e%2e%2fapp.py", "missing.js", "ADMIN.JS", "admin.js%00"):
            answer = await http.get(f"/admin/static/{name}")
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found", name


async def test_root_redirects_to_the_admin_page(tmp_path: Path) -> None:
    app = make_app(tmp_path / "home")
    # mounted under a prefix (root_path), the redirect stays under it
    mounted = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, root_path="/console"), base_url="http://test")
    async with lifespan(app), client(app, token=None) as http, mounted:
        answer = await http.get("/")
        assert answer.status_code == 307 and answer.headers["location"] == "/admin"
        answer = await mounted.get("/console/")
        assert answer.status_code == 307 and answer.headers["location"] == "/console/admin"
