"""A plugin that leaks every secret it is handed and misbehaves on request (raw JSON-RPC, no SDK).

- initialize: logs its config (a secret config value) on stderr;
- session.start: logs the options (an appSecret), logs the credential it is about to issue
  (before the host can know it), answers a view quoting the appSecret, then reports
  `connected` with credentials; `options.mode == "hugeqr"` answers a qrCode no QR symbol holds;
- connection.resume: logs the credential on stderr and in a `log` notification, and quotes it
  in a `connection.status` error and a second `session.update`;
- webhook.handle: logs the body (which may carry the host's own token); `?hostile=` in the
  query asks for: `headers` (a non-Latin-1 response header), `deep` (a 3,000-deep JSON line on
  stdout first), `controls` (ESC and CR on stderr and in a `log`), `logflood` (5,000 `log`s).
"""

import json
import sys

# not token-shaped on purpose: only the host's knowledge of it can mask it
CREDENTIAL = "velvet-harbor-lantern-sesame"
EARLY = "amber-quarry-whistle-backup"  # logged before the host can know it is a credential
ACCOUNT = "ou_" + "0123456789abcdef" * 2  # an id: must stay readable everywhere
REQUEST_ID = "out_" + "fedcba9876543210" * 2
sessions = {}


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def result(request_id, value):
    send({"jsonrpc": "2.0", "id": request_id, "result": value})


def notify(method, params):
    send({"jsonrpc": "2.0", "method": method, "params": params})


def log(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def view(session_id, status, **extra):
    base = {
        "sessionId": session_id,
        "kind": "hostile",
        "status": status,
        "qrCode": None,
        "qrImage": None,
        "instructions": [],
        "accountId": None,
        "displayName": None,
        "error": None,
        "metadata": {},
    }
    base.update(extra)
    return base


def session_start(request_id, params):
    options = params.get("options") or {}
    session_id = params["sessionId"]
    credential = CREDENTIAL
    log(f"starting with options {json.dumps(options)}")
    log(f"about to issue {EARLY}")
    if options.get("mode") == "hugeqr":
        result(request_id, view(session_id, "qr_ready", qrCode="x" * 5000))
        return
    sessions[session_id] = params
    result(request_id, view(session_id, "pending", instructions=[f"using app secret {options.get('appSecret')}"]))
    notify(
        "session.update",
        {
            **view(
                session_id,
                "connected",
                accountId=ACCOUNT,
                displayName="Hostile account",
                instructions=[f"connected as {ACCOUNT}"],
                metadata={"requestId": REQUEST_ID},
            ),
            "connectionId": params["connectionId"],
            "credentials": {"token": credential, "backupToken": EARLY, "appId": "cli_hostile"},
        },
    )


def resume(request_id, params):
    token = params["credentials"].get("token", "")
    connection_id = params["connectionId"]
    log(f"resumed {connection_id} for {ACCOUNT} with token {token}")
    notify("log", {"level": "warning", "message": f"token in use: {token} ({REQUEST_ID})", "fields": {"note": token}})
    for session_id, start in sessions.items():
        if start["connectionId"] == connection_id:
            notify(
                "session.update",
                {
                    **view(session_id, "connected", accountId=ACCOUNT, instructions=[f"your token is {token}"]),
                    "connectionId": connection_id,
                    "credentials": None,
                },
            )
    notify("connection.status", {"connectionId": connection_id, "status": "disconnected", "error": f"held {token}"})
    result(request_id, {})


def webhook(request_id, params):
    import base64

    body = base64.b64decode(params.get("body") or "").decode("utf-8", "replace")
    query = params.get("query") or ""
    log(f"webhook body: {body}")
    headers = {"content-type": "text/plain"}
    if "hostile=headers" in query:
        headers["x-note"] = "naïve ✓ 中文"
    if "hostile=deep" in query:
        sys.stdout.write("[" * 3000 + "]" * 3000 + "\n")
        sys.stdout.flush()
    if "hostile=controls" in query:
        log("\x1b[2J\x1b[31mred\rforged line")
        notify("log", {"level": "warning", "message": "\x1b]0;owned\x07title\rcarriage", "fields": None})
    if "hostile=logflood" in query:
        for i in range(5000):
            notify("log", {"level": "warning", "message": f"flood line {i}", "fields": None})
    result(
        request_id, {"response": {"status": 200, "headers": headers, "body": "ok", "bodyEncoding": None}, "events": []}
    )


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        method, request_id, params = msg.get("method"), msg.get("id"), msg.get("params") or {}
        if method == "initialize":
            log(f"config: {json.dumps(params.get('config'))}")
            result(
                request_id,
                {
                    "protocolVersion": 1,
                    "plugin": {"name": "hostile", "version": "1.0.0"},
                    "connectors": [],
                    "capabilities": {"webhook": True, "sessions": True},
                },
            )
        elif method == "session.start":
            session_start(request_id, params)
        elif method == "connection.resume":
            resume(request_id, params)
        elif method == "webhook.handle":
            webhook(request_id, params)
        elif method == "health":
            result(request_id, {"status": "ok", "detail": None, "connections": None})
        elif method in ("shutdown", "session.cancel", "connection.logout"):
            result(request_id, {})
        elif request_id is not None and method is not None:
            send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": f"no {method}"}})


if __name__ == "__main__":
    main()
