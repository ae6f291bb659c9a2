"""Retake docs/screenshots/feishu-*.png: a real serve with the fake Open Platform, photographed headless.

    .venv/bin/python docs/screenshots/feishu-shots.py [OUT_DIR]

Needs Node.js with `playwright-core` (`npm i playwright-core` in /tmp) and the system
chromium at /usr/bin/chromium (no browser download). Not a test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
ADMIN = "shot-admin-token-0123456789abcdef"
APP_ID, APP_SECRET = "cli_a1b2c3d4e5", "shot-secret-000"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "docs" / "screenshots").resolve()
    root = Path(tempfile.mkdtemp(prefix="feishu-shot-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHANNEL_RUNTIME_")}
    env.update(
        PYTHONPATH=str(REPO), CHANNEL_RUNTIME_ADMIN_TOKEN=ADMIN, CHANNEL_RUNTIME_PUBLIC_URL="https://bots.example.com"
    )
    fake_port, port = 18931, 18932
    fake_url, base = f"http://127.0.0.1:{fake_port}", f"http://127.0.0.1:{port}"
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.feishu_vendorcli.fake_platform", str(fake_port), APP_ID, APP_SECRET],
        cwd=REPO,
        env=env,
    )
    serve = subprocess.Popen(
        [sys.executable, "-m", "channel_runtime_cli.main", "serve", "--home", str(root / "home"), "--port", str(port)],
        cwd=root,
        env=env,
    )
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=20)
        config = {
            "feishuBaseUrl": fake_url,
            "larkBaseUrl": fake_url,
            "accountsBaseUrl": fake_url,
            "larkAccountsBaseUrl": fake_url + "/lark",
        }
        api.put("/api/plugins/feishu_vendorcli/config", json=config).raise_for_status()
        for _ in range(100):
            if api.get("/api/plugins/feishu_vendorcli").json().get("state") == "running":
                break
            time.sleep(0.2)
        options = {
            "mode": "link",
            "appId": APP_ID,
            "appSecret": APP_SECRET,
            "connection": "webhook",
            "verificationToken": "shot-verify",
        }
        api.post(
            "/api/connector-sessions", json={"kind": "feishu", "displayName": "Support bot", "options": options}
        ).raise_for_status()
        time.sleep(1)
        # ES modules resolve packages next to the script: run a copy where playwright-core is installed
        script = Path("/tmp/feishu-shots.mjs")
        shutil.copy(Path(__file__).with_name("feishu-shots.mjs"), script)
        subprocess.run(["node", str(script), base, ADMIN, str(out)], cwd="/tmp", check=True)
    finally:
        serve.terminate()
        fake.terminate()
        serve.wait(30)
        fake.wait(30)


if __name__ == "__main__":
    main()
