"""Feishu webhooks: signed + encrypted events through `/webhooks/{connectionId}`, next to the bridge endpoint.

    .venv/bin/python bench/feishu.py [--quick] [--json] [--events N] [--connections 16]

Processes: the fake Open Platform (`tests/feishu_vendorcli/fake_platform.py`, its own
uvicorn), the service (`python -m bench._serve ours`, the app `channel-runtime serve`
builds, SQLite store, echo handler) with the bundled `feishu_vendorcli` plugin
installed, configured for the fake and linked to one app as a webhook connection
with an Encrypt Key and a Verification Token (through a real connector session);
and this script, the load generator (httpx, keep-alive connections).

Per repeat and path, N events with unique event and message ids are POSTed as fast
as the connections allow:
- webhook: the platform's request, AES-256-CBC encrypted and `X-Lark-Signature`
  signed (bodies prepared before the clock starts), to `/webhooks/{connectionId}`:
  the host forwards it to the plugin's `webhook.handle` (signature, window,
  decryption, token, mapping), commits the event, answers;
- bridge: the same messages as `BridgeEvent`s to `/api/channel-connector-bridge/events`
  for the same connection (the reference: no plugin hop, no crypto).
Both then run the same pipeline: inbox -> echo handler -> outbox -> the plugin's
`message.send` -> the fake's IM reply API. Figures: answered requests/s (ingest),
and events/s end to end (first POST until the fake holds N replies). Medians over
repeats; the two paths alternate within each repeat.

Target: webhook end-to-end events/s >= 50% of the bridge's.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "feishu_vendorcli"))

from feishu_vendorcli.crypto import EventCipher, signature  # noqa: E402

from bench._common import REPO, Child, Report, free_port, median, parser, progress  # noqa: E402

ADMIN_TOKEN = "bench-admin-token-feishu-0123456789"
BRIDGE_TOKEN = "bench-bridge-token-feishu-0123456789"
APP_ID = "cli_bench0001"
APP_SECRET = "bench-app-secret-" + "x" * 16
ENCRYPT_KEY = "bench-encrypt-key-01"
VERIFICATION_TOKEN = "bench-verification-token"
PLUGIN_ID = "feishu_vendorcli"


async def install_plugin(home: Path, fake_url: str) -> None:
    """The bundled plugin installed, configured for the fake and enabled, before the service starts."""
    from plugin_host.host import PluginHost
    from plugin_host.package import pack_directory

    host = PluginHost(home)
    async with host:
        archive = pack_directory(REPO / "plugins" / PLUGIN_ID, home.parent / "feishu.zip")
        await host.install(archive)
        config = {"feishuBaseUrl": fake_url, "larkBaseUrl": fake_url, "accountsBaseUrl": fake_url}
        await host.set_config(PLUGIN_ID, config)
        await host.enable(PLUGIN_ID)


async def link(client: httpx.AsyncClient) -> str:
    options = {
        "mode": "link",
        "appId": APP_ID,
        "appSecret": APP_SECRET,
        "domain": "feishu",
        "connection": "webhook",
        "encryptKey": ENCRYPT_KEY,
        "verificationToken": VERIFICATION_TOKEN,
    }
    r = await client.post("/api/connector-sessions", json={"kind": "feishu", "options": options})
    r.raise_for_status()
    session_id = r.json()["session"]["sessionId"]
    connection_id = r.json()["connection"]["connectionId"]
    with anyio.fail_after(30):
        while True:
            view = (await client.get(f"/api/connector-sessions/{session_id}")).json()
            if view["session"]["status"] == "connected":
                break
            if view["session"]["status"] == "error":
                raise RuntimeError(view["session"]["error"])
            await anyio.sleep(0.05)
    await anyio.sleep(0.5)  # the host hands the connection to the plugin (connection.resume)
    return connection_id


def message_payload(n: str, peer: int) -> dict[str, Any]:
    return {
        "schema": "2.0",
        "header": {
            "event_id": f"ev_{n}",
            "token": VERIFICATION_TOKEN,
            "create_time": str(int(time.time() * 1000)),
            "event_type": "im.message.receive_v1",
            "tenant_key": "tk",
            "app_id": APP_ID,
        },
        "event": {
            "sender": {"sender_id": {"open_id": f"ou_peer{peer}"}, "sender_type": "user", "tenant_key": "tk"},
            "message": {
                "message_id": f"om_{n}",
                "create_time": str(int(time.time() * 1000)),
                "chat_id": f"oc_chat{peer}",
                "chat_type": "p2p",
                "message_type": "text",
                "content": json.dumps({"text": f"hello {n}"}),
                "mentions": [],
            },
        },
    }


def webhook_requests(prefix: str, count: int, peers: int) -> list[tuple[bytes, dict[str, str]]]:
    cipher = EventCipher(ENCRYPT_KEY)
    out = []
    for i in range(count):
        body = json.dumps(
            {"encrypt": cipher.encrypt(json.dumps(message_payload(f"{prefix}{i}", i % peers)).encode())}
        ).encode()
        ts, nonce = str(int(time.time())), secrets.token_hex(8)
        headers = {
            "Content-Type": "application/json",
            "X-Lark-Request-Timestamp": ts,
            "X-Lark-Request-Nonce": nonce,
            "X-Lark-Signature": signature(ts, nonce, ENCRYPT_KEY, body),
        }
        out.append((body, headers))
    return out


def bridge_requests(prefix: str, count: int, peers: int, connection_id: str) -> list[tuple[bytes, dict[str, str]]]:
    out = []
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {BRIDGE_TOKEN}"}
    for i in range(count):
        n = f"{prefix}{i}"
        event = {
            "eventId": f"ev_{n}",
            "timestamp": stamp,
            "deliveryAttempt": 1,
            "connectionId": connection_id,
            "channelId": "",
            "kind": "feishu",
            "accountId": APP_ID,
            "peerId": f"ou_peer{i % peers}",
            "peerType": "dm",
            "userId": f"ou_peer{i % peers}",
            "threadId": None,
            "messageId": f"om_{n}",
            "messageType": "text",
            "content": f"hello {n}",
            "metadata": {},
        }
        out.append((json.dumps(event).encode(), headers))
    return out


async def fake_messages(fake_url: str) -> int:
    async with httpx.AsyncClient() as c:
        return int((await c.get(f"{fake_url}/_stats")).json()["messages"])


async def run_path(
    base: str, path: str, requests: list[tuple[bytes, dict[str, str]]], connections: int, fake_url: str
) -> dict[str, Any]:
    before = await fake_messages(fake_url)
    statuses: dict[int, int] = {}
    queue = list(reversed(requests))
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def worker() -> None:
            while queue:
                body, headers = queue.pop()
                r = await client.post(path, content=body, headers=headers)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(connections):
                tg.start_soon(worker)
        answered = time.perf_counter() - start
        target = before + len(requests)
        with anyio.fail_after(300):
            while await fake_messages(fake_url) < target:
                await anyio.sleep(0.02)
        done = time.perf_counter() - start
    return {
        "ingest_rps": len(requests) / answered,
        "e2e_eps": len(requests) / done,
        "non200": sum(v for k, v in statuses.items() if k != 200),
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--events", type=int)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--peers", type=int, default=64)
    args = p.parse_args()
    repeats = 2 if args.quick else 5
    count = args.events or (300 if args.quick else 1500)
    report = Report("bench/feishu.py: signed+encrypted Feishu webhooks vs the bridge endpoint", args.quick)

    with tempfile.TemporaryDirectory(prefix="bench-feishu-", dir=os.environ.get("BENCH_TMP")) as tmp_text:
        home = Path(tmp_text) / "home"
        fake_port, port = free_port(), free_port()
        fake_url = f"http://127.0.0.1:{fake_port}"
        base = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHANNEL_RUNTIME_")}
        env.update(
            CHANNEL_RUNTIME_ADMIN_TOKEN=ADMIN_TOKEN,
            CHANNEL_RUNTIME_BRIDGE_TOKEN=BRIDGE_TOKEN,
            PYTHONPATH=str(REPO),
        )
        anyio.run(install_plugin, home, fake_url)
        fake = Child(
            "fake platform",
            [sys.executable, "-m", "tests.feishu_vendorcli.fake_platform", str(fake_port), APP_ID, APP_SECRET],
            env,
        )
        server = Child(
            "service",
            [
                sys.executable,
                "-m",
                "bench._serve",
                "ours",
                "--port",
                str(port),
                "--home",
                str(home),
                "--handler",
                "echo",
            ],
            env,
        )
        try:
            fake.wait_http(f"{fake_url}/_stats")
            server.wait_http(f"{base}/readyz")

            async def measure() -> dict[str, list[dict[str, Any]]]:
                headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
                async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as admin:
                    connection_id = await link(admin)
                results: dict[str, list[dict[str, Any]]] = {"webhook": [], "bridge": []}
                # warm-up, not counted
                await run_path(
                    base,
                    f"/webhooks/{connection_id}",
                    webhook_requests("warm", 100, args.peers),
                    args.connections,
                    fake_url,
                )
                for r in range(repeats):
                    progress(f"repeat {r + 1}/{repeats}")
                    for name in ("webhook", "bridge") if r % 2 == 0 else ("bridge", "webhook"):
                        prefix = f"{name}{r}_"
                        if name == "webhook":
                            requests = webhook_requests(prefix, count, args.peers)
                            path = f"/webhooks/{connection_id}"
                        else:
                            requests = bridge_requests(prefix, count, args.peers, connection_id)
                            path = "/api/channel-connector-bridge/events"
                        results[name].append(await run_path(base, path, requests, args.connections, fake_url))
                return results

            results = anyio.run(measure)
        except BaseException:
            progress(server.output())
            raise
        finally:
            server.stop()
            fake.stop()

    rows = []
    medians: dict[str, dict[str, float]] = {}
    for name in ("bridge", "webhook"):
        runs = results[name]
        medians[name] = {k: median([run[k] for run in runs]) for k in ("ingest_rps", "e2e_eps")}
        rows.append([name, medians[name]["ingest_rps"], medians[name]["e2e_eps"], sum(run["non200"] for run in runs)])
    ratio_ingest = medians["webhook"]["ingest_rps"] / medians["bridge"]["ingest_rps"]
    ratio_e2e = medians["webhook"]["e2e_eps"] / medians["bridge"]["e2e_eps"]
    report.table(
        f"{count} events per run, {args.connections} connections, {args.peers} peers, median of {repeats}",
        ["path", "ingest req/s", "end-to-end events/s", "non-200"],
        rows,
    )
    report.table("webhook / bridge", ["figure", "ratio"], [["ingest", ratio_ingest], ["end to end", ratio_e2e]])
    report.check("webhook end-to-end events/s vs the bridge's", ratio_e2e * 100, ">= 50", "%")
    report.data.update(results=results, medians=medians)
    report.emit(args.json)


if __name__ == "__main__":
    main()
