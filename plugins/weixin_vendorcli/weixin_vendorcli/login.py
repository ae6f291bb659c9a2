"""QR login (`session.start`): one `QrLogin` per connector session.

| iLink status | session status | what happens |
|---|---|---|
| `wait` | `qr_ready` | keep polling |
| `scaned` | `scanned` | keep polling (a pending verify code was accepted) |
| `need_verifycode` | `waiting_for_user` | wait for `session.input`; the code goes to the next poll as `verify_code` |
| `verify_code_blocked` | `qr_ready` with a new QR | too many wrong codes: refresh |
| `expired` | `qr_ready` with a new QR | refresh; after the first QR and `MAX_REFRESHES` more: `expired` |
| `scaned_but_redirect` | `scanned` | keep polling at `<scheme>://<redirect_host>` |
| `binded_redirect` | `connected` | already bound here: the host keeps the existing credentials |
| `confirmed` | `connected` | credentials go to the host in `session.update` |

A status poll that times out or fails is "still waiting" (as the vendor does):
the session keeps its current status (a scanned code is not shown again), and
only the platform's own `wait` shows the QR. The whole login has
`loginTimeoutMs` (480 s). Receiving does not start here:
the host stores the credentials and sends `connection.resume`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import anyio

from plugin_host.clock import Clock
from plugin_host.errors import INVALID_PARAMS, RpcError
from plugin_host.protocol import TERMINAL_SESSION_STATUSES, ConnectorSessionView, SessionStatus

from .accounts import Credentials, usable_token
from .backend import Backend, TransportError
from .config import WeixinConfig, seconds
from .wire import QrStatus

MAX_REFRESHES = 2  # the first QR plus two refreshes, as the vendor does
_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})(?::[0-9]{1,5})?$")
_CODE = re.compile(r"^[0-9A-Za-z]{1,16}$")

SCAN = ["Open Weixin on your phone and scan this QR code.", "Then confirm the login on your phone."]
SCANNED = ["Scanned. Confirm the login on your phone."]
TYPE_CODE = ["Type the number shown in Weixin on your phone."]
WRONG_CODE = ["That number did not match. Type the number shown on your phone again."]

Publish = Callable[[ConnectorSessionView, Credentials | None], Awaitable[None]]

log = logging.getLogger(__name__)


class LoginFailed(Exception):
    pass


class QrLogin:
    """The state machine of one QR login; `run` drives it until a terminal status."""

    def __init__(
        self,
        *,
        session_id: str,
        connection_id: str,
        display_name: str,
        backend: Backend,
        config: WeixinConfig,
        clock: Clock,
        publish: Publish,
        local_tokens: list[str],
        relogin: bool,
    ) -> None:
        self.session_id = session_id
        self.connection_id = connection_id
        self.display_name = display_name
        self.backend = backend
        self.config = config
        self.clock = clock
        self.publish = publish
        self.local_tokens = local_tokens
        self.relogin = relogin  # binded_redirect is a success only when the host holds credentials for this connection
        self.view = ConnectorSessionView(
            session_id=session_id, kind="weixin", status="pending", instructions=[], metadata={}
        )
        self.scope = anyio.CancelScope()
        self._qrcode = ""  # the polling handle: as good as a password until the login ends, never shown
        self._qr_content = ""  # the URL the user's phone scans
        self._refreshes = 0
        self._poll_base = config.base_url
        self._verify_code: str | None = None
        self._code_sent = False
        self._code_typed = anyio.Event()
        self._deadline = clock.monotonic() + seconds(config.login_timeout_ms)

    @property
    def finished(self) -> bool:
        return self.view.status in TERMINAL_SESSION_STATUSES

    # ---------------------------------------------------------------- driven by the host

    async def start(self) -> ConnectorSessionView:
        """Fetch the first QR code (raises `TransportError` when the platform cannot give one)."""
        await self._new_qrcode()
        self.view = self._view("qr_ready", SCAN)
        return self.view

    def input(self, value: Any) -> ConnectorSessionView:
        """The verify code the user typed (`session.input`), sent with the next status poll."""
        code = _verify_code(value)
        if self.view.status != "waiting_for_user":
            raise RpcError(INVALID_PARAMS, f"this login is {self.view.status}, it is not waiting for a code")
        self._verify_code = code
        self._code_sent = False
        self._code_typed.set()
        self.view = self._view("scanned", ["Checking the number…"])
        return self.view

    def cancel(self) -> None:
        self.scope.cancel()
        if not self.finished:
            self.view = self._view("cancelled", [])

    async def run(self) -> None:
        with self.scope:
            try:
                # the host applies the answer to session.start first; an update racing it could be overwritten
                await self.clock.sleep(seconds(self.config.qr_poll_interval_ms))
                await self._poll_until_done()
            except LoginFailed as exc:
                await self._finish("error", str(exc))
            except Exception as exc:  # a bug must end the session visibly, not leave it hanging
                log.exception("login %s failed", self.session_id)
                await self._finish("error", f"the login failed: {type(exc).__name__}")

    # ---------------------------------------------------------------- the loop

    async def _poll_until_done(self) -> None:
        while not self.finished:
            remaining = self._deadline - self.clock.monotonic()
            if remaining <= 0:
                await self._finish(
                    "expired", f"the login was not completed within {self.config.login_timeout_ms // 1000} s"
                )
                return
            if self.view.status == "waiting_for_user" and not self._code_typed.is_set():
                with anyio.move_on_after(remaining):
                    await self._code_typed.wait()
                continue
            status = await self._poll(remaining)
            if status is not None:  # None: no news, the session stays as it is
                await self._on_status(status)
            if not self.finished and not (self._verify_code and not self._code_sent):
                await self.clock.sleep(min(seconds(self.config.qr_poll_interval_ms), max(remaining, 0)))

    async def _poll(self, remaining: float) -> QrStatus | None:
        """The platform's answer to one status poll; None when there is none (timeout, 5xx, network)."""
        code = self._verify_code
        self._code_sent = code is not None
        try:
            with anyio.fail_after(min(remaining, seconds(self.config.qr_poll_timeout_ms) + 5)):
                return await self.backend.qrcode_status(self._poll_base, self._qrcode, code)
        except TimeoutError:
            return None
        except TransportError as exc:  # gateway timeouts and network errors: still waiting
            log.info("login %s: status poll failed (%s); polling again", self.session_id, exc.message)
            return None

    async def _on_status(self, answer: QrStatus) -> None:
        status = answer.status
        if status == "wait":
            await self._show("qr_ready", SCAN)
        elif status == "scaned":
            self._verify_code = None  # a code that was sent is accepted
            await self._show("scanned", SCANNED)
        elif status == "need_verifycode":
            wrong = self._code_sent
            self._verify_code = None
            self._code_typed = anyio.Event()
            await self._show(
                "waiting_for_user", WRONG_CODE if wrong else TYPE_CODE, input="verifyCode", wrongCode=wrong
            )
        elif status in ("expired", "verify_code_blocked"):
            self._verify_code = None
            await self._refresh(blocked=status == "verify_code_blocked")
        elif status == "scaned_but_redirect":
            self._redirect(answer.redirect_host)
            await self._show("scanned", SCANNED)
        elif status == "binded_redirect":
            if self.relogin:
                await self._finish("connected", None)
            else:
                await self._finish(
                    "error",
                    "this Weixin bot is already connected to this installation through another connection; "
                    "use that connection (or log it out) instead",
                )
        elif status == "confirmed":
            await self._confirmed(answer)
        else:
            log.warning("login %s: unknown QR status %r, still waiting", self.session_id, status[:40])

    async def _refresh(self, *, blocked: bool) -> None:
        if self._refreshes >= MAX_REFRESHES:
            reason = "too many wrong numbers were typed" if blocked else "the QR code expired"
            await self._finish("expired", f"{reason}; start the login again")
            return
        self._refreshes += 1
        try:
            await self._new_qrcode()
        except TransportError as exc:
            raise LoginFailed(f"a new QR code could not be fetched: {exc.message}") from None
        self._poll_base = self.config.base_url
        note = "Too many wrong numbers: scan the new QR code." if blocked else "The QR code expired: scan the new one."
        await self._show("qr_ready", [note, *SCAN], force=True)

    def _redirect(self, host: str | None) -> None:
        if host and _HOST.match(host):
            scheme = urlsplit(self.config.base_url).scheme or "https"
            self._poll_base = f"{scheme}://{host}"
        else:
            log.warning("login %s: redirect without a usable host; polling on at the same host", self.session_id)

    async def _confirmed(self, answer: QrStatus) -> None:
        if not answer.ilink_bot_id or not answer.bot_token:
            raise LoginFailed("Weixin confirmed the login without a bot id and token")
        if not usable_token(answer.bot_token):
            raise LoginFailed("Weixin confirmed the login with a bot token that cannot be sent (not visible ASCII)")
        credentials = Credentials(
            bot_token=answer.bot_token,
            ilink_bot_id=answer.ilink_bot_id,
            base_url=account_base_url(answer.baseurl, self.config.base_url),
            ilink_user_id=answer.ilink_user_id,
        )
        self.view = self._view(
            "connected",
            ["Connected."],
            account_id=credentials.ilink_bot_id,
            display_name=self.display_name or credentials.ilink_bot_id,
        )
        await self.publish(self.view, credentials)

    # ---------------------------------------------------------------- views

    async def _new_qrcode(self) -> None:
        answer = await self.backend.get_qrcode(self.config.base_url, self.local_tokens)
        if answer.code or not answer.qrcode or not answer.qrcode_img_content:
            raise TransportError(f"Weixin gave no QR code (ret {answer.code}: {(answer.errmsg or '')[:200]})")
        self._qrcode = answer.qrcode
        self._qr_content = answer.qrcode_img_content

    async def _show(
        self, status: SessionStatus, instructions: list[str], *, force: bool = False, **metadata: Any
    ) -> None:
        if not force and self.view.status == status and self.view.instructions == instructions:
            return
        self.view = self._view(status, instructions, **metadata)
        await self.publish(self.view, None)

    async def _finish(self, status: SessionStatus, error: str | None) -> None:
        if self.finished:
            return
        instructions = ["Connected."] if status == "connected" else []
        self.view = self._view(status, instructions, error=error)
        await self.publish(self.view, None)

    def _view(
        self,
        status: SessionStatus,
        instructions: list[str],
        *,
        error: str | None = None,
        account_id: str | None = None,
        display_name: str | None = None,
        **metadata: Any,
    ) -> ConnectorSessionView:
        live = status in ("qr_ready", "scanned", "waiting_for_user")
        return ConnectorSessionView(
            session_id=self.session_id,
            kind="weixin",
            status=status,
            qr_code=self._qr_content if live and self._qrcode else None,
            instructions=instructions,
            account_id=account_id,
            display_name=display_name,
            error=error,
            metadata={"qrRefreshes": self._refreshes, **metadata},
        )


def account_base_url(given: str | None, default: str) -> str:
    """The API base of a new account: the platform's `baseurl` when it is a usable URL, else ours.

    https only, unless our own base URL is plain http (a local test server)."""
    if not given:
        return default
    parts = urlsplit(given.strip())
    allowed = ("https", "http") if urlsplit(default).scheme == "http" else ("https",)
    if parts.scheme not in allowed or not parts.hostname or parts.username or parts.password:
        log.warning("ignored an unusable account baseurl from the platform")
        return default
    return given.strip().rstrip("/")


def _verify_code(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("verifyCode", value.get("code", value.get("value")))
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _CODE.match(value.strip()):
        raise RpcError(INVALID_PARAMS, "type the number shown on the phone (digits only)")
    return value.strip()
