"""A received Weixin message as a `BridgeEvent`: dedupe key, typed content, media references.

- text items are the content (several are joined by a newline);
- a voice item's transcript is the content, `messageType: voice`;
- image, file and video items are typed (`messageType` of the first one when
  there is no text) with their CDN references in `metadata.media`;
- anything else is kept in `metadata.items` and typed `unknown`: nothing is dropped.
The vendor treats every message as a direct message, so `peerType` is `dm`.

Every event fits in one protocol message (`maxMessageBytes`, 512 KiB), whatever the
platform sent: a media string over `MAX_FIELD_CHARS` is left out (its name listed in
the entry's `omitted`), at most `MAX_ITEMS` items are described, and an event still
over `EVENT_BUDGET` sheds item descriptions, then media entries, then content.
"""

from __future__ import annotations

import datetime
from typing import Any

import msgspec

from plugin_host.protocol import BridgeEvent

from .wire import (
    ITEM_FILE,
    ITEM_IMAGE,
    ITEM_TEXT,
    ITEM_VIDEO,
    ITEM_VOICE,
    CdnMedia,
    MessageItem,
    RefMessage,
    WeixinMessage,
    as_id,
)

MEDIA_TYPES = {ITEM_IMAGE: "image", ITEM_VOICE: "voice", ITEM_FILE: "file", ITEM_VIDEO: "video"}
MAX_CONTENT_CHARS = 100_000  # a platform text is far smaller; a larger one is cut, never refused
MAX_ITEMS = 50  # media and other items described in metadata; beyond that they are counted
MAX_FIELD_CHARS = 4096  # a URL, key or file name longer than this is no usable reference: left out
EVENT_BUDGET = 480 * 1024  # an event's JSON, below maxMessageBytes (512 KiB) with room for the request around it


def dedupe_key(message: WeixinMessage) -> str | None:
    """Stable across redeliveries: `message_id`, else `client_id`, else `seq`; None when none is there."""
    message_id = as_id(message.message_id)
    if message_id:
        return f"m:{message_id}"
    if message.client_id:
        return f"c:{message.client_id}"
    if message.seq is not None:
        return f"s:{message.seq}"
    return None


def to_event(
    message: WeixinMessage, key: str, *, connection_id: str, channel_id: str, account_id: str, now: float
) -> BridgeEvent:
    message_type, content, media, others = _content(message.item_list or [])
    metadata: dict[str, Any] = {
        "seq": message.seq,
        "clientId": message.client_id,
        "sessionId": message.session_id,
        "groupId": message.group_id,
        "createTimeMs": message.create_time_ms,
        "messageState": message.message_state,
        "media": media,
    }
    quote = _quote(message.item_list or [])
    if quote is not None:
        metadata["quote"] = quote
    if len(media) > MAX_ITEMS:
        metadata["media"] = media[:MAX_ITEMS]
        metadata["mediaOmitted"] = len(media) - MAX_ITEMS
    if others:
        metadata["items"] = others[:MAX_ITEMS]
    sender = message.from_user_id or ""
    event = BridgeEvent(
        event_id=f"wx:{key}",
        timestamp=_timestamp(message.create_time_ms, now),
        delivery_attempt=1,
        connection_id=connection_id,
        channel_id=channel_id,
        kind="weixin",
        account_id=account_id,
        peer_id=sender,
        peer_type="dm",
        user_id=sender or None,
        message_id=as_id(message.message_id) or key,
        message_type=message_type,
        content=content[:MAX_CONTENT_CHARS],
        metadata={k: v for k, v in metadata.items() if v is not None},
    )
    return _fit(event)


def _fit(event: BridgeEvent) -> BridgeEvent:
    """The event within `EVENT_BUDGET`: item descriptions go first, then media entries (counted), then content."""
    over = len(msgspec.json.encode(event)) - EVENT_BUDGET
    if over <= 0:
        return event
    metadata = dict(event.metadata)
    for field in ("items", "quote"):
        if field in metadata:
            over -= len(msgspec.json.encode(metadata.pop(field)))
            metadata[f"{field}Omitted"] = True
    media = list(metadata.get("media") or [])
    while over > 0 and media:
        over -= len(msgspec.json.encode(media.pop()))
        metadata["mediaOmitted"] = metadata.get("mediaOmitted", 0) + 1
    metadata["media"] = media
    event = msgspec.structs.replace(event, metadata=metadata)
    over = len(msgspec.json.encode(event)) - EVENT_BUDGET  # the counters and flags took a few bytes
    if over > 0:  # every character is at least one byte of JSON: cutting `over` of them is enough
        metadata["contentTruncated"] = True
        event = msgspec.structs.replace(event, content=event.content[: max(0, len(event.content) - over - 64)])
    return event


