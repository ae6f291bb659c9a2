"""Mode `vendor_cli`: login, receive and send delegated to admin-configured vendor commands.

The contract (README "vendor_cli mode" has the full table):
- each command template comes from an environment variable named in the config
  (`vendorCommands.login|receive|send|logout`, SPEC 5.6) and is run through the
  SDK's vendor runner: argv from the template, no shell, cwd stateDir, a hard
  timeout, the process group killed, stdout and stderr redacted and kept as logs;
- the request is one JSON object on stdin: `{"op": ..., "answer_file": ..., ...}`
  with the fields of the iLink request it stands for; the placeholders `{op}`
  and `{answerFile}` may also be used in the template;
- the command writes its answer, one JSON object shaped like the iLink answer
  (`ret`/`errcode`/`errmsg` included), to `answer_file` and exits 0. The answer
  travels through a private file because stdout is redacted, and answers carry
  tokens (`bot_token`, `context_token`, `get_updates_buf`);
- a non-zero exit, a timeout or a missing or malformed answer is a failure
  (-32014 for the command itself), handled like a network error.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import msgspec

from plugin_host.errors import VENDOR_COMMAND_FAILED, RpcError
from plugin_host.sdk.vendor import VendorCommand, VendorCommandError, VendorRunner

from .accounts import Credentials
from .backend import TransportError, decode_answer
from .config import WeixinConfig, seconds
from .wire import MAX_ANSWER_BYTES, Answer, OutboundText, QrCode, QrStatus, SendAnswer, Updates

ANSWER_DIR = "vendor-answers"
_GRACE = 10.0  # a command may take this much longer than the platform call it stands for

log = logging.getLogger(__name__)


class VendorCli:
    def __init__(self, config: WeixinConfig, runner: VendorRunner) -> None:
        self.config = config
        self.runner = runner
        self._answers = os.path.join(runner.cwd, ANSWER_DIR)

    async def aclose(self) -> None:
        return None

    async def get_qrcode(self, base_url: str, local_tokens: list[str]) -> QrCode:
        request = {"base_url": base_url, "bot_type": "3", "local_token_list": local_tokens}
        timeout = seconds(self.config.api_timeout_ms) + _GRACE
        return await self._run("login", "get_bot_qrcode", request, QrCode, timeout, secrets=local_tokens)

    async def qrcode_status(self, base_url: str, qrcode: str, verify_code: str | None) -> QrStatus | None:
        request = {"base_url": base_url, "qrcode": qrcode, "verify_code": verify_code}
        timeout = seconds(self.config.qr_poll_timeout_ms) + _GRACE
        return await self._run("login", "get_qrcode_status", request, QrStatus, timeout, secrets=[qrcode])

    async def get_updates(self, account: Credentials, cursor: str, timeout: float) -> Updates:
        request = {"account": _account(account), "get_updates_buf": cursor, "timeout_ms": int(timeout * 1000)}
        return await self._run("receive", "getupdates", request, Updates, timeout + _GRACE, secrets=[account.bot_token])

    async def send_message(self, account: Credentials, msg: OutboundText) -> SendAnswer:
        request = {"account": _account(account), "msg": msg}
        timeout = seconds(self.config.api_timeout_ms) + _GRACE
        return await self._run("send", "sendmessage", request, SendAnswer, timeout, secrets=[account.bot_token])

    async def notify(self, account: Credentials, event: str) -> None:
        """Only `notifystop` (logout or stop) has a vendor command, and it is optional."""
        if event != "notifystop" or not os.environ.get(self.config.vendor_commands.logout, "").strip():
            return
        timeout = seconds(self.config.api_timeout_ms) + _GRACE
        await self._run(
            "logout", "logout", {"account": _account(account)}, Answer, timeout, secrets=[account.bot_token]
        )

    async def _run(
        self,
        which: str,
        op: str,
        request: dict[str, Any],
        answer_type: type[Any],
        timeout: float,
        *,
        secrets: list[str],
    ) -> Any:
        env_name = getattr(self.config.vendor_commands, which)
        try:
            command = VendorCommand.from_env(env_name)
        except VendorCommandError as exc:
            raise TransportError(str(exc), code=VENDOR_COMMAND_FAILED, data={"exitCode": None, "stderr": ""}) from None
        os.makedirs(self._answers, mode=0o700, exist_ok=True)
        fd, answer_file = tempfile.mkstemp(prefix=f"{op}-", suffix=".json", dir=self._answers)
        os.close(fd)
        try:
            payload = msgspec.json.encode({"op": op, "answer_file": answer_file, **request})
            try:
                result = await self.runner.run(
                    command, {"op": op, "answerFile": answer_file}, timeout=timeout, secrets=secrets, input=payload
                )
            except VendorCommandError as exc:
                raise TransportError(
                    str(exc), code=VENDOR_COMMAND_FAILED, data={"exitCode": None, "stderr": ""}
                ) from None
            except RpcError as exc:  # -32014: failed, timed out or could not start (stderr already redacted)
                raise TransportError(exc.message, code=exc.code, data=exc.data) from None
            if result.stderr.strip():
                log.debug("vendor command %s (%s) said: %s", env_name, op, result.stderr[-500:])
            body = _read_bounded(answer_file)
        finally:
            try:
                os.unlink(answer_file)
            except FileNotFoundError:
                pass
        if not body.strip():
            raise TransportError(f"vendor command {env_name} ({op}) wrote no answer to its answer file")
        try:
            return decode_answer(body, answer_type)
        except TransportError as exc:
            raise TransportError(f"vendor command {env_name} ({op}): {exc.message}") from None


def _account(account: Credentials) -> dict[str, Any]:
    return {
        "bot_token": account.bot_token,
        "ilink_bot_id": account.ilink_bot_id,
        "baseurl": account.base_url,
        "ilink_user_id": account.ilink_user_id,
    }


def _read_bounded(path: str) -> bytes:
    with open(path, "rb") as f:
        body = f.read(MAX_ANSWER_BYTES + 1)
    if len(body) > MAX_ANSWER_BYTES:
        raise TransportError(f"vendor answer is over {MAX_ANSWER_BYTES} bytes")
    return body
