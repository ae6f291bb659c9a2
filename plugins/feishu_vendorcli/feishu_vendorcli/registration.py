"""Creating a bot by QR scan: the Open Platform's app-registration device flow.

`POST {accounts}/oauth/v1/app/registration`, form-encoded: `init` (client_secret
must be supported), `begin` (device code + the URL shown as the QR), then `poll`
every `interval` seconds until the person who scanned confirms: HTTP 400 with
`authorization_pending` (wait), `slow_down` (wait 5 s longer each time),
`access_denied`, `expired_token`; a Lark tenant (`user_info.tenant_brand`) moves
the flow to the Lark host once. Success carries the new app's id and secret.
Every answer is read within 64 KiB and `timeout` seconds (`transport.fetch`), and
polling ends at the flow's own deadline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

import httpx
import msgspec

from plugin_host.clock import Clock

from .config import MIN_POLL_INTERVAL_SECONDS
from .transport import TooLarge, fetch

REGISTRATION_PATH = "/oauth/v1/app/registration"
MAX_ANSWER_BYTES = 64 * 1024
DEFAULT_INTERVAL = 5.0
DEFAULT_EXPIRES_IN = 600.0
MAX_EXPIRES_IN = 3600.0
MAX_INTERVAL = 120.0
MAX_TRANSIENT_FAILURES = 3

Action = Literal["success", "switch", "pending", "slow_down", "denied", "expired", "failed"]


class RegistrationError(Exception):
    """The flow ended without an app; `status` is the session status to report (`error` or `expired`)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RegisteredApp(msgspec.Struct, frozen=True):
    app_id: str
    app_secret: str
    brand: str  # feishu | lark
    owner_open_id: str | None


class Decision(msgspec.Struct, frozen=True):
    action: Action
    detail: str = ""
    app: RegisteredApp | None = None


class Prompt(msgspec.Struct, frozen=True):
    """What the person sees: the URL to show as a QR code, and the flow's timing."""

    url: str
    user_code: str | None
    interval: float
    expires_in: float
    brand: str


def decide(body: Any, *, brand: str, switched: bool) -> Decision:
    """The next step after one `poll` answer (pure, so every answer is tested on its own)."""
    if not isinstance(body, dict):
        return Decision("failed", "the registration server answered something that is not a JSON object")
    user_info: dict[str, Any] = body["user_info"] if isinstance(body.get("user_info"), dict) else {}
    app_id, secret = body.get("client_id"), body.get("client_secret")
    if isinstance(app_id, str) and app_id and isinstance(secret, str) and secret:
        owner = user_info.get("open_id") if isinstance(user_info.get("open_id"), str) else None
        final_brand = "lark" if user_info.get("tenant_brand") == "lark" else brand
        return Decision("success", app=RegisteredApp(app_id, secret, final_brand, owner))
    if user_info.get("tenant_brand") == "lark" and not switched:
        return Decision("switch")
    error = body.get("error")
    description = str(body.get("error_description") or "")[:300]
    if error == "authorization_pending":
        return Decision("pending")
    if error == "slow_down":
        return Decision("slow_down")
    if error == "access_denied":
        return Decision("denied", description or "the person who scanned declined to create the bot")
    if error == "expired_token":
        return Decision("expired", description or "the QR code expired before it was confirmed")
    return Decision("failed", f"the registration server answered {str(error)[:60]!r}: {description}".strip())


