"""`message.send`: `sendmessage` to the peer with its latest `context_token`, the answer told truthfully.

| platform answer | our answer |
|---|---|
| `ret` 0 (or absent) | sent; `providerMessageId` = the platform's `message_id`, else our `client_id` |
| `ret` -2 | -32016 reply window closed (stale context token, too many replies) |
| `ret`/`errcode` -14 | -32017 session expired (and the account's polling pauses) |
| other non-zero `ret` | -32603 with the platform's `errmsg`: a failed send, retried by the host |
| HTTP 429 | -32015 with `retryAfterSeconds` |
| network error, 5xx, garbage | -32603: a failed send, retried by the host |

Long text is split (`text.split_reply`); each part is one platform message with a
`client_id` derived from the `requestId`, so a retry reuses the same ids. The host's
budget counts one send per message, the platform counts parts: they go out
`partIntervalMs` apart (the manifest's `minIntervalMs`), at most `maxParts` of them
(its `maxRepliesPerInbound`; the rest is cut, the last part ends with a marker).
When a message has several parts, the ids already accepted are kept in host state,
and a retry after a partial failure sends only the rest.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable

from plugin_host.clock import Clock
from plugin_host.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    RATE_LIMITED,
    REPLY_WINDOW_CLOSED,
    SESSION_EXPIRED,
    UNSUPPORTED,
    RpcError,
)
from plugin_host.protocol import SendRequest, SendResult

from .accounts import Account
from .backend import MAX_RETRY_AFTER_SECONDS, Backend, TransportError
from .config import PLATFORM_MAX_REPLIES, WeixinConfig, seconds
from .text import split_reply
from .wire import REPLY_REFUSED_CODE, SendAnswer, as_id, text_message

log = logging.getLogger(__name__)


class Sender:
    def __init__(
        self, backend: Backend, config: WeixinConfig, clock: Clock, on_expired: Callable[[Account], Awaitable[None]]
    ) -> None:
        self.backend = backend
        self.config = config
        self.clock = clock
        self.on_expired = on_expired  # -14 on a send pauses the account like -14 on a poll

    async def send(self, account: Account, request: SendRequest) -> SendResult:
        if account.status == "expired":
            raise expired_error()
        if request.content_type != "text":
            raise RpcError(UNSUPPORTED, f"Weixin bots send text only, not {request.content_type!r}")
        if not request.content:
            raise RpcError(INVALID_PARAMS, "an empty message cannot be sent")
        peer = request.target.peer_id
        context_token = await account.context_token(peer)
        max_parts = self.config.max_parts or PLATFORM_MAX_REPLIES
        chunks = split_reply(request.content, self.config.text_chunk_chars, max_parts)
        done = await account.parts_sent(request.request_id) if len(chunks) > 1 else []
        ids = list(done)
        for index in range(len(done), len(chunks)):
            if index > 0:  # the platform wants its interval between two parts (the host counts one send)
                await self.clock.sleep(seconds(self.config.part_interval_ms or 0))
            client_id = _client_id(account.connection_id, request.request_id, index)
            msg = text_message(peer, client_id, chunks[index], context_token)
            try:
                answer = await self.backend.send_message(account.credentials, msg)
            except TransportError as exc:
                raise _transport_error(exc) from None
            if answer.session_expired:
                await self.on_expired(account)
                raise expired_error()
            _check(answer, index, len(chunks), account)
            ids.append(as_id(answer.message_id) or client_id)
            if len(chunks) > 1 and index < len(chunks) - 1:
                await account.save_parts_sent(request.request_id, ids)
        if len(chunks) > 1:
            await account.save_parts_sent(request.request_id, None)
        return SendResult(duplicate=False, provider_message_id=ids[0])


def expired_error() -> RpcError:
    return RpcError(SESSION_EXPIRED, "the Weixin session of this account expired: log in again (scan a new QR code)")


def _check(answer: SendAnswer, index: int, total: int, account: Account) -> None:
    code = answer.code
    if code == 0:
        return
    where = f" (part {index + 1} of {total})" if total > 1 else ""
    errmsg = account.scrub(answer.errmsg or "")
    if code == REPLY_REFUSED_CODE:
        raise RpcError(
            REPLY_WINDOW_CLOSED,
            f"Weixin refused the reply{where}: the conversation's context is stale or has had too many replies"
            + (f" ({errmsg})" if errmsg else ""),
            {"ret": code},
        )
    raise RpcError(
        INTERNAL_ERROR,
        f"Weixin refused the message{where}: ret {code}" + (f": {errmsg}" if errmsg else ""),
        {"ret": code},
    )


def _transport_error(exc: TransportError) -> RpcError:
    if exc.status == 429:
        wait = max(1, min(60 if exc.retry_after is None else exc.retry_after, MAX_RETRY_AFTER_SECONDS))
        return RpcError(RATE_LIMITED, "Weixin rate-limited the send", {"retryAfterSeconds": wait})
    return RpcError(exc.code, f"the message was not sent: {exc.message}", exc.data)


def _client_id(connection_id: str, request_id: str, index: int) -> str:
    """The same for every attempt of one chunk, so that a platform that dedupes on it can."""
    digest = hashlib.sha256(f"{connection_id}\x00{request_id}".encode()).hexdigest()[:24]
    return f"cr-{digest}-{index}"
