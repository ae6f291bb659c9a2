"""The long connection of one app, in a process of its own: `python -m feishu_vendorcli.longconn_child`.

Why a process: `lark-oapi`'s websocket client is blocking (`Client.start()`
never returns), runs its own asyncio loop bound at import time (so one per
process), and reimplementing its undocumented protobuf protocol is what the
research note advises against. A child per app keeps all of that away from
the plugin's event loop, and stopping it is a process-group kill.

Protocol with the plugin (JSON lines):
- stdin, first line: `{"appId", "appSecret", "domain", "ackTimeout", "logLevel"}`;
  then `{"ack": seq}` for each event the host accepted.
- stdout: `{"type": "event", "seq", "payload"}` (payload: the event's JSON text),
  `{"type": "status", "status": "connected" | "reconnecting"}`,
  `{"type": "missing", "message"}` when lark-oapi is not installed,
  `{"type": "error", "message"}` before it exits on a refusal lark-oapi does not retry.
The event handler answers the platform once the plugin acknowledges (or fails the
frame after `ackTimeout`, so the platform delivers the event again).
"""

from __future__ import annotations

import json
import logging
import os
import select
import sys
import time
from typing import Any

_STDIN = 0


class AckReader:
    """Reads `{"ack": seq}` lines from stdin without threads; EOF (the plugin went away) exits."""

    def __init__(self) -> None:
        self._buffer = b""
        self._acked: set[int] = set()

    def wait(self, seq: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while seq not in self._acked:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([_STDIN], [], [], left)
            if ready:
                self.read_available()
        self._acked.discard(seq)
        return True

    def first_line(self) -> bytes:
        """The settings line, read with os.read so no buffered reader swallows later acks."""
        while b"\n" not in self._buffer:
            chunk = os.read(_STDIN, 65536)
            if not chunk:
                os._exit(0)
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def read_available(self) -> None:
        chunk = os.read(_STDIN, 65536)
        if not chunk:
            os._exit(0)  # the plugin closed our stdin: it stopped or died
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            try:
                seq = json.loads(line).get("ack")
            except (ValueError, AttributeError):
                continue
            if isinstance(seq, int):
                self._acked.add(seq)
        if len(self._acked) > 10_000:  # late acks of failed frames pile up otherwise
            self._acked.clear()


class _Out:
    protocol: Any = None  # a private copy of fd 1; fd 1 itself goes to stderr


def emit(message: dict[str, Any]) -> None:
    _Out.protocol.write(json.dumps(message, separators=(",", ":")) + "\n")
    _Out.protocol.flush()


def claim_stdout() -> None:
    """lark-oapi logs to stdout: move the protocol to a private fd and send fd 1 to stderr."""
    _Out.protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def main() -> None:
    claim_stdout()
    reader = AckReader()
    settings = json.loads(reader.first_line() or b"{}")
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    try:
        import lark_oapi as lark
        from lark_oapi.ws import client as ws_client
    except ImportError as exc:
        emit({"type": "missing", "message": f"lark-oapi is not installed ({exc.name or exc})"})
        sys.exit(3)

    ack_timeout = float(settings.get("ackTimeout") or 2.5)

    class Forwarder(lark.EventDispatcherHandler):
        """Hands each event's JSON to the plugin and answers the frame once it is accepted."""

        seq = 0

        def _do_without_validation(self, payload: bytes) -> Any:
            Forwarder.seq += 1
            emit({"type": "event", "seq": Forwarder.seq, "payload": payload.decode("utf-8", "replace")})
            if not reader.wait(Forwarder.seq, ack_timeout):
                raise TimeoutError("the plugin did not accept the event in time")  # -> a 500 frame: redelivered
            return None

        do_without_validation = _do_without_validation  # the name older lark-oapi versions call

    class Client(lark.ws.Client):
        async def _connect(self) -> None:
            await super()._connect()
            if getattr(self, "_conn", None) is not None:
                emit({"type": "status", "status": "connected"})

    level = getattr(lark.LogLevel, str(settings.get("logLevel") or "WARNING").upper(), lark.LogLevel.WARNING)
    client = Client(
        settings["appId"],
        settings["appSecret"],
        event_handler=Forwarder(),
        domain=settings["domain"],
        log_level=level,
    )
    client.on_reconnecting = lambda: emit({"type": "status", "status": "reconnecting"})
    # between frames, the loop watches stdin so that the child ends with the plugin
    ws_client.loop.add_reader(_STDIN, reader.read_available)
    try:
        client.start()
    except Exception as exc:  # a refusal lark-oapi does not retry (bad credentials, too many connections)
        emit({"type": "error", "message": error_message(exc, settings["appSecret"])})
        sys.exit(2)


def error_message(exc: BaseException, secret: str, limit: int = 500) -> str:
    """The failure for the plugin to report: the app secret masked first, then cut (the plugin redacts again)."""
    text = f"{type(exc).__name__}: {exc}"
    return (text.replace(secret, "[REDACTED]") if secret else text)[:limit]


if __name__ == "__main__":
    main()