class AppRegistration:
    """One run of the device flow, from `init` to the new app's credentials."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        clock: Clock,
        *,
        feishu_accounts: str,
        lark_accounts: str,
        slow_down_seconds: float = 5.0,
        min_interval: float = 1.0,
        timeout: float = 10.0,
    ) -> None:
        self.http = http
        self.clock = clock
        self.hosts = {"feishu": feishu_accounts.rstrip("/"), "lark": lark_accounts.rstrip("/")}
        self.slow_down_seconds = slow_down_seconds
        self.min_interval = max(min_interval, MIN_POLL_INTERVAL_SECONDS)  # never a hot loop, whatever the server says
        self.timeout = timeout  # one call, body included

    async def run(self, on_prompt: Callable[[Prompt], Awaitable[None]], *, brand: str = "feishu") -> RegisteredApp:
        init = await self._post(brand, {"action": "init"})
        methods = init.get("supported_auth_methods")
        if isinstance(methods, list) and methods and "client_secret" not in methods:
            raise RegistrationError("error", "the registration server does not offer client_secret apps")
        begin = await self._post(
            brand,
            {
                "action": "begin",
                "archetype": "PersonalAgent",
                "auth_method": "client_secret",
                "request_user_info": "open_id",
            },
        )
        device_code, url = begin.get("device_code"), begin.get("verification_uri_complete")
        if not isinstance(device_code, str) or not device_code or not isinstance(url, str) or not url:
            raise RegistrationError("error", "the registration server did not start a flow (no device code or URL)")
        if not url.startswith(("https://", "http://")):
            raise RegistrationError("error", "the registration server gave a verification URL that is not http(s)")
        interval = self._bounded(begin.get("interval"), DEFAULT_INTERVAL, MAX_INTERVAL)
        interval = max(interval, self.min_interval)
        # the official SDK reads expires_in, the vendor installer expire_in
        expires_in = self._bounded(begin.get("expires_in", begin.get("expire_in")), DEFAULT_EXPIRES_IN, MAX_EXPIRES_IN)
        user_code = begin.get("user_code") if isinstance(begin.get("user_code"), str) else None
        await on_prompt(Prompt(url, user_code, interval, expires_in, brand))
        deadline = self.clock.monotonic() + expires_in
        switched = False
        failures = 0
        while True:
            status, body = await self._poll(brand, device_code)
            if status not in (200, 400):  # unreachable, too slow, too large (0) or failing: try again, a few times
                failures += 1
                if failures >= MAX_TRANSIENT_FAILURES:
                    reason = body if status == 0 else f"HTTP {status}"
                    raise RegistrationError("error", f"the registration server keeps failing ({reason})")
            else:
                failures = 0
                decision = decide(body, brand=brand, switched=switched)
                if decision.action == "success":
                    assert decision.app is not None
                    return decision.app
                if decision.action == "switch":
                    switched, brand = True, "lark"
                    await on_prompt(
                        Prompt(url, user_code, interval, max(0.0, deadline - self.clock.monotonic()), brand)
                    )
                    continue  # poll the Lark host at once
                if decision.action == "denied" or decision.action == "failed":
                    raise RegistrationError("error", decision.detail)
                if decision.action == "expired":
                    raise RegistrationError("expired", decision.detail)
                if decision.action == "slow_down":
                    interval = min(interval + self.slow_down_seconds, MAX_INTERVAL)
                    await on_prompt(
                        Prompt(url, user_code, interval, max(0.0, deadline - self.clock.monotonic()), brand)
                    )
            if self.clock.monotonic() + interval > deadline:
                raise RegistrationError("expired", "the QR code expired before it was confirmed")
            await self.clock.sleep(interval)

    async def _poll(self, brand: str, device_code: str) -> tuple[int, Any]:
        """(HTTP status, decoded body); (0, the reason) when there is no answer."""
        try:
            return await self._send(brand, {"action": "poll", "device_code": device_code})
        except RegistrationError as exc:
            return 0, exc.message

    async def _post(self, brand: str, form: dict[str, str]) -> dict[str, Any]:
        status, body = await self._send(brand, form)
        if status != 200 or not isinstance(body, dict):
            error = body.get("error_description") or body.get("error") if isinstance(body, dict) else None
            raise RegistrationError(
                "error", f"the registration server refused {form['action']} (HTTP {status}): {str(error or '')[:200]}"
            )
        return body

    async def _send(self, brand: str, form: dict[str, str]) -> tuple[int, Any]:
        url = self.hosts[brand] + REGISTRATION_PATH
        try:
            response = await fetch(self.http, "POST", url, limit=MAX_ANSWER_BYTES, timeout=self.timeout, data=form)
        except TooLarge:
            raise RegistrationError(
                "error", f"the registration server's answer to {form['action']} is over {MAX_ANSWER_BYTES} bytes"
            ) from None
        except TimeoutError:
            raise RegistrationError(
                "error", f"the registration server did not answer within {self.timeout:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise RegistrationError("error", f"the registration server is unreachable: {type(exc).__name__}") from None
        try:
            return response.status_code, msgspec.json.decode(response.content)
        except (msgspec.DecodeError, RecursionError):
            return response.status_code, None

    @staticmethod
    def _bounded(value: Any, default: float, ceiling: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            return default
        return min(float(value), ceiling)
