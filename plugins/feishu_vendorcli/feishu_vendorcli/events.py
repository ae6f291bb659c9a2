"""Open Platform events -> `BridgeEvent`s: one mapping for the webhook and the long connection.

Schema 2.0 (`{"schema": "2.0", "header": {...}, "event": {...}}`) and 1.0
(`{"uuid", "token", "type": "event_callback", "event": {"type", ...}}`).
`eventId` is `header.event_id` (2.0) or `uuid` (1.0) and `messageId` the
platform's message id, so the host's two dedupes (SPEC 6.3) catch both a
redelivered event and a message redelivered under a new event id.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import msgspec

from plugin_host.protocol import PeerType
from plugin_host.sdk import BridgeEvent

MEDIA_TYPES = ("image", "file", "audio", "media", "sticker")
# how much of an unmapped message's content rides along in metadata
_MAX_RAW_CONTENT_BYTES = 8192
_MAX_MENTIONS = 50
_SPACES = re.compile(r" {2,}")
_MENTION_KEY = re.compile(r"@_user_[0-9]+|@_all")  # whole keys: `@_user_1` never matches inside `@_user_10`
_DIGITS = re.compile(r"[0-9]{1,20}")  # ASCII digits only: str.isdigit() also takes '²'

BOT_ADDED = ("im.chat.member.bot.added_v1", "add_bot")
BOT_REMOVED = ("im.chat.member.bot.deleted_v1", "remove_bot")


class UnknownSchema(ValueError):
    """The body is neither a schema 2.0 event nor a schema 1.0 event callback."""


class Envelope(msgspec.Struct, frozen=True):
    """The parts of an event that do not depend on its type."""

    schema: str  # "2.0" | "1.0"
    event_id: str
    event_type: str
    token: str | None
    create_time_ms: int | None
    event: dict[str, Any]


class Route(msgspec.Struct, frozen=True):
    """Where events of one connection go."""

    connection_id: str
    channel_id: str
    kind: str
    account_id: str
    bot_open_id: str | None = None


class Notice(msgspec.Struct, frozen=True):
    """Something to report that is not a message (the bot added to or removed from a chat)."""

    what: str  # bot_added | bot_removed
    chat_id: str
    detail: dict[str, Any]


class Mapped(msgspec.Struct):
    events: list[BridgeEvent] = msgspec.field(default_factory=list)
    notice: Notice | None = None
    ignored: str | None = None  # why nothing came out of the event


def envelope(payload: Any) -> Envelope:
    """Read the envelope of a decrypted event; `UnknownSchema` when it is neither 2.0 nor 1.0."""
    if not isinstance(payload, dict):
        raise UnknownSchema("the event is not a JSON object")
    event = payload.get("event")
    if payload.get("schema") == "2.0":
        header = payload.get("header")
        if not isinstance(header, dict) or not isinstance(event, dict):
            raise UnknownSchema("a schema 2.0 event needs a header and an event object")
        event_id, event_type = header.get("event_id"), header.get("event_type")
        if not _text(event_id) or not _text(event_type):
            raise UnknownSchema("a schema 2.0 event needs header.event_id and header.event_type")
        return Envelope(
            "2.0", str(event_id), str(event_type), _str(header.get("token")), _int(header.get("create_time")), event
        )
    if "schema" in payload:
        raise UnknownSchema(f"unknown event schema {str(payload.get('schema'))[:20]!r}")
    if payload.get("type") == "event_callback" and isinstance(event, dict):
        uuid, event_type = payload.get("uuid"), event.get("type")
        if not _text(uuid) or not _text(event_type):
            raise UnknownSchema("a schema 1.0 event needs uuid and event.type")
        ts = payload.get("ts")
        millis = round(float(ts) * 1000) if isinstance(ts, (int, float, str)) and _is_number(ts) else None
        return Envelope("1.0", str(uuid), str(event_type), _str(payload.get("token")), millis, event)
    raise UnknownSchema("the body is neither a schema 2.0 event nor a schema 1.0 event callback")


def map_event(env: Envelope, route: Route) -> Mapped:
    if env.event_type == "im.message.receive_v1":
        return _message_v2(env, route)
    if env.schema == "1.0" and env.event_type == "message":
        return _message_v1(env, route)
    if env.event_type in BOT_ADDED or env.event_type in BOT_REMOVED:
        return _membership(env)
    return Mapped(ignored=f"event type {env.event_type} is not handled")


# ---------------------------------------------------------------- schema 2.0 messages


def _message_v2(env: Envelope, route: Route) -> Mapped:
    message = env.event.get("message")
    sender = env.event.get("sender")
    if not isinstance(message, dict) or not _text(message.get("message_id")):
        return Mapped(ignored="im.message.receive_v1 without a message id")
    sender = _dict(sender)
    ids = _dict(sender.get("sender_id"))
    open_id = _str(ids.get("open_id"))
    if sender.get("sender_type") == "app" and open_id and open_id == route.bot_open_id:
        return Mapped(ignored="the bot's own message")
    chat_id = _str(message.get("chat_id")) or ""
    chat_type = _str(message.get("chat_type")) or ""
    peer_type: PeerType = "dm" if chat_type == "p2p" else "group" if chat_type == "group" else "unknown"
    peer_id = (open_id or chat_id) if peer_type == "dm" else chat_id
    if not peer_id:
        return Mapped(ignored="a message without a chat or sender")
    mentions = _mentions(message.get("mentions"), route.bot_open_id)
    message_type = _str(message.get("message_type")) or "unknown"
    content, typed, extra = _content(message_type, message.get("content"), mentions)
    metadata: dict[str, Any] = {
        "chatId": chat_id,
        "chatType": chat_type,
        "feishuMessageType": message_type,
        "senderType": _str(sender.get("sender_type")),
        "sender": {"openId": open_id, "unionId": _str(ids.get("union_id")), "userId": _str(ids.get("user_id"))},
        "tenantKey": _str(sender.get("tenant_key")),
        "rootId": _str(message.get("root_id")),
        "parentId": _str(message.get("parent_id")),
        "mentions": [m["public"] for m in mentions],
        "mentionedBot": _mentioned_bot(mentions, route.bot_open_id),
        "schema": env.schema,
        "eventType": env.event_type,
        **extra,
    }
    created = _int(message.get("create_time")) or env.create_time_ms
    return Mapped(
        events=[
            BridgeEvent(
                event_id=env.event_id,
                delivery_attempt=1,
                timestamp=_rfc3339(created),
                connection_id=route.connection_id,
                channel_id=route.channel_id,
                kind=route.kind,
                account_id=route.account_id,
                peer_id=peer_id,
                peer_type=peer_type,
                user_id=open_id,
                thread_id=_str(message.get("thread_id")) or None,
                message_id=message["message_id"],
                message_type=typed,
                content=content,
                metadata=metadata,
            )
        ]
    )


def _mentions(raw: Any, bot_open_id: str | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict) or len(out) >= _MAX_MENTIONS:
            continue
        ids = _dict(item.get("id"))
        open_id = _str(ids.get("open_id"))
        is_bot = bool(bot_open_id) and open_id == bot_open_id
        public = {"key": _str(item.get("key")), "name": _str(item.get("name")), "openId": open_id, "isBot": is_bot}
        out.append({"public": public, "key": public["key"], "name": public["name"], "is_bot": is_bot})
    return out


def _mentioned_bot(mentions: list[dict[str, Any]], bot_open_id: str | None) -> bool | None:
    if any(m["is_bot"] for m in mentions):
        return True
    return False if bot_open_id else None  # without the bot's open_id nobody can tell


def _content(message_type: str, raw: Any, mentions: list[dict[str, Any]]) -> tuple[str, str, dict[str, Any]]:
    """(content, messageType, metadata extras) of a message's JSON `content` string."""
    body = _json_object(raw)
    if message_type == "text":
        return _with_mentions(_str(body.get("text")) or "", mentions), "text", {}
    if message_type == "post":
        text, image_keys = _post_text(body, mentions)
        return text, "text", {"imageKeys": image_keys} if image_keys else {}
    if message_type == "image":
        return "", "image", {"imageKey": _str(body.get("image_key"))}
    if message_type in ("file", "audio", "media", "sticker"):
        extra: dict[str, Any] = {"fileKey": _str(body.get("file_key"))}
        if message_type in ("file", "media"):
            extra["fileName"] = _str(body.get("file_name"))
        if message_type == "media":
            extra["imageKey"] = _str(body.get("image_key"))
        if message_type in ("audio", "media"):
            extra["durationMs"] = _int(body.get("duration"))
        return "", message_type, extra
    # never dropped: typed with its own name, its (bounded) content in metadata
    encoded = msgspec.json.encode(body)
    kept: dict[str, Any] = {"content": body} if len(encoded) <= _MAX_RAW_CONTENT_BYTES else {"contentTruncated": True}
    return "", message_type, kept


