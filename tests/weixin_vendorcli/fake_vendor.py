"""A fake vendor command for `vendor_cli` mode: it speaks the plugin's JSON contract, and iLink to the fake platform.

    fake_vendor.py OP [--fail]     (OP from the `{op}` placeholder; the request on stdin says it too)

Reads one JSON request on stdin, makes the matching iLink call against the
request's `base_url` (QR calls) or `account.baseurl` (bot calls), writes the
platform's answer to `answer_file`, chats on stdout and stderr (the token
included, which the runner must redact), and exits 0. With `--fail` it fails
with exit code 3 instead.
"""

from __future__ import annotations

import json
import sys
import urllib.parse
import urllib.request
from typing import Any


def call(method: str, url: str, body: Any = None, token: str | None = None) -> bytes:
    headers = {"Content-Type": "application/json", "iLink-App-Id": "bot", "iLink-App-ClientVersion": "1"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
        headers["AuthorizationType"] = "ilink_bot_token"
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(
        urllib.request.Request(url, data=data, headers=headers, method=method), timeout=30
    ) as r:
        return r.read()  # type: ignore[no-any-return]


def main() -> int:
    request = json.loads(sys.stdin.read())
    op = request["op"]
    if len(sys.argv) > 1 and sys.argv[1] != op:
        print(f"argv says {sys.argv[1]} but the request says {op}", file=sys.stderr)
        return 2
    account = request.get("account") or {}
    token = account.get("bot_token")
    print(f"fake vendor: {op} for token {token}", file=sys.stderr)
    print(f"fake vendor stdout chatter, Bearer {token}")
    if "--fail" in sys.argv[2:]:
        print("fake vendor: failing on purpose", file=sys.stderr)
        return 3
    base = account.get("baseurl") or request.get("base_url", "")
    base_info = {"channel_version": "fake-vendor"}
    if op == "get_bot_qrcode":
        answer = call(
            "POST", f"{base}/ilink/bot/get_bot_qrcode?bot_type=3", {"local_token_list": request["local_token_list"]}
        )
    elif op == "get_qrcode_status":
        query = {"qrcode": request["qrcode"]}
        if request.get("verify_code"):
            query["verify_code"] = request["verify_code"]
        answer = call("GET", f"{base}/ilink/bot/get_qrcode_status?{urllib.parse.urlencode(query)}")
    elif op == "getupdates":
        body = {"get_updates_buf": request["get_updates_buf"], "base_info": base_info}
        answer = call("POST", f"{base}/ilink/bot/getupdates", body, token)
    elif op == "sendmessage":
        answer = call("POST", f"{base}/ilink/bot/sendmessage", {"msg": request["msg"], "base_info": base_info}, token)
    elif op == "logout":
        answer = call("POST", f"{base}/ilink/bot/msg/notifystop", {"base_info": base_info}, token)
    else:
        print(f"unknown op {op}", file=sys.stderr)
        return 2
    with open(request["answer_file"], "wb") as f:
        f.write(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
