"""The iLink bot API over HTTP (`native` mode): requests, headers, bounded answers.

Every POST carries `Content-Type`, `AuthorizationType: ilink_bot_token`, a fresh
`X-WECHAT-UIN`, `iLink-App-Id` / `iLink-App-ClientVersion` and, once logged in,
`Authorization: Bearer <bot_token>`; every authenticated body carries `base_info`.
The QR-status GET carries only the two `iLink-App-*` headers. Nothing here logs
a request or an answer: the caller decides what is safe to say.
"""

from __future__ import annotations

import base64
import os
import re
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import msgspec

from .accounts import Credentials
from .backend import MAX_RETRY_AFTER_SECONDS, TransportError, decode_answer
from .config import WeixinConfig, seconds
from .wire import MAX_ANSWER_BYTES, Answer, OutboundText, QrCode, QrStatus, SendAnswer, Updates

APP_ID = "bot"
BOT_TYPE = "3"
CONNECT_TIMEOUT = 10.0
API_CONNECTIONS = 8  # concurrent sends (and other short calls) per plugin process
_POLL_GRACE = 5.0  # the client waits this much longer than the server's long-poll hold
_DIGITS = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() also takes '²'
_ERROR_BODY_BYTES = 64 * 1024  # a 4xx body this small is read for an iLink error code


def client_version_number(version: str) -> int:
    """`major<<16 | minor<<8 | patch`, each part in a byte (the `iLink-App-ClientVersion` header)."""
    parts = [int(p) if _DIGITS.fullmatch(p) else 0 for p in (version.split(".") + ["0", "0"])[:3]]
    return ((parts[0] & 0xFF) << 16) | ((parts[1] & 0xFF) << 8) | (parts[2] & 0xFF)


def random_uin() -> str:
    """`X-WECHAT-UIN`: base64 of the decimal text of a random uint32, new per request."""
    return base64.b64encode(str(int.from_bytes(os.urandom(4), "big")).encode()).decode()