def _with_mentions(text: str, mentions: list[dict[str, Any]]) -> str:
    """`@_user_1` keys become `@Name`; the bot's own mention is dropped; an unknown key stays as it is."""
    if not mentions:
        return text
    names = {m["key"]: "" if m["is_bot"] else f"@{m['name'] or ''}" for m in mentions if m["key"]}
    text = _MENTION_KEY.sub(lambda match: names.get(match.group(0), match.group(0)), text)
    return _SPACES.sub(" ", text).strip()


def _post_text(body: dict[str, Any], mentions: list[dict[str, Any]]) -> tuple[str, list[str]]:
    post = body
    if "content" not in post:  # a locale wrapper: {"zh_cn": {...}, "en_us": {...}}
        post = next((v for v in body.values() if isinstance(v, dict) and "content" in v), {})
    lines: list[str] = []
    image_keys: list[str] = []
    title = _str(post.get("title"))
    if title:
        lines.append(title)
    bot_keys = {m["key"] for m in mentions if m["is_bot"]}
    paragraphs = post.get("content")
    for paragraph in paragraphs if isinstance(paragraphs, list) else []:
        parts: list[str] = []
        for element in paragraph if isinstance(paragraph, list) else []:
            if not isinstance(element, dict):
                continue
            tag = element.get("tag")
            if tag in ("text", "a", "md", "code_block"):
                parts.append(_str(element.get("text")) or "")
            elif tag == "at":
                if element.get("user_id") in bot_keys:
                    continue
                parts.append(f"@{_str(element.get('user_name')) or _str(element.get('user_id')) or ''}")
            elif tag == "emotion":
                parts.append(f":{_str(element.get('emoji_type')) or ''}:")
            elif tag in ("img", "media") and _str(element.get("image_key")):
                image_keys.append(element["image_key"])
        line = "".join(parts).strip()
        if line:
            lines.append(line)
    return "\n".join(lines), image_keys


