"""What the plugin needs from the platform, whichever way it is reached.

`IlinkHttp` (mode `native`) speaks the iLink bot API over HTTP; `VendorCli`
(mode `vendor_cli`) runs admin-configured vendor commands that speak the same
JSON. Login, receive and send logic is written once against this interface.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from plugin_host.errors import INTERNAL_ERROR

from .accounts import Credentials
from .wire import MAX_ANSWER_BYTES, Answer, OutboundText, QrCode, QrStatus, SendAnswer, Updates

MAX_RETRY_AFTER_SECONDS = 3600  # a rate limit's wait is 1 s to an hour, whatever the platform says


class TransportError(Exception):
    """No usable answer: network failure, HTTP error status, failed command, or garbage.

    Its message is safe to log and to show (never a token). `code` is the
    JSON-RPC code to answer when the failure ends a request (-32014 for a
    failed vendor command, with its `data`).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: int | None = None,
        code: int = INTERNAL_ERROR,
        data: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.code = code
        self.data = data


class Backend(Protocol):
    async def get_qrcode(self, base_url: str, local_tokens: list[str]) -> QrCode: ...

    async def qrcode_status(self, base_url: str, qrcode: str, verify_code: str | None) -> QrStatus | None: ...

    async def get_updates(self, account: Credentials, cursor: str, timeout: float) -> Updates: ...

    async def send_message(self, account: Credentials, msg: OutboundText) -> SendAnswer: ...

    async def notify(self, account: Credentials, event: str) -> None: ...

    async def aclose(self) -> None: ...


_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {}


def decode_answer(body: bytes, answer_type: type[Answer]) -> Any:
    """One platform answer as `answer_type`; a `TransportError` for anything else."""
    if len(body) > MAX_ANSWER_BYTES:
        raise TransportError(f"answer of {len(body)} bytes is over the {MAX_ANSWER_BYTES} byte limit")
    decoder = _DECODERS.get(answer_type)
    if decoder is None:
        decoder = _DECODERS[answer_type] = msgspec.json.Decoder(answer_type)
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:  # JSON, wrong shape: the message names the path, never a value
        raise TransportError(f"{answer_type.__name__} answer of the wrong shape: {exc}") from None
    except (
        msgspec.DecodeError,
        ValueError,
    ):  # HTML, truncated or empty: the body is never quoted (it may hold a token)
        raise TransportError(f"{answer_type.__name__} answer is not JSON ({len(body)} bytes)") from None
    except RecursionError:  # nested deeper than the decoder goes
        raise TransportError(f"{answer_type.__name__} answer is nested too deeply ({len(body)} bytes)") from None