class IlinkHttp:
    """Two HTTP clients shared by every account: one for long polls, one for everything else.

    httpcore looks at every pooled connection on each request, so the long polls
    (one held connection per account) stay out of the pool that sends use.
    """

    def __init__(self, config: WeixinConfig) -> None:
        self.config = config
        self._polls = _transport(connections=None, keepalive=200)
        # sends wait for one of a few connections: bursts stay gentle on the platform, and the scan stays short
        self._client = _transport(connections=API_CONNECTIONS, keepalive=API_CONNECTIONS)
        self._common = {
            "iLink-App-Id": APP_ID,
            "iLink-App-ClientVersion": str(client_version_number(config.client_version)),
        }
        self._base_info = {"channel_version": config.client_version, "bot_agent": config.bot_agent}
        # per phase; the whole request is bounded by the caller's deadline (`_request`)
        self._timeouts = {
            "connect": CONNECT_TIMEOUT,
            "read": None,
            "write": None,
            "pool": seconds(config.api_timeout_ms),
        }

    async def aclose(self) -> None:
        await self._polls.aclose()
        await self._client.aclose()

    # ---------------------------------------------------------------- QR login (no token, no base_info)

    async def get_qrcode(self, base_url: str, local_tokens: list[str]) -> QrCode:
        url = f"{base_url}/ilink/bot/get_bot_qrcode?bot_type={BOT_TYPE}"
        try:
            body = await self._post(url, {"local_token_list": local_tokens}, token=None, timeout=self._api_timeout)
        except _TimedOut:
            raise TransportError("get_bot_qrcode timed out") from None
        return decode_answer(body, QrCode)

    async def qrcode_status(self, base_url: str, qrcode: str, verify_code: str | None) -> QrStatus | None:
        """The platform's status of the QR code; None when the long poll ended without news."""
        url = f"{base_url}/ilink/bot/get_qrcode_status?qrcode={quote(qrcode, safe='')}"
        if verify_code:
            url += f"&verify_code={quote(verify_code, safe='')}"
        try:
            body = await self._request(
                "GET", url, headers=dict(self._common), timeout=seconds(self.config.qr_poll_timeout_ms)
            )
        except _TimedOut:
            return None
        return decode_answer(body, QrStatus)

    # ---------------------------------------------------------------- bot calls

    async def get_updates(self, account: Credentials, cursor: str, timeout: float) -> Updates:
        """One long poll; a poll that times out on our side is an empty answer (normal for long polls)."""
        payload = {"get_updates_buf": cursor, "base_info": self._base_info}
        try:
            body = await self._post(
                f"{account.base_url}/ilink/bot/getupdates",
                payload,
                token=account.bot_token,
                timeout=timeout + min(_POLL_GRACE, timeout),
                client=self._polls,
            )
        except _TimedOut:
            return Updates(ret=0, msgs=[], get_updates_buf=cursor)
        return decode_answer(body, Updates)

    async def send_message(self, account: Credentials, msg: OutboundText) -> SendAnswer:
        payload = {"msg": msg, "base_info": self._base_info}
        try:
            body = await self._post(
                f"{account.base_url}/ilink/bot/sendmessage", payload, token=account.bot_token, timeout=self._api_timeout
            )
        except _TimedOut:
            # ambiguous: the platform may have accepted it; the caller retries with the same client_id
            raise TransportError("sendmessage timed out") from None
        return decode_answer(body, SendAnswer)

    async def notify(self, account: Credentials, event: str) -> None:
        """`msg/notifystart` or `msg/notifystop`: courtesy calls whose failure changes nothing."""
        try:
            await self._post(
                f"{account.base_url}/ilink/bot/msg/{event}",
                {"base_info": self._base_info},
                token=account.bot_token,
                timeout=self._api_timeout,
            )
        except _TimedOut:
            raise TransportError(f"{event} timed out") from None

    # ---------------------------------------------------------------- plumbing

    @property
    def _api_timeout(self) -> float:
        return seconds(self.config.api_timeout_ms)

    async def _post(
        self,
        url: str,
        payload: Any,
        *,
        token: str | None,
        timeout: float,
        client: httpx.AsyncHTTPTransport | None = None,
    ) -> bytes:
        headers = {
            "Content-Type": "application/json",
            "AuthorizationType": "ilink_bot_token",
            "X-WECHAT-UIN": random_uin(),
            **self._common,
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"
        content = msgspec.json.encode(payload)
        return await self._request("POST", url, headers=headers, content=content, timeout=timeout, client=client)

    async def _request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        timeout: float,
        content: bytes | None = None,
        client: httpx.AsyncHTTPTransport | None = None,
    ) -> bytes:
        path = url.split("?", 1)[0].rsplit("/ilink/", 1)[-1]  # for messages: never the query (it holds the QR handle)
        transport = client or self._client
        try:
            # built inside the try: a header value that is not ASCII fails here, as a failed request
            request = httpx.Request(
                method, url, headers=headers, content=content, extensions={"timeout": self._timeouts}
            )
            with anyio.fail_after(timeout):
                response = await transport.handle_async_request(request)
                try:
                    body = bytearray()
                    async for chunk in response.aiter_raw():  # no Accept-Encoding sent: the body is plain
                        body += chunk
                        if len(body) > MAX_ANSWER_BYTES:
                            raise TransportError(f"{path}: answer over {MAX_ANSWER_BYTES} bytes")
                finally:
                    await response.aclose()
        except TimeoutError:
            raise _TimedOut() from None
        except httpx.TimeoutException:
            raise _TimedOut() from None
        except httpx.HTTPError as exc:
            raise TransportError(f"{path}: {type(exc).__name__}") from None
        except (UnicodeEncodeError, ValueError) as exc:
            raise TransportError(f"{path}: the request could not be built ({type(exc).__name__})") from None
        status = response.status_code
        if 400 <= status < 500 and _session_expired(body):
            return bytes(body)  # -14 comes with any status: the caller reads it as the answer it is
        if status == 429:
            raise TransportError(f"{path}: HTTP 429", status=429, retry_after=_retry_after(response))
        if not 200 <= status < 300:
            raise TransportError(f"{path}: HTTP {status}", status=status)
        return bytes(body)


class _TimedOut(Exception):
    pass


def _transport(*, connections: int | None, keepalive: int) -> httpx.AsyncHTTPTransport:
    # no proxy from the environment: the platform host comes from config only
    return httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=keepalive)
    )


def _retry_after(response: httpx.Response) -> int | None:
    """`Retry-After` in seconds, when it is a plain number (at most an hour)."""
    value = response.headers.get("retry-after", "").strip()
    if not _DIGITS.fullmatch(value):
        return None
    return MAX_RETRY_AFTER_SECONDS if len(value) > 9 else min(int(value), MAX_RETRY_AFTER_SECONDS)


def _session_expired(body: bytearray) -> bool:
    """Whether an error body is an iLink answer saying -14 (read only when small)."""
    if len(body) > _ERROR_BODY_BYTES:
        return False
    try:
        return bool(decode_answer(bytes(body), Answer).session_expired)
    except TransportError:
        return False
