"""Fixtures of the admin page's browser tests: one real `channel-runtime serve`, one Chromium.

Playwright drives Debian's Chromium (`/usr/bin/chromium`, installed by
`scripts/install`); no browser is ever downloaded. The server and the
installed test plugins are shared by the whole session, the browser by a module (a test leaves what
it made behind, so each one uses names of its own); every test gets a fresh
browser context (its own sessionStorage) and checks that the page logged no error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from plugin_host.package import pack_directory
from tests.support import REPO, ServeProcess, wait_for
from tests.support.admin import plugin_source

playwright_sync = pytest.importorskip("playwright.sync_api", reason="the test extra installs playwright")
# live updates arrive within a poll or two; a slow shared machine gets room
playwright_sync.expect.set_options(timeout=15_000)

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ADMIN_TOKEN = "browser-admin-T0ken-0123456789abcdef"
QRDEMO_DIR = REPO / "tests" / "plugins" / "qrdemo"
VERIFY_CODE = "246810"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# Chromium logs every 4xx/5xx answer as a console error; the page handles the 4xx ones it
# asks for on purpose (a 422 at a form, a 409 in-use, a route this server does not have)
_EXPECTED_HTTP = re.compile(r"^Failed to load resource: the server responded with a status of 4\d\d")


class Server:
    """The serve process, an API client with the admin token, and the fake phone/platform."""

    def __init__(self, proc: ServeProcess, home: Path) -> None:
        self.proc = proc
        self.home = home
        self.base = proc.base
        self.api = httpx.Client(base_url=proc.base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)

    def install(self, archive: Path, *, enable: bool = True) -> dict[str, Any]:
        answer = self.api.post(
            "/api/plugins", content=archive.read_bytes(), headers={"Content-Type": "application/zip"}
        )
        assert answer.status_code in (200, 201), answer.text
        body = answer.json()
        if enable:
            assert self.api.post(f"/api/plugins/{body['id']}/enable").status_code == 200
            wait_for(lambda: self.plugin(body["id"])["state"] == "running", 30, f"{body['id']} running")
        return body

    def plugin(self, plugin_id: str) -> dict[str, Any]:
        return self.api.get(f"/api/plugins/{plugin_id}").json()

    def connection(self, connection_id: str) -> dict[str, Any]:
        return self.api.get(f"/api/connections/{connection_id}").json()

    def phone(self, connection_id: str, action: str, **fields: Any) -> None:
        """The test's platform side: the qrdemo plugin's webhook (see tests/plugins/qrdemo)."""
        answer = httpx.post(f"{self.base}/webhooks/{connection_id}", json={"action": action, **fields}, timeout=30)
        assert answer.status_code == 200, answer.text

    def connect_qrdemo(self, name: str) -> str:
        """A connected qrdemo account made through the API; its connection id."""
        started = self.api.post("/api/connector-sessions", json={"kind": "qrdemo", "displayName": name, "options": {}})
        assert started.status_code == 201, started.text
        session_id = started.json()["session"]["sessionId"]
        connection_id = started.json()["connection"]["connectionId"]
        self.phone(connection_id, "scan")
        self.phone(connection_id, "confirm")
        answer = self.api.post(f"/api/connector-sessions/{session_id}/input", json={"input": VERIFY_CODE})
        assert answer.status_code == 200, answer.text
        wait_for(lambda: self.connection(connection_id)["status"] == "connected", 30, f"{name} connected")
        return connection_id


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("admin-browser")
    home = root / "home"
    proc = ServeProcess(home, cwd=root, env={"CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN_TOKEN})
    try:
        proc.wait_ready()
        srv = Server(proc, home)
        # the bundled echo plugin is installed on the first start; qrdemo is the test connector
        srv.install(pack_directory(QRDEMO_DIR, root / "qrdemo-1.0.0.zip"))
        yield srv
        srv.api.close()
    finally:
        code, _, err = proc.stop()
        assert code == 0, err[-3000:]


@pytest.fixture(scope="session")
def zips(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`zips(plugin_id, version)`: an echo clone with that id and version, packed."""
    root = tmp_path_factory.mktemp("zips")

    def make(plugin_id: str, version: str = "1.0.0") -> Path:
        source = plugin_source(root, version, plugin_id=plugin_id)
        return pack_directory(source, root / f"{plugin_id}-{version}.zip")

    return make


# per module, not per session: the sync API keeps its event loop registered as running in
# this thread until it exits, which would break the anyio tests collected after these
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install (it installs Debian's chromium)")
    with playwright_sync.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


class PageErrors:
    """Uncaught exceptions and console errors of the pages of one test (`allow` adds expected ones)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allowed: list[re.Pattern[str]] = [_EXPECTED_HTTP]

    def allow(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def watch(self, page: Any) -> None:
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("console", self._console)

    def _console(self, msg: Any) -> None:
        if msg.type == "error" and not any(p.search(msg.text) for p in self.allowed):
            self.errors.append(f"console.{msg.type}: {msg.text} ({msg.location.get('url')})")


def open_admin(browser: Any, server: Server, errors: PageErrors, viewport: dict[str, int] = DESKTOP) -> Any:
    """A new browser context on `/` (redirected to /admin), signed in."""
    context = browser.new_context(viewport=viewport, accept_downloads=True)
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors.watch(page)
    page.goto(server.base + "/")
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    playwright_sync.expect(page.get_by_role("navigation", name="Sections")).to_be_visible()
    return page


@pytest.fixture
def page_errors() -> Iterator[PageErrors]:
    errors = PageErrors()
    yield errors
    assert errors.errors == [], "the page logged errors:\n" + "\n".join(errors.errors)


@pytest.fixture
def page(browser: Any, server: Server, page_errors: PageErrors) -> Iterator[Any]:
    page = open_admin(browser, server, page_errors)
    yield page
    page.context.close()


@pytest.fixture
def phone_page(browser: Any, server: Server, page_errors: PageErrors) -> Iterator[Any]:
    page = open_admin(browser, server, page_errors, PHONE)
    yield page
    page.context.close()
