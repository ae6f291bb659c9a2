"""The Accounts tab in Chromium: the connect wizard, a live QR login, verify code, cancel, re-login."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect

from .conftest import VERIFY_CODE, Server


def open_wizard(page: Any, name: str) -> Any:
    page.get_by_role("link", name="Accounts").click()
    connector = page.get_by_role("article", name="QR demo", exact=True)
    connector.get_by_role("button", name="Connect a QR demo account").click()
    connector.get_by_label("Account name (shown here)").fill(name)
    return connector


def session_card(page: Any, name: str) -> Any:
    return page.get_by_role("article", name=f"Connecting {name}")


def connection_id_of(server: Server, name: str) -> str:
    for c in server.api.get("/api/connections").json():
        if c["displayName"] == name:
            return c["connectionId"]
    raise AssertionError(f"no connection named {name}")


def test_qr_login_follows_the_session_live_to_connected(page: Any, server: Server) -> None:
    connector = open_wizard(page, "Alice phone")
    connector.get_by_role("button", name="Start connecting QR demo").click()
    session = session_card(page, "Alice phone")
    status = session.get_by_role("status").first
    expect(status).to_have_text("Waiting for you to scan the QR code")
    qr = session.get_by_role("img", name="QR code to scan with your phone to log in to Alice phone")
    expect(qr).to_be_visible()
    box = qr.bounding_box()
    assert box is not None and box["width"] >= 250  # large enough to scan from a screen
    assert qr.get_attribute("src").startswith("data:image/svg+xml")
    expect(session.get_by_role("listitem")).to_have_text(
        ["Open the QR demo app on your phone.", "Scan this code, then confirm the login."]
    )
    expect(session.get_by_label("Verification code", exact=True)).to_be_hidden()

    connection_id = connection_id_of(server, "Alice phone")
    server.phone(connection_id, "scan")  # the page hears it through the session's event stream
    expect(status).to_have_text("Scanned: confirm the login on your phone")
    server.phone(connection_id, "confirm")
    expect(status).to_have_text("Waiting for you: enter the code shown on your phone")
    code = session.get_by_label("Verification code", exact=True)
    code.fill("000000")
    session.get_by_role("button", name="Send the verification code for Alice phone").click()
    expect(session.get_by_text("That code is not the one on your phone")).to_be_visible()
    code.fill(VERIFY_CODE)
    session.get_by_role("button", name="Send the verification code for Alice phone").click()
    expect(status).to_have_text(re.compile("^Connected as Alice phone"))
    expect(qr).to_be_hidden()
    account = page.get_by_role("article", name="Alice phone", exact=True)
    expect(account).to_contain_text("connected")
    assert server.connection(connection_id)["status"] == "connected"
    session.get_by_role("button", name="Done with the Alice phone sign-in").click()
    expect(session).to_have_count(0)


def test_cancel_then_dismiss_a_sign_in(page: Any, server: Server) -> None:
    connector = open_wizard(page, "Bob phone")
    connector.get_by_role("button", name="Start connecting QR demo").click()
    session = session_card(page, "Bob phone")
    expect(session.get_by_role("status").first).to_have_text("Waiting for you to scan the QR code")
    session.get_by_role("button", name="Cancel connecting Bob phone").click()
    expect(session.get_by_role("status").first).to_have_text("Cancelled")
    expect(session.get_by_role("button", name="Cancel connecting Bob phone")).to_be_hidden()
    connection = server.connection(connection_id_of(server, "Bob phone"))
    assert connection["status"] == "error"
    session.get_by_role("button", name="Dismiss the Bob phone sign-in").click()
    expect(session).to_have_count(0)
    page.reload()  # a dismissed session does not come back
    expect(page.get_by_role("article", name="Connecting Bob phone")).to_have_count(0)


def test_a_sign_in_in_progress_survives_a_reload(page: Any, server: Server) -> None:
    connector = open_wizard(page, "Carol phone")
    connector.get_by_role("button", name="Start connecting QR demo").click()
    expect(session_card(page, "Carol phone").get_by_role("status").first).to_have_text(
        "Waiting for you to scan the QR code"
    )
    page.reload()
    session = session_card(page, "Carol phone")
    expect(session.get_by_role("status").first).to_have_text("Waiting for you to scan the QR code")
    server.phone(connection_id_of(server, "Carol phone"), "scan")
    expect(session.get_by_role("status").first).to_have_text("Scanned: confirm the login on your phone")
    session.get_by_role("button", name="Cancel connecting Carol phone").click()
    expect(session.get_by_role("status").first).to_have_text("Cancelled")


def test_the_connect_form_comes_from_the_options_schema(page: Any, server: Server) -> None:
    connector = open_wizard(page, "Dana phone")
    expect(connector.get_by_label("Region")).to_have_js_property("tagName", "SELECT")
    expect(connector.get_by_label("App secret")).to_be_hidden()  # only the link choice needs it
    connector.get_by_label("How", exact=True).select_option("link")
    expect(connector.get_by_label("App secret")).to_have_attribute("type", "password")
    connector.get_by_label("Region").select_option("eu")
    connector.get_by_label("App secret").fill("dana-App-Secret-0123456789")
    connector.get_by_role("button", name="Start connecting QR demo").click()
    session = session_card(page, "Dana phone")
    expect(session.get_by_role("status").first).to_have_text("Waiting for you to scan the QR code")
    connection = server.connection(connection_id_of(server, "Dana phone"))
    assert connection["options"] == {"mode": "link", "region": "eu"}  # the secret went to the plugin only
    assert "dana-App-Secret" not in page.content()
    session.get_by_role("button", name="Cancel connecting Dana phone").click()


def test_an_expired_account_stands_out_and_logs_in_again(page: Any, server: Server) -> None:
    connection_id = server.connect_qrdemo("Erin phone")
    page.get_by_role("link", name="Accounts").click()
    account = page.get_by_role("article", name="Erin phone", exact=True)
    expect(account).to_contain_text("connected")
    server.phone(connection_id, "expire")
    attention = page.get_by_role("region", name="Needs attention")
    expect(attention).to_contain_text("Erin phone (qrdemo) must log in again")
    expect(account).to_contain_text("session expired")
    attention.get_by_role("button", name="Log in again to Erin phone").click()
    session = session_card(page, "Erin phone")
    expect(session.get_by_role("status").first).to_have_text("Waiting for you to scan the QR code")
    server.phone(connection_id, "scan")
    server.phone(connection_id, "confirm")
    session.get_by_label("Verification code", exact=True).fill(VERIFY_CODE)
    session.get_by_role("button", name="Send the verification code for Erin phone").click()
    expect(session.get_by_role("status").first).to_have_text(re.compile("^Connected as"))
    expect(attention).to_be_hidden()
    assert server.connection(connection_id)["status"] == "connected"  # the same connection, again
