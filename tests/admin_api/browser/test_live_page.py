"""The page as a whole in Chromium: live updates that keep what the admin is doing, a lost
connection, the token for the browser session, deliveries, logs, the overview, 390 px, the keyboard."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.support import wait_for

from .conftest import ADMIN_TOKEN, PHONE, PageErrors, Server, open_admin


def refreshes(page: Any, n: int, path: str = "/api/plugins", cause: Any = None) -> None:
    """Wait until the page has fetched `path` `n` more times (live updates), after `cause()` when given."""
    for _ in range(n):
        with page.expect_response(lambda r: r.url.endswith(path) and r.request.method == "GET", timeout=20_000):
            if cause is not None:
                cause()


def test_root_redirects_and_the_token_lasts_the_browser_session(
    browser: Any, server: Server, page_errors: PageErrors
) -> None:
    page = open_admin(browser, server, page_errors)
    assert page.url == server.base + "/admin"
    page.reload()
    expect(page.get_by_role("navigation", name="Sections")).to_be_visible()
    # another tab of the same browser session shares the token
    other = page.context.new_page()
    page_errors.watch(other)
    other.goto(server.base + "/admin#plugins")
    expect(other.get_by_role("article", name="QR demo", exact=True)).to_be_visible()
    assert other.evaluate("sessionStorage.getItem('channel-runtime-admin-token')") == ADMIN_TOKEN
    # signing out in one tab signs out every tab
    other.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Admin token")).to_be_visible()
    expect(page.get_by_role("alert").filter(has_text="Signed out in another tab")).to_be_visible()
    page.context.close()


def test_a_wrong_token_is_refused_with_a_message(browser: Any, server: Server, page_errors: PageErrors) -> None:
    context = browser.new_context()
    page = context.new_page()
    page_errors.watch(page)
    page.goto(server.base + "/admin")
    page.get_by_label("Admin token").fill("not-the-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert").filter(has_text="refused the token")).to_be_visible()
    expect(page.get_by_label("Admin token")).to_be_visible()
    context.close()


def test_typed_input_open_dialogs_and_focus_survive_live_updates(page: Any, server: Server) -> None:
    page.get_by_role("link", name="Accounts").click()
    connector = page.get_by_role("article", name="QR demo", exact=True)
    connector.get_by_role("button", name="Connect a QR demo account").click()
    name = connector.get_by_label("Account name (shown here)")
    name.press_sequentially("Half-typed na")
    expect(name).to_be_focused()
    restart = lambda: server.api.post("/api/plugins/echo/restart")  # noqa: E731  # a change the page hears of
    refreshes(page, 1, "/api/connectors", restart)
    expect(name).to_have_value("Half-typed na")
    expect(name).to_be_focused()
    page.keyboard.type("me")
    expect(name).to_have_value("Half-typed name")

    page.get_by_role("link", name="Plugins").click()
    page.get_by_role("button", name="Configure QR demo (qrdemo)").click()
    dialog = page.get_by_role("dialog", name="Configure QR demo (qrdemo)")
    greeting = dialog.get_by_label("Greeting")
    greeting.fill("typing while")
    details = page.get_by_role("article", name="Echo", exact=True).get_by_text("Counters and call latency")
    refreshes(page, 1, cause=restart)
    expect(dialog).to_be_visible()
    expect(greeting).to_have_value("typing while")
    expect(greeting).to_be_focused()
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("button", name="Configure QR demo (qrdemo)")).to_be_focused()  # focus goes back

    details.click()  # an opened <details> stays open across updates
    refreshes(page, 1, cause=restart)
    expect(
        page.get_by_role("article", name="Echo", exact=True).get_by_role("columnheader", name="p99 ms")
    ).to_be_visible()


def test_a_lost_connection_is_shown_and_the_page_reconnects(page: Any, page_errors: PageErrors) -> None:
    page_errors.allow(r"net::ERR_INTERNET_DISCONNECTED")
    lost = page.get_by_role("alert").filter(has_text="The connection to the server is lost")
    expect(page.get_by_role("status").filter(has_text="Live")).to_be_visible()
    page.context.set_offline(True)
    expect(lost).to_be_visible()
    expect(page.get_by_role("status").filter(has_text="Reconnecting")).to_be_visible()
    page.context.set_offline(False)
    expect(lost).to_be_hidden()
    expect(page.get_by_role("status").filter(has_text="Live")).to_be_visible()


def _failing_delivery(server: Server) -> tuple[str, str]:
    """A dead outbound delivery: qrdemo refuses the echo reply for good; (connection, peer)."""
    connection_id = server.connect_qrdemo(f"Dead letter {uuid.uuid4().hex[:6]}")
    peer = f"peer_{uuid.uuid4().hex[:8]}"
    server.phone(connection_id, "failSends", on=True)
    try:
        server.phone(connection_id, "message", peerId=peer, text="please answer", messageId=f"m_{peer}")

        def dead() -> bool:
            return any(
                (d.get("target") or {}).get("peerId", d.get("peerId")) == peer
                for d in server.api.get("/api/deliveries", params={"status": "dead"}).json()
            )

        wait_for(dead, 30, "the echo reply to be dead-lettered")
    finally:
        server.phone(connection_id, "failSends", on=False)
    return connection_id, peer


def test_dead_deliveries_are_listed_with_their_reason(page: Any, server: Server) -> None:
    _, peer = _failing_delivery(server)
    page.get_by_role("link", name="Deliveries").click()
    expect(page.get_by_label("State", exact=True)).to_have_value("dead")
    delivery = page.get_by_role("article").filter(has_text=peer)
    expect(delivery).to_contain_text("Reason: ")
    expect(delivery).to_contain_text("the demo platform refuses sends right now")
    # its SPEC 6.4 request id reads as it is, not masked as a token
    expect(delivery.get_by_role("heading")).to_have_text(re.compile(r"^out_[^\s]+:qrdemo:dm:" + peer))
    expect(delivery).not_to_contain_text("[REDACTED]")
    expect(delivery.get_by_role("button", name=re.compile("^Retry delivery"))).to_be_visible()
    expect(delivery.get_by_role("button", name=re.compile("^Discard delivery"))).to_be_visible()


def test_dead_deliveries_filter_retry_and_discard(page: Any, server: Server) -> None:
    connection_id, peer = _failing_delivery(server)
    _, other_peer = _failing_delivery(server)
    page.get_by_role("link", name="Deliveries").click()
    page.get_by_label("Peer", exact=True).fill(peer)
    expect(page.get_by_role("article").filter(has_text=other_peer)).to_have_count(0)
    delivery = page.get_by_role("article").filter(has_text=peer)
    expect(delivery).to_contain_text("dead")
    delivery.get_by_role("button", name=re.compile("^Retry delivery")).click()
    expect(delivery.get_by_role("status")).to_contain_text("Queued again")
    page.get_by_label("State", exact=True).select_option("sent")
    expect(page.get_by_role("article").filter(has_text=peer)).to_contain_text("sent")

    page.get_by_label("Peer", exact=True).fill(other_peer)
    page.get_by_label("State", exact=True).select_option("dead")
    other = page.get_by_role("article").filter(has_text=other_peer)
    other.get_by_role("button", name=re.compile("^Discard delivery")).click()
    page.get_by_role("dialog", name="Discard this delivery?").get_by_role("button", name="Discard").click()
    expect(other).to_have_count(0)


def test_logs_tail_live_with_level_and_text_filters_and_download(page: Any, server: Server) -> None:
    connection_id = server.connect_qrdemo(f"Logger {uuid.uuid4().hex[:6]}")
    page.get_by_role("link", name="Logs").click()
    page.get_by_label("Plugin", exact=True).select_option("qrdemo")
    lines = page.get_by_role("list", name="Log lines").get_by_role("listitem")
    expect(lines.filter(has_text="qrdemo started").first).to_be_visible()
    marker = f"boom-{uuid.uuid4().hex[:8]}"
    server.phone(connection_id, "log", level="error", text=f"{marker} went wrong")
    line = lines.filter(has_text=marker)
    expect(line).to_be_visible()  # live, without a reload
    expect(line.locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-\d\d-\d\dT"))

    page.get_by_label("Level", exact=True).select_option(label="Errors only")
    expect(lines.filter(has_text="qrdemo started").first).to_be_hidden()
    expect(line).to_be_visible()
    page.get_by_label("Level", exact=True).select_option(label="All levels")
    page.get_by_label("Text", exact=True).fill(marker)
    expect(lines.filter(has_text="qrdemo started").first).to_be_hidden()
    expect(line).to_be_visible()
    with page.expect_download() as download:
        page.get_by_role("button", name="Download").click()
    text = open(download.value.path(), encoding="utf-8").read()
    assert download.value.suggested_filename == "qrdemo-logs.txt"
    assert marker in text and "qrdemo started" not in text  # what the filters show


def test_overview_charts_messages_per_connection(page: Any, server: Server) -> None:
    name = f"Chatty {uuid.uuid4().hex[:6]}"
    connection_id = server.connect_qrdemo(name)
    for n in range(3):
        server.phone(
            connection_id, "message", peerId="peer_chart", text=f"hello {n}", messageId=f"chart_{connection_id}_{n}"
        )
    page.get_by_role("link", name="Overview").click()
    chart = page.get_by_role("figure", name=f"{name} (qrdemo)")
    expect(chart.get_by_role("img")).to_have_accessible_name(
        re.compile("3 messages received, 3 sent, 0 deferred, 0 dead")
    )
    expect(chart.get_by_role("listitem").filter(has_text="received")).to_have_text("3 received")
    expect(page.get_by_text("plugins running")).to_be_visible()


@pytest.mark.parametrize("tab", ["Overview", "Plugins", "Accounts", "Channels", "Deliveries", "Logs"])
def test_no_horizontal_overflow_at_390_px(phone_page: Any, tab: str) -> None:
    page = phone_page
    assert page.viewport_size == PHONE
    page.get_by_role("link", name=tab, exact=True).click()
    expect(page.get_by_role("heading", level=1, name=tab)).to_be_visible()
    if tab == "Plugins":
        page.get_by_role("article", name="QR demo", exact=True).get_by_text("Versions (1)").click()
    if tab == "Accounts":
        page.get_by_role("button", name="Connect a QR demo account").click()
    page.wait_for_timeout(300)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{tab} is {width} px wide"
    for button in page.get_by_role("button").all():
        if button.is_visible():
            box = button.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] + 0.5, button


def test_keyboard_only(page: Any, server: Server) -> None:
    def tab_to(name: str) -> None:
        # by accessible name: several plugins (the bundled ones too) have a "Configure" button
        focused = "document.activeElement && (document.activeElement.getAttribute('aria-label') || document.activeElement.textContent.trim())"
        for _ in range(120):
            page.keyboard.press("Tab")
            if page.evaluate(focused) == name:
                return
        raise AssertionError(f"Tab never reached {name}")

    page.locator("body").focus()
    tab_to("Plugins")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1, name="Plugins")).to_be_visible()
    tab_to("Configure QR demo (qrdemo)")
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Configure QR demo (qrdemo)")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_label("Greeting")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("button", name="Configure QR demo (qrdemo)")).to_be_focused()