# ---------------------------------------------------------------- schema 1.0 messages


def _message_v1(env: Envelope, route: Route) -> Mapped:
    event = env.event
    message_id = _str(event.get("open_message_id"))
    if not message_id:
        return Mapped(ignored="a 1.0 message without open_message_id")
    chat_id = _str(event.get("open_chat_id")) or ""
    chat_type = _str(event.get("chat_type")) or ""
    open_id = _str(event.get("open_id"))
    peer_type: PeerType = "dm" if chat_type == "private" else "group" if chat_type == "group" else "unknown"
    peer_id = (open_id or chat_id) if peer_type == "dm" else chat_id
    if not peer_id:
        return Mapped(ignored="a message without a chat or sender")
    msg_type = _str(event.get("msg_type")) or "unknown"
    extra: dict[str, Any] = {}
    if msg_type == "text":
        content, typed = (_str(event.get("text_without_at_bot")) or _str(event.get("text")) or "").strip(), "text"
    elif msg_type in MEDIA_TYPES:
        content, typed = "", msg_type
        extra = {k: event[v] for k, v in (("imageKey", "image_key"), ("fileKey", "file_key")) if _str(event.get(v))}
    else:
        content, typed = _str(event.get("text")) or "", msg_type
    metadata = {
        "chatId": chat_id,
        "chatType": chat_type,
        "feishuMessageType": msg_type,
        "sender": {"openId": open_id, "unionId": _str(event.get("union_id")), "userId": _str(event.get("user_id"))},
        "tenantKey": _str(event.get("tenant_key")),
        "rootId": _str(event.get("root_id")),
        "parentId": _str(event.get("parent_id")),
        "mentions": [],
        "mentionedBot": bool(event.get("is_mention")),
        "schema": env.schema,
        "eventType": env.event_type,
        **extra,
    }
    return Mapped(
        events=[
            BridgeEvent(
                event_id=env.event_id,
                delivery_attempt=1,
                timestamp=_rfc3339(env.create_time_ms),
                connection_id=route.connection_id,
                channel_id=route.channel_id,
                kind=route.kind,
                account_id=route.account_id,
                peer_id=peer_id,
                peer_type=peer_type,
                user_id=open_id,
                message_id=message_id,
                message_type=typed,
                content=content,
                metadata=metadata,
            )
        ]
    )


# ---------------------------------------------------------------- membership


def _membership(env: Envelope) -> Mapped:
    event = env.event
    what = "bot_added" if env.event_type in BOT_ADDED else "bot_removed"
    chat_id = _str(event.get("chat_id")) or _str(event.get("open_chat_id")) or ""
    operator = _dict(event.get("operator_id"))
    detail = {
        "chatName": _str(event.get("name")) or _str(event.get("chat_name")),
        "operatorOpenId": _str(operator.get("open_id")) or _str(event.get("operator_open_id")),
        "eventId": env.event_id,
    }
    return Mapped(notice=Notice(what, chat_id, detail))


# ---------------------------------------------------------------- helpers


def _json_object(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        return {}
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return {"text": raw}  # not JSON: keep it as text rather than dropping it
    except RecursionError:
        return {}  # JSON nested deeper than the decoder goes: no content can be read from it
    return value if isinstance(value, dict) else {}


def _rfc3339(millis: int | None) -> str:
    if not millis or not 0 < millis < 10**14:  # missing or absurd: the time we saw it
        millis = int(time.time() * 1000)
    whole, fraction = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{fraction:03d}Z"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 256


def _is_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value)) and 0 <= float(value) < 1e11
    except (TypeError, ValueError):
        return False


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    return None
