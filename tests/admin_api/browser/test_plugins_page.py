"""The Plugins tab in Chromium against a real serve: upload, lifecycle, hot swap, config form, uninstall."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from tests.support import ServeProcess, wait_for
from tests.support.zips import Entry, with_extra

from .conftest import ADMIN_TOKEN, Server, open_admin

pytestmark = []


def card(page: Any, title: str) -> Any:
    return page.get_by_role("article", name=title, exact=True)


def test_upload_refuses_a_bad_zip_by_its_rule_then_installs_a_good_one(
    page: Any, server: Server, zips: Any, tmp_path: Path
) -> None:
    page.get_by_role("link", name="Plugins").click()
    bad = tmp_path / "evil.zip"
    bad.write_bytes(with_extra(Entry("../evil.txt", b"x")))
    page.get_by_label("Install a plugin (zip)").set_input_files(str(bad))
    page.get_by_role("button", name="Install", exact=True).click()
    result = page.get_by_role("status").filter(has_text="evil.zip")
    expect(result).to_contain_text("was not installed")
    expect(result).to_contain_text("..")  # the refusal names its rule (a `..` component)

    page.get_by_label("Install a plugin (zip)").set_input_files(str(zips("uploaddemo", "1.0.0")))
    page.get_by_role("button", name="Install", exact=True).click()
    expect(page.get_by_role("status").filter(has_text="uploaddemo")).to_contain_text("Installed uploaddemo 1.0.0")
    # the new card arrives with the live update, disabled until enabled
    uploaded = card(page, "Echo").filter(has_text="uploaddemo")
    expect(uploaded.get_by_label("State: disabled")).to_be_visible()
    assert server.plugin("uploaddemo")["versions"][0]["source"] == "upload"


def test_lifecycle_actions_show_their_result_next_to_the_plugin(page: Any, server: Server, zips: Any) -> None:
    server.install(zips("lifecycle", "1.0.0"), enable=False)
    page.get_by_role("link", name="Plugins").click()
    plugin = page.get_by_role("article").filter(has_text="lifecycle ·")
    expect(plugin.get_by_role("button", name=re.compile("^Disable"))).to_have_count(0)  # only what can work

    plugin.get_by_role("button", name="Enable Echo (lifecycle)").click()
    expect(plugin.get_by_role("status")).to_contain_text("Enabled lifecycle")
    expect(plugin.get_by_label("State: running")).to_be_visible()
    pid = server.plugin("lifecycle")["pid"]

    plugin.get_by_role("button", name="Restart Echo (lifecycle)").click()
    expect(plugin.get_by_role("status")).to_contain_text("Restarted lifecycle: running")
    assert server.plugin("lifecycle")["pid"] != pid

    plugin.get_by_role("button", name="Disable Echo (lifecycle)").click()
    expect(plugin.get_by_role("status")).to_contain_text("Disabled lifecycle")
    expect(plugin.get_by_label("State: disabled")).to_be_visible()
    expect(plugin.get_by_role("button", name="Restart Echo (lifecycle)")).to_be_hidden()
    assert server.plugin("lifecycle")["state"] == "disabled"


def test_hot_swap_keeps_the_picked_version_across_live_updates(page: Any, server: Server, zips: Any) -> None:
    server.install(zips("swap", "1.0.0"))
    server.install(zips("swap", "1.1.0"), enable=False)
    page.get_by_role("link", name="Plugins").click()
    plugin = page.get_by_role("article").filter(has_text="swap ·")
    picker = plugin.get_by_label("Version of Echo (swap) to activate")
    expect(picker).to_have_value("1.0.0")
    picker.select_option("1.1.0")
    # two live refreshes of the plugin list later (plugin changes arrive through GET /api/events), the choice stays
    for _ in range(2):
        with page.expect_response(lambda r: r.url.endswith("/api/plugins") and r.request.method == "GET"):
            server.api.post("/api/plugins/echo/restart")
    expect(picker).to_have_value("1.1.0")
    plugin.get_by_role("button", name="Activate the chosen version of Echo (swap)").click()
    expect(plugin.get_by_role("status")).to_contain_text("Activated swap 1.1.0: running")
    assert server.plugin("swap")["runningVersion"] == "1.1.0"

    # versions with their sha256, source and install time; the old one can go
    plugin.get_by_text("Versions (2)").click()
    rows = plugin.get_by_role("row")
    expect(rows.filter(has_text="1.1.0 (active)")).to_contain_text("upload")
    sha = server.plugin("swap")["versions"][0]["sha256"]
    expect(rows.filter(has_text="1.0.0")).to_contain_text(sha[:16])
    expect(plugin.get_by_role("button", name="Uninstall version 1.1.0 of Echo (swap)")).to_be_hidden()
    plugin.get_by_role("button", name="Uninstall version 1.0.0 of Echo (swap)").click()
    dialog = page.get_by_role("dialog", name="Uninstall swap 1.0.0?")
    dialog.get_by_role("button", name="Uninstall 1.0.0").click()
    expect(plugin.get_by_text("Versions (1)")).to_be_visible()
    assert [v["version"] for v in server.plugin("swap")["versions"]] == ["1.1.0"]


def test_config_form_from_the_schema_with_server_errors_at_their_fields(page: Any, server: Server) -> None:
    page.get_by_role("link", name="Plugins").click()
    plugin = card(page, "QR demo")
    plugin.get_by_role("button", name="Configure QR demo (qrdemo)").click()
    dialog = page.get_by_role("dialog", name="Configure QR demo (qrdemo)")
    expect(dialog).to_be_visible()
    # one field per schema type, each labelled, descriptions as help text
    expect(dialog.get_by_label("Greeting")).to_have_attribute("type", "text")
    expect(dialog.get_by_label("Greeting")).to_have_accessible_description(
        re.compile("logged when an account connects")
    )
    expect(dialog.get_by_label("Max sessions")).to_have_attribute("type", "number")
    expect(dialog.get_by_label("Max sessions")).to_have_accessible_description(re.compile("From 1 to 10"))
    expect(dialog.get_by_label("Verbose")).to_have_attribute("type", "checkbox")
    expect(dialog.get_by_label("Region")).to_have_js_property("tagName", "SELECT")
    expect(dialog.get_by_label("Allowed peers")).to_have_js_property("tagName", "TEXTAREA")
    expect(dialog.get_by_label("API key")).to_have_attribute("type", "password")
    # no writeOnly in the manifest: secret by the host's rule of names, which the server marks in the schema
    expect(dialog.get_by_label("Webhook signing key")).to_have_attribute("type", "password")
    expect(dialog.get_by_role("group", name="Advanced").get_by_label("Poll interval (s)")).to_have_attribute(
        "type", "number"
    )

    # a field that only one choice needs shows with it (an if/then of the schema)
    expect(dialog.get_by_label("Hosting")).to_have_value("")  # left alone: the plugin's default
    expect(dialog.get_by_role("option", name="— default (cloud) —")).to_be_attached()
    expect(dialog.get_by_label("Self-hosted URL")).to_be_hidden()
    dialog.get_by_label("Hosting").select_option("selfhosted")
    expect(dialog.get_by_label("Self-hosted URL")).to_be_visible()

    dialog.get_by_label("Greeting").fill("hello from the browser")
    dialog.get_by_label("Max sessions").fill("99")
    dialog.get_by_label("Verbose").check()
    dialog.get_by_label("Region").select_option("us")
    dialog.get_by_label("Allowed peers").fill("alice\nbob")
    dialog.get_by_label("API key").fill("k3y-Secret-value-for-qrdemo-42")
    dialog.get_by_role("button", name="Save and restart").click()
    # the server's 422 lands at its field, which gets the focus
    max_sessions = dialog.get_by_label("Max sessions")
    expect(max_sessions).to_have_attribute("aria-invalid", "true")
    expect(max_sessions).to_have_accessible_description(re.compile("99 is greater than the maximum of 10"))
    expect(max_sessions).to_be_focused()
    url = dialog.get_by_label("Self-hosted URL")  # required by the if/then: the server says so at the field
    expect(url).to_have_attribute("aria-invalid", "true")
    expect(url).to_have_accessible_description(re.compile("'selfHostedUrl' is a required property"))
    assert server.plugin("qrdemo")["config"].get("greeting") != "hello from the browser"

    pid = server.plugin("qrdemo")["pid"]
    max_sessions.fill("5")
    url.fill("https://demo.example.org")
    dialog.get_by_role("button", name="Save and restart").click()
    expect(dialog).to_be_hidden()
    expect(plugin.get_by_role("status")).to_contain_text("Configuration saved: qrdemo restarts with it")
    saved = server.plugin("qrdemo")
    assert saved["config"] == {
        "greeting": "hello from the browser",
        "maxSessions": 5,
        "verbose": True,
        "region": "us",
        "hosting": "selfhosted",
        "selfHostedUrl": "https://demo.example.org",
        "allowedPeers": ["alice", "bob"],
        "apiKey": "[REDACTED]",
    }
    wait_for(lambda: server.plugin("qrdemo")["pid"] not in (None, pid), 30, "qrdemo restarted with its config")

    # opened again: values back in their fields, the secret never shown; empty keeps it
    plugin.get_by_role("button", name="Configure QR demo (qrdemo)").click()
    expect(dialog.get_by_label("Max sessions")).to_have_value("5")
    expect(dialog.get_by_label("API key")).to_have_value("")
    expect(dialog.get_by_label("API key")).to_have_accessible_description(re.compile("leave empty to keep it"))
    assert "k3y-Secret" not in page.content()
    dialog.get_by_label("Greeting").fill("second")
    dialog.get_by_role("button", name="Save and restart").click()
    expect(dialog).to_be_hidden()
    config = server.plugin("qrdemo")["config"]
    assert config["greeting"] == "second" and config["apiKey"] == "[REDACTED]"  # still stored
    logs = server.api.get("/api/plugins/qrdemo/logs").json()
    assert not any("k3y-Secret" in line for line in logs)


def test_uninstall_in_use_explains_and_forces_with_a_confirmation(page: Any, server: Server, zips: Any) -> None:
    server.install(zips("inuse", "1.0.0"))
    started = server.api.post("/api/connector-sessions", json={"kind": "inuse_kind", "displayName": "In use"})
    assert started.status_code == 201, started.text
    page.get_by_role("link", name="Plugins").click()
    plugin = page.get_by_role("article").filter(has_text="inuse ·")
    plugin.get_by_role("button", name="Uninstall Echo (inuse)").click()
    page.get_by_role("dialog", name="Uninstall inuse?").get_by_role("button", name="Uninstall").click()
    expect(plugin.get_by_text("inuse is in use: 1 account connects through it")).to_be_visible()
    assert server.api.get("/api/plugins/inuse").status_code == 200

    plugin.get_by_role("button", name="Force uninstall inuse").click()
    dialog = page.get_by_role("dialog", name="Force the uninstall of inuse?")
    expect(dialog).to_contain_text("stop working")
    dialog.get_by_role("button", name="Force uninstall").click()
    expect(plugin).to_have_count(0)
    expect(page.get_by_role("status").filter(has_text="Uninstalled inuse")).to_be_visible()
    assert server.api.get("/api/plugins/inuse").status_code == 404


def fact(card_: Any, name: str) -> Any:
    """The value of the fact `name` of a card's facts list."""
    return card_.locator("dt", has_text=name).locator("xpath=following-sibling::dd[1]")


