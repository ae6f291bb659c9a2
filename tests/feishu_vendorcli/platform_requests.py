"""Webhook requests as the platform makes them: plain or encrypted, signed, for tests and the benchmark."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from feishu_vendorcli.crypto import EventCipher, signature


def platform_request(
    payload: dict[str, Any],
    *,
    encrypt_key: str | None,
    sign: bool = True,
    timestamp: float | None = None,
    nonce: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """(raw body, headers) the platform would send for `payload`."""
    if encrypt_key:
        body = json.dumps({"encrypt": EventCipher(encrypt_key).encrypt(json.dumps(payload).encode())}).encode()
    else:
        body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if encrypt_key and sign:
        ts = str(int(time.time() if timestamp is None else timestamp))
        nonce = nonce or secrets.token_hex(8)
        headers.update(
            {
                "X-Lark-Request-Timestamp": ts,
                "X-Lark-Request-Nonce": nonce,
                "X-Lark-Signature": signature(ts, nonce, encrypt_key, body),
            }
        )
    return body, headers
