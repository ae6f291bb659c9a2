"""The Open Platform HTTP calls the plugin makes: tenant token, bot info, IM messages.

One `httpx.AsyncClient` for every app. Tenant tokens are cached per connection
and refreshed `refresh_margin` seconds before they expire; a token-invalid
answer drops the token and the call is made once more with a fresh one. A
token-invalid answer to that fresh token too is transient (-32603, retried by the
host): the app's credentials just got a token, so they are not what is wrong.
"""

from __future__ import annotations

import re
from typing import Any

import anyio
import httpx
import msgspec

from plugin_host.clock import Clock

from .config import Account
from .transport import Response, TooLarge, fetch, retry_after

TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
BOT_INFO_PATH = "/open-apis/bot/v3/info"
MESSAGES_PATH = "/open-apis/im/v1/messages"
WS_ENDPOINT_PATH = "/callback/ws/endpoint"

TOKEN_INVALID_CODES = frozenset({99991661, 99991663, 99991664, 99991665, 99991666, 99991668})
# 99991400 is the documented rate-limit code (HTTP 429); lark-oapi 1.7.5 uses 99991402, 11020, 11021;
# 230020 is the IM API's per-chat frequency control (the Open Platform's FAQ on message rate limits)
RATE_LIMIT_CODES = frozenset({99991400, 99991402, 11020, 11021, 230020})
# the token endpoint's answers for an app id or secret that is not (or no longer) valid
BAD_CREDENTIAL_CODES = frozenset({10003, 10014, 10012, 10013, 10015})
MAX_ANSWER_BYTES = 1024 * 1024
_MESSAGE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class PlatformError(Exception):
    """The platform refused or failed a call.

    kind: `rate_limited` (retry after `retry_after`), `credentials` (app id or
    secret refused), `transient` (network, 5xx: retry later) or `refused`
    (a business refusal that a retry will not change).
    """

    def __init__(
        self, kind: str, message: str, *, code: int | None = None, status: int | None = None, retry_after: int = 0
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code
        self.status = status
        self.retry_after = retry_after

    def data(self) -> dict[str, Any]:
        return {"platformCode": self.code, "httpStatus": self.status, "platformMessage": self.message}


class _Answer(msgspec.Struct, forbid_unknown_fields=False):
    code: int = -1
    msg: str = ""
    data: dict[str, Any] | None = None
    tenant_access_token: str | None = None
    expire: int | None = None
    bot: dict[str, Any] | None = None


class _Token(msgspec.Struct):
    value: str
    refresh_at: float  # monotonic


class BotInfo(msgspec.Struct, frozen=True):
    open_id: str | None
    name: str | None


class OpenApi:
    """Open Platform calls for every linked app of this plugin process."""

    def __init__(
        self, http: httpx.AsyncClient, clock: Clock, *, refresh_margin: float = 600.0, timeout: float = 10.0
    ) -> None:
        self.http = http
        self.clock = clock
        self.refresh_margin = refresh_margin
        self.timeout = timeout  # one whole call, body included
        self._tokens: dict[str, _Token] = {}
        self._locks: dict[str, anyio.Lock] = {}

    # ---------------------------------------------------------------- tokens

    async def fetch_token(self, base_url: str, app_id: str, app_secret: str) -> tuple[str, int]:
        """A new tenant token and its lifetime in seconds; `PlatformError` when refused."""
        response = await self._post(base_url + TOKEN_PATH, json={"app_id": app_id, "app_secret": app_secret})
        answer = _decode(response)
        if answer.code != 0 or not answer.tenant_access_token:
            kind = "credentials" if answer.code in BAD_CREDENTIAL_CODES else _kind(response, answer)
            raise PlatformError(
                kind,
                answer.msg or f"the token endpoint answered HTTP {response.status_code}",
                code=answer.code,
                status=response.status_code,
                retry_after=retry_after(response.headers),
            )
        return answer.tenant_access_token, int(answer.expire or 7200)

    async def token(self, key: str, base_url: str, account: Account) -> str:
        """The cached tenant token of connection `key`, fetched when missing or within the margin."""
        cached = self._tokens.get(key)
        if cached is not None and self.clock.monotonic() < cached.refresh_at:
            return cached.value
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:  # one fetch for many concurrent sends
            cached = self._tokens.get(key)
            if cached is not None and self.clock.monotonic() < cached.refresh_at:
                return cached.value
            value, lifetime = await self.fetch_token(base_url, account.app_id, account.app_secret)
            self._tokens[key] = _Token(value, self.clock.monotonic() + lifetime - self.refresh_margin)
            return value

    def current_tokens(self) -> list[str]:
        """The tokens in use: secrets to mask in logs (only these, so the set stays small)."""
        return [token.value for token in self._tokens.values()]

    def forget(self, key: str) -> None:
        self._tokens.pop(key, None)
        self._locks.pop(key, None)

    # ---------------------------------------------------------------- calls with a token

    async def bot_info(self, key: str, base_url: str, account: Account) -> BotInfo:
        answer = await self._authorized("GET", key, base_url, account, BOT_INFO_PATH)
        bot = answer.bot or (answer.data or {}).get("bot") or {}
        return BotInfo(open_id=bot.get("open_id") or None, name=bot.get("app_name") or bot.get("name") or None)

    async def create_message(
        self, key: str, base_url: str, account: Account, *, receive_id: str, receive_id_type: str, body: dict[str, Any]
    ) -> str | None:
        answer = await self._authorized(
            "POST",
            key,
            base_url,
            account,
            MESSAGES_PATH,
            params={"receive_id_type": receive_id_type},
            json={"receive_id": receive_id, **body},
        )
        return _message_id(answer)

    async def reply_message(
        self, key: str, base_url: str, account: Account, *, message_id: str, body: dict[str, Any]
    ) -> str | None:
        if not _MESSAGE_ID.fullmatch(message_id):
            raise PlatformError("refused", "the message id to reply to is not a platform message id")
        answer = await self._authorized(
            "POST", key, base_url, account, f"{MESSAGES_PATH}/{message_id}/reply", json=body
        )
        return _message_id(answer)

    async def _authorized(
        self,
        method: str,
        key: str,
        base_url: str,
        account: Account,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
    ) -> _Answer:
        for attempt in (1, 2):
            token = await self.token(key, base_url, account)
            headers = {"Authorization": f"Bearer {token}"}
            if json is not None:
                headers["Content-Type"] = "application/json; charset=utf-8"
            # encoded by msgspec (UTF-8, compact): the size the text split measured is the size sent
            content = msgspec.json.encode(json) if json is not None else None
            response = await self._request(method, base_url + path, params=params, content=content, headers=headers)
            answer = _decode(response)
            if answer.code == 0 and response.status_code < 400:
                return answer
            token_invalid = answer.code in TOKEN_INVALID_CODES
            if token_invalid:
                self._drop(key, token)
                if attempt == 1:
                    continue
            raise PlatformError(
                "transient" if token_invalid else _kind(response, answer),
                answer.msg or f"HTTP {response.status_code}",
                code=answer.code if answer.code != -1 else None,
                status=response.status_code,
                retry_after=retry_after(response.headers),
            )
        raise AssertionError("unreachable")

    def _drop(self, key: str, token: str) -> None:
        cached = self._tokens.get(key)
        if cached is not None and cached.value == token:
            del self._tokens[key]

    # ---------------------------------------------------------------- transport

    async def _post(self, url: str, **kwargs: Any) -> Response:
        return await self._request("POST", url, **kwargs)

    async def _request(self, method: str, url: str, **kwargs: Any) -> Response:
        try:
            return await fetch(self.http, method, url, limit=MAX_ANSWER_BYTES, timeout=self.timeout, **kwargs)
        except TooLarge as exc:
            raise PlatformError("transient", "the platform's answer is too large", status=exc.status) from None
        except TimeoutError:
            raise PlatformError("transient", f"the platform did not answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise PlatformError("transient", f"the platform is unreachable: {type(exc).__name__}") from None


def _message_id(answer: _Answer) -> str | None:
    """`data.message_id` when it is a string: anything else counts as absent (the message is sent all the same)."""
    value = (answer.data or {}).get("message_id")
    return value if isinstance(value, str) and value else None


def _decode(response: Response) -> _Answer:
    try:
        return msgspec.json.decode(response.content or b"{}", type=_Answer)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return _Answer(code=-1, msg=f"HTTP {response.status_code} with an unreadable answer")


def _kind(response: Response, answer: _Answer) -> str:
    if response.status_code == 429 or answer.code in RATE_LIMIT_CODES:
        return "rate_limited"
    if answer.code != -1 and answer.code != 0 and "retry-after" in response.headers:
        return "rate_limited"
    if response.status_code >= 500 or answer.code == -1 or 50000 <= answer.code < 60000:
        return "transient"
    return "refused"
