"""Screenshots of the admin page's main screens for docs/ (desktop and phone), from a real serve.

    .venv/bin/python -m tests.admin_api.browser.screenshots [OUT_DIR]   (default docs/screenshots)

Not a test: it makes a little state (a connected account with traffic, a sign-in
waiting for its QR scan, a dead delivery), then photographs each tab.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from plugin_host.package import pack_directory
from tests.support import REPO, ServeProcess, wait_for

from .conftest import ADMIN_TOKEN, CHROMIUM, CHROMIUM_ARGS, DESKTOP, PHONE, QRDEMO_DIR, Server

SCREENS = ("overview", "plugins", "accounts", "deliveries", "logs")


def make_state(server: Server, root: Path) -> None:
    server.install(pack_directory(QRDEMO_DIR, root / "qrdemo.zip"))
    server.api.put(
        "/api/plugins/qrdemo/config",
        json={"greeting": "Welcome", "maxSessions": 3, "region": "eu", "apiKey": "demo-Key-0123456789"},
    )
    wait_for(lambda: server.plugin("qrdemo")["state"] == "running", 30, "qrdemo running")
    desk = server.connect_qrdemo("Support desk")
    for n in range(12):
        server.phone(desk, "message", peerId=f"customer_{n % 3}", text=f"question {n}", messageId=f"shot_{n}")
        time.sleep(0.05)
    sales = server.connect_qrdemo("Sales phone")
    server.phone(sales, "failSends", on=True)
    server.phone(sales, "message", peerId="lead_42", text="price?", messageId="shot_dead")
    wait_for(lambda: server.api.get("/api/deliveries", params={"status": "dead"}).json(), 30, "a dead delivery")
    server.phone(sales, "failSends", on=False)
    server.phone(sales, "log", level="warning", text="rate budget nearly used for lead_42")


def shoot(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="admin-shots-") as tmp:
        root = Path(tmp)
        proc = ServeProcess(root / "home", cwd=root, env={"CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN_TOKEN})
        try:
            proc.wait_ready()
            server = Server(proc, root / "home")
            make_state(server, root)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                for device, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
                    context = browser.new_context(viewport=viewport, device_scale_factor=1)
                    page = context.new_page()
                    page.goto(server.base + "/admin")
                    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
                    page.get_by_role("button", name="Sign in").click()
                    page.get_by_role("link", name="Accounts").click()
                    connector = page.get_by_role("article", name="QR demo", exact=True)
                    connector.get_by_role("button", name="Connect a QR demo account").click()
                    connector.get_by_label("Account name (shown here)").fill(f"New shop phone ({device})")
                    connector.get_by_role("button", name="Start connecting QR demo").click()
                    for screen in SCREENS:
                        page.goto(f"{server.base}/admin#{screen}")
                        if screen == "logs":
                            page.get_by_label("Plugin", exact=True).select_option("qrdemo")
                        if screen == "plugins":
                            card = page.get_by_role("article", name="QR demo", exact=True)
                            card.get_by_text("Versions (1)").click()
                            card.scroll_into_view_if_needed()
                        page.wait_for_timeout(2500)
                        page.screenshot(path=str(out / f"admin-{screen}-{device}.png"), full_page=device == "phone")
                    context.close()
                browser.close()
            server.api.close()
        finally:
            proc.stop()


if __name__ == "__main__":
    shoot(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "screenshots")
