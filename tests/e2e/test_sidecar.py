"""Both sides ours (SPEC 11, 7.4): a real `serve` using a real `sidecar` through an `external_connector` channel.

serve onboards a `sidecho` account through the sidecar (serve has no plugin for that kind);
the sidecar's plugin hears a platform webhook → the sidecar's forward queue → serve's bridge
→ serve's handler → its reply through the `external_connector` channel → the sidecar's
`/send` → the plugin. Then durability: the application down, the sidecar SIGKILLed with
events queued and while forwarding; every event handled exactly once in the end.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from plugin_host.package import pack_directory
from tests.support import REPO, ServeProcess, free_port, wait_for

ADMIN = "e2e-sidecar-admin-token-0123456789"
CONNECTOR = "e2e-sidecar-connector-token-0123456789"
BRIDGE = "e2e-sidecar-bridge-token-0123456789"
SIDECHO = REPO / "tests" / "plugins" / "sidecho"


class Pair:
    """A sidecar and a serve on fixed ports (each can be stopped and started again on its own)."""

    def __init__(self, tmp: Path, *, flaky: bool = False) -> None:
        self.tmp = tmp
        self.flaky = flaky
        self.sidecar_home = tmp / "sidecar-home"
        self.serve_home = tmp / "serve-home"
        self.record = tmp / "handled.txt"
        self.sidecar_port, self.serve_port = free_port(), free_port()
        self.sidecar: ServeProcess | None = None
        self.serve: ServeProcess | None = None

    def start_sidecar(self) -> ServeProcess:
        self.sidecar = ServeProcess(
            self.sidecar_home,
            cwd=self.tmp,
            subcommand="sidecar",
            port=self.sidecar_port,
            env={
                "CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN,
                "CONNECTOR_API_TOKEN": CONNECTOR,
                "BEAVER_BRIDGE_BASE_URL": f"http://127.0.0.1:{self.serve_port}",
                "BEAVER_BRIDGE_TOKEN": BRIDGE,
                "CONNECTOR_COMMAND_TIMEOUT_SECONDS": "20",
                "CHANNEL_RUNTIME_FORWARD_RETRY_CAP_SECONDS": "0.5",
                "SIDECHO_FLAKY": "1" if self.flaky else "0",
            },
        )
        self.sidecar.wait_ready()
        return self.sidecar

    def start_serve(self) -> ServeProcess:
        self.serve = ServeProcess(
            self.serve_home,
            cwd=REPO,
            port=self.serve_port,
            args=["--handler", "tests.support.crash_handler:handle"],
            env={
                "CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN,
                "CHANNEL_RUNTIME_BRIDGE_TOKEN": BRIDGE,
                "CHANNEL_RUNTIME_SIDECAR_URL": f"http://127.0.0.1:{self.sidecar_port}",
                "CHANNEL_RUNTIME_SIDECAR_TOKEN": CONNECTOR,
                "CRASH_RECORD": str(self.record),
                "CRASH_BLOCK": "0",
                "PYTHONPATH": str(REPO),
            },
        )
        self.serve.wait_ready()
        return self.serve

    def sidecar_admin(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.sidecar_port}", timeout=20, headers=_bearer(ADMIN))

    def connector(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.sidecar_port}", timeout=20, headers=_bearer(CONNECTOR))

    def serve_admin(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.serve_port}", timeout=20, headers=_bearer(ADMIN))

    def install_sidecho(self) -> None:
        """Installed into the sidecar the way an admin does it: upload, enable."""
        archive = pack_directory(SIDECHO, self.tmp / "sidecho.zip").read_bytes()
        with self.sidecar_admin() as admin:
            answer = admin.post("/api/plugins", content=archive, headers={"Content-Type": "application/zip"})
            assert answer.status_code == 201, answer.text
            assert admin.post("/api/plugins/sidecho/enable").status_code == 200
            wait_for(lambda: admin.get("/api/plugins/sidecho").json()["state"] == "running", what="sidecho running")

    def onboard(self) -> str:
        """serve starts the session; the sidecar's plugin connects the account; serve's channel runs."""
        with self.serve_admin() as serve:
            started = serve.post("/api/connector-sessions", json={"kind": "sidecho", "displayName": "Remote"})
            assert started.status_code == 201, started.text
            body = started.json()
            assert body["session"]["status"] == "connected", body
            connection_id = body["connection"]["connectionId"]
            assert body["connection"]["status"] == "connected"
            wait_for(
                lambda: any(c["channelId"] == connection_id and c["state"] == "running" for c in _channels(serve)),
                what="serve's external_connector channel running",
            )
        with self.connector() as connector:  # the same session, seen from the sidecar's side
            view = connector.get(f"/connector-sessions/{body['session']['sessionId']}")
            assert view.status_code == 200 and view.json()["status"] == "connected"
        return connection_id

    def webhook(self, connection_id: str, body: dict[str, Any]) -> None:
        answer = httpx.post(f"http://127.0.0.1:{self.sidecar_port}/webhooks/{connection_id}", json=body, timeout=20)
        assert answer.status_code in (200, 202), answer.text

    def handled(self) -> list[str]:
        lines = self.record.read_text().splitlines() if self.record.exists() else []
        return [line.split(" ", 1)[1] for line in lines if line.startswith("handled ")]

    def plugin_file(self, name: str) -> list[dict[str, Any]]:
        path = self.sidecar_home / "plugin-data" / "sidecho" / name
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def health(self) -> dict[str, Any]:
        with self.connector() as connector:
            return connector.get("/health").json()

    def stop_all(self) -> list[str]:
        """Stop what runs (SIGTERM) and return every output, for the secret check."""
        outputs = []
        for process in (self.serve, self.sidecar):
            if process is not None and process.proc.poll() is None:
                code, out, err = process.stop()
                assert code == 0, err
                outputs += [out, err]
        return outputs


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _channels(serve: httpx.Client) -> list[dict[str, Any]]:
    return serve.get("/api/channels").json()


@contextmanager
def pair(tmp: Path, **kw: Any) -> Iterator[Pair]:
    both = Pair(tmp, **kw)
    try:
        yield both
    finally:
        for process in (both.serve, both.sidecar):
            if process is not None and process.proc.poll() is None:
                process.stop(signal.SIGKILL)


def test_serve_uses_a_sidecar_inbound_to_the_handler_and_the_reply_back_to_the_plugin(tmp_path: Path) -> None:
    with pair(tmp_path, flaky=True) as both:
        both.start_sidecar()
        both.install_sidecho()
        both.start_serve()
        connection_id = both.onboard()

        both.webhook(connection_id, {"peerId": "u1", "text": "hi there", "messageId": "pm_1"})
        wait_for(lambda: both.handled() == ["pm_1"], what="serve's handler ran for the forwarded event")
        wait_for(lambda: both.plugin_file("sent.jsonl"), what="the reply reached the sidecar's plugin")
        [sent] = both.plugin_file("sent.jsonl")
        request = sent["request"]
        assert request["content"] == "done: hi there" and request["target"]["peerId"] == "u1"
        assert request["connectionId"] == connection_id and request["requestId"].startswith("out_")
        # the plugin failed the first try (SIDECHO_FLAKY): serve retried with the same requestId
        assert [a["requestId"] for a in both.plugin_file("attempts.jsonl")] == [request["requestId"]] * 2

        health = both.health()
        assert health["forwarder"]["delivered"] == 1 and health["forwarder"]["backlog"] == 0
        bundled = sorted(d.name for d in (REPO / "plugins").iterdir() if (d / "plugin.json").is_file())
        assert sorted(p["providerId"] for p in health["providers"]) == sorted([*bundled, "sidecho"])

        with both.serve_admin() as serve:  # logout through serve reaches the sidecar's plugin
            assert serve.post(f"/api/connections/{connection_id}/logout").json()["status"] == "revoked"
        with both.sidecar_admin() as admin:
            assert admin.get(f"/api/connections/{connection_id}").json()["status"] == "revoked"
        outputs = both.stop_all()
    for secret in (ADMIN, CONNECTOR, BRIDGE):
        assert not any(secret in text for text in outputs)


def test_events_survive_the_application_down_and_sidecar_sigkills(tmp_path: Path) -> None:
    with pair(tmp_path) as both:
        both.start_sidecar()
        both.install_sidecho()
        both.start_serve()
        connection_id = both.onboard()
        assert both.serve is not None
        code, _, err = both.serve.stop()  # the application goes down
        assert code == 0, err

        queued = [f"pm_c{conversation}_{n}" for n in range(4) for conversation in range(3)]
        for message_id in queued:
            conversation = message_id.split("_")[1]
            both.webhook(connection_id, {"peerId": f"u_{conversation}", "text": message_id, "messageId": message_id})
        wait_for(lambda: both.health()["forwarder"]["failing"], what="the forwarder noticing the application is down")
        forwarder = both.health()["forwarder"]
        assert forwarder["backlog"] == len(queued) and "unreachable" in forwarder["lastError"]

        assert both.sidecar is not None
        both.sidecar.stop(signal.SIGKILL)  # with every event still queued
        both.start_sidecar()
        assert both.health()["forwarder"]["backlog"] == len(queued)
        # the account is resumed from the stored credentials, without a new login
        resumed = [r for r in both.plugin_file("resumed.jsonl") if r["how"] == "initialize"]
        assert resumed and resumed[-1] == {"connectionId": connection_id, "how": "initialize", "hasCredentials": True}

        both.start_serve()  # the application is back
        wait_for(lambda: sorted(both.handled()) == sorted(queued), timeout=60, what="every queued event handled")
        for conversation in range(3):  # in order within each conversation
            mine = [m for m in both.handled() if m.startswith(f"pm_c{conversation}_")]
            assert mine == [f"pm_c{conversation}_{n}" for n in range(4)]

        # a burst, and the sidecar SIGKILLed while it forwards: at-least-once, and the handler runs once
        both.webhook(connection_id, {"burst": 60, "peers": 6, "prefix": "pb_"})
        wait_for(lambda: len(both.handled()) > len(queued), what="the burst arriving")
        both.sidecar.stop(signal.SIGKILL)
        both.start_sidecar()
        burst = [f"pb_{n}" for n in range(60)]
        wait_for(lambda: set(burst) <= set(both.handled()), timeout=60, what="every burst event handled")
        handled = both.handled()
        assert len(handled) == len(set(handled)) == len(queued) + len(burst)  # each exactly once

        # every event's reply went back through the sidecar to the plugin
        expected = {f"done: {m}" for m in queued} | {f"done: burst {n}" for n in range(60)}

        def missing() -> set[str]:
            return expected - {s["request"]["content"] for s in both.plugin_file("sent.jsonl")}

        try:
            # a send cut by the SIGKILL stays `processing` (SPEC 3.6) until it is stale at 60 s: then it goes again
            wait_for(lambda: not missing(), timeout=120, what="every reply delivered")
        except AssertionError:
            raise AssertionError(f"replies never delivered: {sorted(missing())[:10]} ({len(missing())})") from None
        wait_for(lambda: both.health()["forwarder"]["backlog"] == 0, what="the forward queue drained")
        both.stop_all()
