"""Platform payloads as the Open Platform sends them (shapes from its docs and lark-oapi's models)."""

from __future__ import annotations

import json
from typing import Any

BOT_OPEN_ID = "ou_bot0001"
APP_ID = "cli_fake0001"


def message_event(
    *,
    event_id: str = "ev_0001",
    message_id: str = "om_0001",
    chat_type: str = "p2p",
    chat_id: str = "oc_chat0001",
    sender: str = "ou_user0001",
    message_type: str = "text",
    content: Any = None,
    thread_id: str | None = None,
    root_id: str | None = None,
    mentions: list[dict[str, Any]] | None = None,
    token: str = "verif-token-1",
    sender_type: str = "user",
) -> dict[str, Any]:
    if content is None:
        content = {"text": "hello"}
    message: dict[str, Any] = {
        "message_id": message_id,
        "root_id": root_id or "",
        "parent_id": root_id or "",
        "create_time": "1780000000123",
        "chat_id": chat_id,
        "chat_type": chat_type,
        "message_type": message_type,
        "content": json.dumps(content),
        "mentions": mentions or [],
    }
    if thread_id:
        message["thread_id"] = thread_id
    return {
        "schema": "2.0",
        "header": {
            "event_id": event_id,
            "token": token,
            "create_time": "1780000000200",
            "event_type": "im.message.receive_v1",
            "tenant_key": "tk_1",
            "app_id": APP_ID,
        },
        "event": {
            "sender": {
                "sender_id": {"open_id": sender, "union_id": "on_u1", "user_id": "u1"},
                "sender_type": sender_type,
                "tenant_key": "tk_1",
            },
            "message": message,
        },
    }


def bot_mention(key: str = "@_user_1") -> dict[str, Any]:
    return {
        "key": key,
        "id": {"open_id": BOT_OPEN_ID, "union_id": "on_bot", "user_id": ""},
        "name": "Fake Bot",
        "tenant_key": "tk_1",
    }


def v1_message(*, uuid: str = "v1-uuid-1", token: str = "verif-token-1", chat_type: str = "group") -> dict[str, Any]:
    return {
        "ts": "1780000000.5",
        "uuid": uuid,
        "token": token,
        "type": "event_callback",
        "event": {
            "type": "message",
            "app_id": APP_ID,
            "tenant_key": "tk_1",
            "root_id": "",
            "parent_id": "",
            "open_chat_id": "oc_chat0002",
            "chat_type": chat_type,
            "msg_type": "text",
            "open_id": "ou_user0002",
            "union_id": "on_u2",
            "open_message_id": "om_v1_0001",
            "is_mention": True,
            "text": '<at open_id="ou_bot0001">@Fake Bot</at> hi there',
            "text_without_at_bot": " hi there",
        },
    }


def bot_added(*, event_id: str = "ev_added_1", token: str = "verif-token-1") -> dict[str, Any]:
    return {
        "schema": "2.0",
        "header": {
            "event_id": event_id,
            "token": token,
            "create_time": "1780000000000",
            "event_type": "im.chat.member.bot.added_v1",
            "tenant_key": "tk_1",
            "app_id": APP_ID,
        },
        "event": {"chat_id": "oc_new", "name": "New group", "operator_id": {"open_id": "ou_op"}},
    }


def url_verification(token: str = "verif-token-1", challenge: str = "chal-123") -> dict[str, Any]:
    return {"challenge": challenge, "token": token, "type": "url_verification"}
