"""JSON-RPC error codes of protocol v1 (SPEC 3.7) and the one exception that carries them."""

from __future__ import annotations

from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
REQUEST_CANCELLED = -32800
TIMED_OUT = -32001
UNAVAILABLE = -32002
TOO_LARGE = -32003
OVERLOADED = -32004
IN_PROGRESS = -32010
UNKNOWN_CONNECTION = -32011
UNSUPPORTED = -32012
VENDOR_COMMAND_FAILED = -32014
RATE_LIMITED = -32015
REPLY_WINDOW_CLOSED = -32016
SESSION_EXPIRED = -32017
FENCED = -32018
REFUSED = -32019

ERROR_NAMES: dict[int, str] = {
    PARSE_ERROR: "parse_error",
    INVALID_REQUEST: "invalid_request",
    METHOD_NOT_FOUND: "method_not_found",
    INVALID_PARAMS: "invalid_params",
    INTERNAL_ERROR: "internal_error",
    REQUEST_CANCELLED: "request_cancelled",
    TIMED_OUT: "timed_out",
    UNAVAILABLE: "plugin_unavailable",
    TOO_LARGE: "message_too_large",
    OVERLOADED: "overloaded",
    IN_PROGRESS: "in_progress",
    UNKNOWN_CONNECTION: "unknown_connection",
    UNSUPPORTED: "unsupported",
    VENDOR_COMMAND_FAILED: "vendor_command_failed",
    RATE_LIMITED: "rate_limited",
    REPLY_WINDOW_CLOSED: "reply_window_closed",
    SESSION_EXPIRED: "session_expired",
    FENCED: "fenced",
    REFUSED: "refused",
}


class RpcError(Exception):
    """A JSON-RPC error, raised locally or received from the peer."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    @property
    def name(self) -> str:
        return ERROR_NAMES.get(self.code, "rpc_error")

    def __repr__(self) -> str:
        return f"RpcError({self.code}, {self.message!r})"


class Refusal(Exception):
    """A request refused for a reason the caller can act on: the one refusal type.

    `code` is a snake_case name of the rule, `message` a sentence a user can act
    on, `details` structured data, `status` the HTTP status an API answers with,
    `headers` extra response headers (e.g. Retry-After). The admin API maps every
    Refusal, in one handler, to SPEC 7.1's `{"error": {code, message, details}}`.
    Subclasses only name where a refusal comes from (they add no fields).
    """

    def __init__(
        self,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        status: int = 400,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        self.status = status
        self.headers: dict[str, str] = dict(headers or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r}, status={self.status})"
