"""The plugin's admin config (validated by the host against `configSchema` in plugin.json).

Timeouts are in milliseconds and configurable so that tests (and slow networks)
can shorten or stretch them; the defaults are the vendor's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec

DEFAULT_BASE_URL = "https://ilinkai.weixin.qq.com"
MANIFEST = Path(__file__).resolve().parent.parent / "plugin.json"
MIN_QR_POLL_INTERVAL_MS = 100  # also the configSchema's minimum: a status poll never runs hot
MIN_RETRY_DELAY_MS = 100
# the platform's reply limits, when the manifest's limits.outbound does not name them
PLATFORM_MIN_INTERVAL_MS = 1_000
PLATFORM_MAX_REPLIES = 10


class VendorCommands(msgspec.Struct, rename="camel", forbid_unknown_fields=False):
    """Names of the environment variables holding each vendor command template (SPEC 5.6)."""

    login: str = "WEIXIN_VENDOR_LOGIN_COMMAND"
    receive: str = "WEIXIN_VENDOR_RECEIVE_COMMAND"
    send: str = "WEIXIN_VENDOR_SEND_COMMAND"
    logout: str = "WEIXIN_VENDOR_LOGOUT_COMMAND"


class WeixinConfig(msgspec.Struct, rename="camel", forbid_unknown_fields=False):
    base_url: str = DEFAULT_BASE_URL
    mode: Literal["native", "vendor_cli"] = "native"
    vendor_commands: VendorCommands = msgspec.field(default_factory=VendorCommands)
    bot_agent: str = "channel-runtime/1.0"  # base_info.bot_agent: who we are (User-Agent style)
    # the iLink client level this plugin speaks: the vendor plugin release whose wire it follows
    client_version: str = "2.4.9"
    poll_timeout_ms: int = 35_000  # getupdates long poll (the server may ask for another)
    qr_poll_timeout_ms: int = 35_000  # one get_qrcode_status long poll
    qr_poll_interval_ms: int = 1_000  # pause between two status polls
    login_timeout_ms: int = 480_000  # the whole QR login
    api_timeout_ms: int = 15_000  # sendmessage and the other short calls
    retry_delay_ms: int = 2_000  # after a failed poll
    backoff_ms: int = 30_000  # after `failures_before_backoff` failed polls in a row
    failures_before_backoff: int = 3
    session_pause_ms: int = 3_600_000  # after -14: poll again with the same token once this has passed
    text_chunk_chars: int = 4_000  # the vendor's textChunkLimit
    # the parts of one long reply: at most this many, this far apart (default: the manifest's limits.outbound)
    part_interval_ms: int | None = None
    max_parts: int | None = None


class _Outbound(msgspec.Struct, rename="camel", forbid_unknown_fields=False):
    min_interval_ms: int = PLATFORM_MIN_INTERVAL_MS
    max_replies_per_inbound: int = PLATFORM_MAX_REPLIES


class _Limits(msgspec.Struct, forbid_unknown_fields=False):
    outbound: _Outbound = msgspec.field(default_factory=_Outbound)


class _Manifest(msgspec.Struct, forbid_unknown_fields=False):
    limits: _Limits = msgspec.field(default_factory=_Limits)


def load_config(raw: dict[str, Any], manifest: Path = MANIFEST) -> WeixinConfig:
    config = msgspec.convert(raw or {}, WeixinConfig)
    config.base_url = config.base_url.rstrip("/")
    # the host validates against the configSchema's minimums; these hold whoever builds the config
    config.qr_poll_interval_ms = max(config.qr_poll_interval_ms, MIN_QR_POLL_INTERVAL_MS)
    config.retry_delay_ms = max(config.retry_delay_ms, MIN_RETRY_DELAY_MS)
    config.backoff_ms = max(config.backoff_ms, config.retry_delay_ms)
    if config.part_interval_ms is None or config.max_parts is None:
        outbound = _manifest_outbound(manifest)
        if config.part_interval_ms is None:
            config.part_interval_ms = outbound.min_interval_ms
        if config.max_parts is None:
            config.max_parts = outbound.max_replies_per_inbound
    config.max_parts = max(config.max_parts, 1)
    return config


def _manifest_outbound(path: Path) -> _Outbound:
    """The budget this plugin declares (one place for the platform's numbers); the platform's without one."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=_Manifest).limits.outbound
    except (OSError, msgspec.DecodeError):
        return _Outbound()


def seconds(ms: int) -> float:
    return max(ms, 0) / 1000