def _content(items: list[MessageItem]) -> tuple[str, str, list[dict[str, Any]], list[dict[str, Any]]]:
    texts: list[str] = []
    transcripts: list[str] = []
    media: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for item in items:
        if item.type == ITEM_TEXT:
            if item.text_item is not None and item.text_item.text:
                texts.append(item.text_item.text)
        elif item.type in MEDIA_TYPES:
            entry = _media(item)
            media.append(entry)
            if item.type == ITEM_VOICE and entry.get("transcript"):
                transcripts.append(entry["transcript"])
        else:
            other = {"type": item.type, "msgId": as_id(item.msg_id)}
            others.append({k: v for k, v in other.items() if v is not None})
    if texts:
        return "text", "\n".join(texts), media, others
    if transcripts or (media and media[0]["type"] == "voice"):
        return "voice", "\n".join(transcripts), media, others
    if media:
        first = media[0]
        label = f"[{first['type']}: {first['fileName']}]" if first.get("fileName") else f"[{first['type']}]"
        return first["type"], label, media, others
    return ("unknown" if others else "text"), "", media, others


def _media(item: MessageItem) -> dict[str, Any]:
    kind = MEDIA_TYPES[item.type or 0]
    entry: dict[str, Any] = {"type": kind, "msgId": as_id(item.msg_id)}
    if item.type == ITEM_IMAGE and item.image_item is not None:
        image = item.image_item
        entry.update(
            media=_cdn(image.media),
            thumb=_cdn(image.thumb_media),
            aesKey=image.aeskey,
            url=image.url,
            size=image.hd_size or image.mid_size,
            width=image.thumb_width,
            height=image.thumb_height,
        )
    elif item.type == ITEM_VOICE and item.voice_item is not None:
        voice = item.voice_item
        entry.update(
            media=_cdn(voice.media),
            transcript=voice.text,
            encodeType=voice.encode_type,
            sampleRate=voice.sample_rate,
            durationMs=voice.playtime,
        )
    elif item.type == ITEM_FILE and item.file_item is not None:
        file = item.file_item
        entry.update(media=_cdn(file.media), fileName=file.file_name, md5=file.md5, size=as_id(file.len))
    elif item.type == ITEM_VIDEO and item.video_item is not None:
        video = item.video_item
        entry.update(
            media=_cdn(video.media),
            thumb=_cdn(video.thumb_media),
            size=video.video_size,
            durationMs=video.play_length,
            md5=video.video_md5,
        )
    return _bounded({k: v for k, v in entry.items() if v is not None})


def _bounded(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry without strings too long to be a reference; their names go in `omitted`."""
    omitted: list[str] = []
    for name, value in list(entry.items()):
        if isinstance(value, dict):
            inner = _bounded(value)
            omitted += [f"{name}.{n}" for n in inner.pop("omitted", [])]
            entry[name] = inner
        elif isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
            del entry[name]
            omitted.append(name)
    if omitted:
        entry["omitted"] = omitted
    return entry


def _cdn(media: CdnMedia | None) -> dict[str, Any] | None:
    if media is None:
        return None
    ref = {
        "encryptQueryParam": media.encrypt_query_param,
        "aesKey": media.aes_key,
        "encryptType": media.encrypt_type,
        "fullUrl": media.full_url,
    }
    return {k: v for k, v in ref.items() if v is not None} or None


def _quote(items: list[MessageItem]) -> dict[str, Any] | None:
    ref: RefMessage | None = next((i.ref_msg for i in items if i.ref_msg is not None), None)
    if ref is None:
        return None
    quote: dict[str, Any] = {"title": ref.title, "svrId": as_id(ref.svr_id)}
    quoted = ref.message_item
    if quoted is not None:
        quote["type"] = MEDIA_TYPES.get(quoted.type or 0, "text" if quoted.type == ITEM_TEXT else quoted.type)
        if quoted.text_item is not None:
            quote["text"] = quoted.text_item.text
    return {k: v for k, v in quote.items() if v is not None}


def _timestamp(create_time_ms: int | None, now: float) -> str:
    seconds = create_time_ms / 1000 if create_time_ms and 0 < create_time_ms < 32_503_680_000_000 else now
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
