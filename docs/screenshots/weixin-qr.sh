#!/usr/bin/env bash
# Takes docs/screenshots/weixin-qr.png: a real `channel-runtime serve` on a fresh home,
# its bundled Weixin plugin pointed at the fake iLink server of the tests, and the
# admin page driven by Playwright up to the QR step.
# Needs /usr/bin/chromium and `npm i playwright-core` in /tmp.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
work=$(mktemp -d)
port() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
fake_port=$(port)
serve_port=$(port)
token="screenshot-admin-token-0123456789"
.venv/bin/python -m tests.weixin_vendorcli.fake_ilink --port "$fake_port" --hold 1 &
fake=$!
CHANNEL_RUNTIME_ADMIN_TOKEN="$token" .venv/bin/channel-runtime serve --home "$work/home" --port "$serve_port" \
  >"$work/serve.log" 2>&1 &
serve=$!
trap 'kill $serve $fake 2>/dev/null; wait $serve $fake 2>/dev/null; rm -rf "$work"' EXIT
base="http://127.0.0.1:$serve_port"
for _ in $(seq 100); do curl -fs "$base/readyz" >/dev/null && break; sleep 0.2; done
curl -fs -X PUT -H "Authorization: Bearer $token" -H "Content-Type: application/json" \
  -d "{\"baseUrl\": \"http://127.0.0.1:$fake_port\"}" "$base/api/plugins/weixin_vendorcli/config" >/dev/null
for _ in $(seq 100); do
  curl -fs -H "Authorization: Bearer $token" "$base/api/plugins/weixin_vendorcli" | grep -q '"state": *"running"' && break
  sleep 0.2
done
NODE_PATH=/tmp/node_modules node docs/screenshots/weixin-qr.cjs "$base" "$token" docs/screenshots/weixin-qr.png
echo "wrote docs/screenshots/weixin-qr.png"
