"""The admin config of the plugin (its `configSchema`) and the per-connection account."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

FEISHU_OPEN = "https://open.feishu.cn"
LARK_OPEN = "https://open.larksuite.com"
FEISHU_ACCOUNTS = "https://accounts.feishu.cn"
LARK_ACCOUNTS = "https://accounts.larksuite.com"
VENDOR_INSTALL_ENV = "FEISHU_VENDOR_INSTALL_COMMAND"
# floors, also the configSchema's minimums: no setting makes a loop run hot
MIN_POLL_INTERVAL_SECONDS = 0.1
MIN_RECONNECT_SECONDS = 0.05

ConnectionMode = Literal["webhook", "websocket"]


class FeishuConfig(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=False):
    """Admin config; every key has a default, so an empty config works against the real platform."""

    feishu_base_url: str = FEISHU_OPEN
    lark_base_url: str = LARK_OPEN
    accounts_base_url: str = FEISHU_ACCOUNTS  # the app-registration (device flow) host
    lark_accounts_base_url: str = LARK_ACCOUNTS
    timestamp_window_seconds: float = 300.0
    token_refresh_margin_seconds: float = 600.0
    http_timeout_seconds: float = 10.0
    # the text of one message, as the IM API measures it (the request body, 150 KB)
    text_limit_bytes: int = 150 * 1024
    slow_down_seconds: float = 5.0
    min_poll_interval_seconds: float = 1.0
    reconnect_initial_seconds: float = 1.0
    reconnect_max_seconds: float = 60.0
    event_ack_timeout_seconds: float = 2.5
    vendor_install_command_env: str = VENDOR_INSTALL_ENV
    vendor_timeout_seconds: float = 900.0
    vendor_credentials_file: str = "feishu-app.json"

    @classmethod
    def load(cls, config: dict[str, Any]) -> FeishuConfig:
        loaded = msgspec.convert(config or {}, cls)
        loaded.min_poll_interval_seconds = max(loaded.min_poll_interval_seconds, MIN_POLL_INTERVAL_SECONDS)
        loaded.reconnect_initial_seconds = max(loaded.reconnect_initial_seconds, MIN_RECONNECT_SECONDS)
        loaded.reconnect_max_seconds = max(loaded.reconnect_max_seconds, loaded.reconnect_initial_seconds)
        return loaded

    def open_base_url(self, domain: str) -> str:
        """`feishu` | `lark` | an http(s):// base URL -> the Open Platform base URL."""
        if domain == "feishu":
            return self.feishu_base_url.rstrip("/")
        if domain == "lark":
            return self.lark_base_url.rstrip("/")
        if domain.startswith(("http://", "https://")):
            return domain.rstrip("/")
        raise ValueError(f"domain must be feishu, lark or an http(s):// base URL, not {domain!r}")


class Account(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=False):
    """One linked app, as kept in the connection's credentials (the host stores them encrypted)."""

    app_id: str
    app_secret: str
    domain: str = "feishu"
    encrypt_key: str | None = None
    verification_token: str | None = None
    connection: ConnectionMode = "websocket"
    bot_open_id: str | None = None
    bot_name: str | None = None

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.app_secret, self.encrypt_key, self.verification_token) if s)

    def credentials(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)
