"""`webhook.handle` for one linked app: URL challenge, signature, decryption, token, window, mapping.

Fail closed: every request that cannot be proven to come from the platform
for this app is refused with a 4xx and produces no event; the caller logs the
reason. Nothing here waits on the network, so the answer comes well within
the platform's 3 s.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any

import msgspec

from plugin_host.sdk import BridgeEvent, WebhookParams, WebhookResponse

from .config import Account
from .crypto import DecryptError, EventCipher, signature, signature_matches
from .events import Mapped, Notice, Route, UnknownSchema, envelope, map_event

_JSON = {"content-type": "application/json; charset=utf-8"}
_OK = '{"msg":"success"}'


class Refusal(Exception):
    """A request refused for `reason` with HTTP `status`."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class WebhookOutcome(msgspec.Struct):
    response: WebhookResponse
    events: list[BridgeEvent] = msgspec.field(default_factory=list)
    refusal: str | None = None
    notice: Notice | None = None
    ignored: str | None = None
    challenge: bool = False


class WebhookVerifier:
    """Checks and decodes the webhook requests of one app."""

    def __init__(self, account: Account, *, window_seconds: float) -> None:
        self.encrypt_key = account.encrypt_key or None
        self.verification_token = account.verification_token or None
        self.window_seconds = window_seconds
        self._cipher = EventCipher(self.encrypt_key) if self.encrypt_key else None

    def handle(self, params: WebhookParams, route: Route, now: float) -> WebhookOutcome:
        try:
            return self._handle(params, route, now)
        except Refusal as refusal:
            body = msgspec.json.encode({"error": refusal.reason}).decode()
            return WebhookOutcome(WebhookResponse(refusal.status, dict(_JSON), body), refusal=refusal.reason)

    def _handle(self, params: WebhookParams, route: Route, now: float) -> WebhookOutcome:
        if params.method.upper() != "POST":
            raise Refusal(405, f"method {params.method[:10]} is not accepted (POST only)")
        if self.encrypt_key is None and self.verification_token is None:
            raise Refusal(403, "this connection has neither an encrypt key nor a verification token: nothing to verify")
        headers = {name.lower(): value for name, value in params.headers.items()}
        try:
            raw = base64.b64decode(params.body, validate=True)
        except (binascii.Error, ValueError):
            raise Refusal(400, "the forwarded body is not base64") from None
        outer = _json(raw)
        if not isinstance(outer, dict):
            raise Refusal(400, "the body is not a JSON object")
        signed = self._check_signature(headers, raw, now)
        payload = self._decrypt(outer)
        if payload.get("type") == "url_verification":
            return self._challenge(payload)
        if self.encrypt_key is not None and not signed:
            raise Refusal(401, "missing X-Lark-Signature headers on an event")
        try:
            env = envelope(payload)
        except UnknownSchema as exc:
            raise Refusal(400, str(exc)) from None
        self._check_token(env.token)
        mapped: Mapped = map_event(env, route)
        response = WebhookResponse(200, dict(_JSON), _OK)
        return WebhookOutcome(response, events=mapped.events, notice=mapped.notice, ignored=mapped.ignored)

    def _check_signature(self, headers: dict[str, str], raw: bytes, now: float) -> bool:
        """True when the request carries a valid signature within the window; False when it has none."""
        timestamp = headers.get("x-lark-request-timestamp")
        nonce = headers.get("x-lark-request-nonce")
        given = headers.get("x-lark-signature")
        if self.encrypt_key is None or (timestamp is None and nonce is None and given is None):
            return False
        if not timestamp or nonce is None or not given:
            raise Refusal(401, "incomplete X-Lark-Signature headers")
        if not signature_matches(signature(timestamp, nonce, self.encrypt_key, raw), given):
            raise Refusal(401, "bad X-Lark-Signature")
        try:
            sent_at = float(timestamp)
        except ValueError:
            raise Refusal(401, "X-Lark-Request-Timestamp is not a number") from None
        if abs(now - sent_at) > self.window_seconds:
            raise Refusal(
                401,
                f"stale request: timestamp {timestamp[:20]} is {now - sent_at:.0f} s from now (window {self.window_seconds:g} s)",
            )
        return True

    def _decrypt(self, outer: dict[str, Any]) -> dict[str, Any]:
        encrypted = outer.get("encrypt")
        if encrypted is None:
            if self._cipher is not None:
                raise Refusal(400, "a plain body, but this connection has an encrypt key: the platform encrypts")
            return outer
        if self._cipher is None:
            raise Refusal(400, "an encrypted body, but this connection has no encrypt key")
        if not isinstance(encrypted, str):
            raise Refusal(400, "the encrypt field is not a string")
        try:
            plain = self._cipher.decrypt(encrypted)
        except DecryptError as exc:
            raise Refusal(400, f"cannot decrypt: {exc}") from None
        payload = _json(plain)
        if not isinstance(payload, dict):
            raise Refusal(400, "the decrypted body is not a JSON object")
        return payload

    def _challenge(self, payload: dict[str, Any]) -> WebhookOutcome:
        challenge = payload.get("challenge")
        if not isinstance(challenge, str) or not challenge or len(challenge) > 1024:
            raise Refusal(400, "url_verification without a challenge")
        if self.verification_token is not None:
            self._check_token(payload.get("token"))
        elif self._cipher is None:
            raise Refusal(403, "url_verification cannot be checked without a verification token")
        # an encrypted challenge that decrypted under our key is proof enough without a token
        body = msgspec.json.encode({"challenge": challenge}).decode()
        return WebhookOutcome(WebhookResponse(200, dict(_JSON), body), challenge=True)

    def _check_token(self, token: Any) -> None:
        expected = self.verification_token
        if expected is None:
            return
        if not isinstance(token, str) or not hmac.compare_digest(expected.encode(), token.encode()):
            raise Refusal(401, "wrong verification token")


def _json(raw: bytes) -> Any:
    """The decoded body, or None when it is not JSON or nested deeper than the decoder goes (a 400)."""
    try:
        return msgspec.json.decode(raw)
    except (ValueError, RecursionError):  # msgspec.DecodeError is a ValueError
        return None