def test_each_plugin_says_how_it_is_isolated(page: Any, server: Server) -> None:
    sandbox = server.plugin("qrdemo")["sandbox"]
    page.get_by_role("link", name="Plugins").click()
    plugin = card(page, "QR demo")
    if sandbox["isolated"]:  # bubblewrap works on this machine (scripts/install installs it)
        expect(fact(plugin, "Isolation")).to_contain_text(sandbox["mechanism"])
        expect(page.get_by_text("Plugins run without isolation")).to_have_count(0)
    else:
        expect(fact(plugin, "Isolation")).to_have_text(re.compile("^none: the plugin runs as the host's user"))


def test_a_host_without_a_sandbox_says_so_on_every_tab(browser: Any, tmp_path: Path, page_errors: Any) -> None:
    home = tmp_path / "home"
    env = {"CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN_TOKEN, "CHANNEL_RUNTIME_SANDBOX": "off"}
    proc = ServeProcess(home, cwd=tmp_path, env=env)
    try:
        proc.wait_ready()
        unsandboxed = Server(proc, home)
        wait_for(lambda: unsandboxed.plugin("echo")["state"] == "running", 30, "the bundled echo plugin running")
        page = open_admin(browser, unsandboxed, page_errors)
        attention = page.get_by_role("region", name="Needs attention")
        expect(attention).to_contain_text(
            "Plugins run without isolation: the plugin sandbox is turned off (CHANNEL_RUNTIME_SANDBOX=off)"
        )
        page.get_by_role("link", name="Plugins").click()
        expect(attention).to_be_visible()
        expect(fact(card(page, "Echo"), "Isolation")).to_have_text(
            re.compile("^none: the plugin runs as the host's user")
        )
        page.context.close()
        unsandboxed.api.close()
    finally:
        code, _, err = proc.stop()
        assert code == 0, err[-3000:]
