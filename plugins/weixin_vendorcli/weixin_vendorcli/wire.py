"""iLink bot API shapes, snake_case as the platform sends them.

Every answer is outside input, decoded once (`backend.decode_answer`, with a size
bound) into these Structs, whose every field is optional (the platform leaves
fields out freely). The messages of a `getupdates` batch are decoded one by one
(`decode_message`), so that one malformed message never rejects its batch.
uint64 ids (`message_id`, `msg_id`, `svr_id`) may arrive as JSON numbers above
2^53: msgspec reads integers exactly, and `as_id` turns them into strings.
"""

from __future__ import annotations

from typing import Any

import msgspec

# answers larger than this are refused as garbage (a getupdates batch is far smaller)
MAX_ANSWER_BYTES = 4 * 1024 * 1024

SESSION_EXPIRED_CODE = -14  # errcode / ret: the bot token is no longer valid
REPLY_REFUSED_CODE = -2  # sendmessage ret: stale context token or too many replies

ITEM_TEXT = 1
ITEM_IMAGE = 2
ITEM_VOICE = 3
ITEM_FILE = 4
ITEM_VIDEO = 5

MESSAGE_TYPE_USER = 1
MESSAGE_TYPE_BOT = 2
MESSAGE_STATE_FINISH = 2

Id = int | str  # a uint64 as a number, or already a string


class Answer(msgspec.Struct, forbid_unknown_fields=False):
    """Fields every iLink answer may carry."""

    ret: int | None = None
    errcode: int | None = None
    errmsg: str | None = None

    @property
    def code(self) -> int:
        """The error code of the answer, 0 when it is a success (live answers carry only `errcode`)."""
        for value in (self.errcode, self.ret):
            if value:
                return value
        return 0

    @property
    def session_expired(self) -> bool:
        return SESSION_EXPIRED_CODE in (self.ret, self.errcode)


class QrCode(Answer):
    qrcode: str = ""
    qrcode_img_content: str = ""


class QrStatus(Answer):
    status: str = "wait"
    bot_token: str | None = None
    ilink_bot_id: str | None = None
    baseurl: str | None = None
    ilink_user_id: str | None = None
    redirect_host: str | None = None


class CdnMedia(msgspec.Struct, forbid_unknown_fields=False):
    encrypt_query_param: str | None = None
    aes_key: str | None = None
    encrypt_type: int | None = None
    full_url: str | None = None


class TextItem(msgspec.Struct, forbid_unknown_fields=False):
    text: str | None = None


class ImageItem(msgspec.Struct, forbid_unknown_fields=False):
    media: CdnMedia | None = None
    thumb_media: CdnMedia | None = None
    aeskey: str | None = None
    url: str | None = None
    mid_size: int | None = None
    hd_size: int | None = None
    thumb_width: int | None = None
    thumb_height: int | None = None


class VoiceItem(msgspec.Struct, forbid_unknown_fields=False):
    media: CdnMedia | None = None
    encode_type: int | None = None
    sample_rate: int | None = None
    playtime: int | None = None
    text: str | None = None


class FileItem(msgspec.Struct, forbid_unknown_fields=False):
    media: CdnMedia | None = None
    file_name: str | None = None
    md5: str | None = None
    len: Id | None = None


class VideoItem(msgspec.Struct, forbid_unknown_fields=False):
    media: CdnMedia | None = None
    thumb_media: CdnMedia | None = None
    video_size: int | None = None
    play_length: int | None = None
    video_md5: str | None = None


class RefMessage(msgspec.Struct, forbid_unknown_fields=False):
    title: str | None = None
    svr_id: Id | None = None
    message_item: MessageItem | None = None


class MessageItem(msgspec.Struct, forbid_unknown_fields=False):
    type: int | None = None
    msg_id: Id | None = None
    create_time_ms: int | None = None
    ref_msg: RefMessage | None = None
    text_item: TextItem | None = None
    image_item: ImageItem | None = None
    voice_item: VoiceItem | None = None
    file_item: FileItem | None = None
    video_item: VideoItem | None = None


class WeixinMessage(msgspec.Struct, forbid_unknown_fields=False):
    seq: int | None = None
    message_id: Id | None = None
    from_user_id: str | None = None
    to_user_id: str | None = None
    client_id: str | None = None
    create_time_ms: int | None = None
    session_id: str | None = None
    group_id: str | None = None
    message_type: int | None = None
    message_state: int | None = None
    item_list: list[MessageItem] | None = None
    context_token: str | None = None


class Updates(Answer):
    msgs: list[msgspec.Raw] | None = None  # each read on its own (`decode_message`): one bad message is not the batch
    get_updates_buf: str | None = None
    longpolling_timeout_ms: int | None = None


_MESSAGE = msgspec.json.Decoder(WeixinMessage, strict=False)


def decode_message(raw: msgspec.Raw) -> WeixinMessage:
    """One message of a `getupdates` batch. Lenient where it costs nothing (`1.78e12` or `"17"` for an
    integer); anything else raises `msgspec.ValidationError` naming the field, never its value."""
    return _MESSAGE.decode(raw)


class SendAnswer(Answer):
    message_id: Id | None = None


class OutboundText(msgspec.Struct):
    """The `msg` of a sendmessage request: one bot message, finished, text items only."""

    to_user_id: str
    client_id: str
    item_list: list[dict[str, Any]]
    from_user_id: str = ""
    message_type: int = MESSAGE_TYPE_BOT
    message_state: int = MESSAGE_STATE_FINISH
    context_token: str | msgspec.UnsetType = msgspec.UNSET  # left out when the peer's token is unknown


def text_message(to_user_id: str, client_id: str, text: str, context_token: str | None) -> OutboundText:
    return OutboundText(
        to_user_id=to_user_id,
        client_id=client_id,
        item_list=[{"type": ITEM_TEXT, "text_item": {"text": text}}],
        context_token=context_token or msgspec.UNSET,
    )


def as_id(value: Id | None) -> str | None:
    """A uint64 id as text, exactly as sent (never through a float)."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text or None
