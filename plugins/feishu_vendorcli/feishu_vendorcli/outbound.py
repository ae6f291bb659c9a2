"""`message.send` -> IM API calls: receive id type, reply or create, split text, `uuid` per part."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import msgspec

from plugin_host.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    RATE_LIMITED,
    REFUSED,
    SESSION_EXPIRED,
    UNSUPPORTED,
    RpcError,
)
from plugin_host.sdk import SendRequest

from .openapi import PlatformError

UUID_MAX = 50  # the IM API's limit on `uuid`
RECEIVE_ID_TYPES = ("chat_id", "open_id", "user_id", "union_id", "email")
_BODY_OVERHEAD = 200  # everything of the request body but the content string


def receive_id_type(peer_id: str, peer_type: str, override: object = None) -> str:
    """The `receive_id_type` a peer id needs: from its shape, or the send's metadata."""
    if isinstance(override, str) and override in RECEIVE_ID_TYPES:
        return override
    if peer_id.startswith("oc_"):
        return "chat_id"
    if peer_id.startswith("ou_"):
        return "open_id"
    if peer_id.startswith("on_"):
        return "union_id"
    if "@" in peer_id:
        return "email"
    return "chat_id" if peer_type == "group" else "user_id"


def message_uuid(connection_id: str, request_id: str, part: int) -> str:
    """The platform's dedupe key of part `part` of a delivery: stable across retries, ≤ 50 characters."""
    digest = hashlib.sha256(f"{connection_id}\x00{request_id}\x00{part}".encode()).hexdigest()
    return f"cr{digest[:40]}"


def text_content(text: str) -> str:
    return msgspec.json.encode({"text": text}).decode()


def _body_size(text: str) -> int:
    # the content string is JSON inside the JSON body: its escapes count twice
    return len(msgspec.json.encode(text_content(text))) + _BODY_OVERHEAD


def split_text(text: str, limit_bytes: int) -> list[str]:
    """Parts whose request bodies stay within `limit_bytes`; cut at a newline (or space) when one is near."""
    if _body_size(text) <= limit_bytes:
        return [text]
    parts: list[str] = []
    rest = text
    while rest:
        if _body_size(rest) <= limit_bytes:
            parts.append(rest)
            break
        cut = _longest_prefix(rest, limit_bytes)
        window = rest[:cut]
        for separator in ("\n", " "):
            at = window.rfind(separator)
            if at >= cut // 2:  # only when it keeps the part at least half full
                cut = at + 1
                break
        parts.append(rest[:cut])
        rest = rest[cut:]
    return parts


def _longest_prefix(text: str, limit_bytes: int) -> int:
    low, high = 1, len(text)
    while low < high:  # the largest n with _body_size(text[:n]) <= limit
        mid = (low + high + 1) // 2
        if _body_size(text[:mid]) <= limit_bytes:
            low = mid
        else:
            high = mid - 1
    return low


class Part(msgspec.Struct, frozen=True):
    """One IM call of a delivery."""

    uuid: str
    content: str
    reply_to: str | None
    in_thread: bool


def plan(request: SendRequest, *, limit_bytes: int, thread_root: str | None = None) -> Iterator[Part]:
    """The IM calls of one `message.send`, in order; every part replies into the same place."""
    if request.content_type != "text":
        raise RpcError(UNSUPPORTED, f"contentType {request.content_type!r} is not supported (text only)")
    if not request.content:
        raise RpcError(INVALID_PARAMS, "an empty message cannot be sent")
    target = request.target
    reply_to = target.reply_to_message_id or (thread_root if target.thread_id else None)
    in_thread = bool(target.thread_id) and reply_to is not None
    for index, piece in enumerate(split_text(request.content, limit_bytes)):
        yield Part(
            message_uuid(request.connection_id, request.request_id, index), text_content(piece), reply_to, in_thread
        )


def rpc_error(exc: PlatformError) -> RpcError:
    """What the host hears about a failed IM call (SPEC 3.7)."""
    data = exc.data()
    if exc.kind == "rate_limited":
        return RpcError(
            RATE_LIMITED,
            f"rate limited by the platform (code {exc.code}): {exc.message}",
            {**data, "retryAfterSeconds": exc.retry_after},
        )
    if exc.kind == "credentials":
        return RpcError(
            SESSION_EXPIRED, f"the platform refused the app credentials (code {exc.code}): {exc.message}", data
        )
    if exc.kind == "refused":
        return RpcError(REFUSED, f"the platform refused the message (code {exc.code}): {exc.message}", data)
    return RpcError(INTERNAL_ERROR, f"the platform failed (code {exc.code}, HTTP {exc.status}): {exc.message}", data)
