"""Connector sessions (`session.start` options of SPEC 9): create by QR scan, link, or a vendor installer.

Every flow runs in the background after `session.start` answers, reports with
`session.update`, and ends `connected` only after the app's id and secret got
a tenant token; credentials travel only in that last update (the host stores
them encrypted), never in a view.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import anyio
import msgspec

from plugin_host.errors import INVALID_PARAMS, RpcError
from plugin_host.protocol import TERMINAL_SESSION_STATUSES, SessionStartParams
from plugin_host.sdk import ConnectorSessionView, SessionUpdate

from .config import Account
from .connector import Feishu
from .openapi import BotInfo, PlatformError
from .registration import AppRegistration, Prompt, RegistrationError

log = logging.getLogger("feishu_vendorcli")

MAX_VENDOR_FILE_BYTES = 65536


class LinkOptions(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=False):
    mode: Literal["link"] = "link"
    app_id: str
    app_secret: str
    domain: str = "feishu"
    encrypt_key: str | None = None
    verification_token: str | None = None
    connection: Literal["webhook", "websocket"] = "websocket"


class CreateOptions(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=False):
    mode: Literal["create"] = "create"
    domain: Literal["feishu", "lark"] = "feishu"  # where the registration starts; a Lark tenant moves it


class VendorCredentials(msgspec.Struct, rename="camel", forbid_unknown_fields=False):
    app_id: str
    app_secret: str
    domain: str = "feishu"


class Session:
    """One onboarding attempt: its current view and the task that drives it."""

    def __init__(self, feishu: Feishu, params: SessionStartParams) -> None:
        self.feishu = feishu
        self.params = params
        self.view = ConnectorSessionView(
            session_id=params.session_id,
            kind=params.kind,
            status="pending",
            instructions=[],
            metadata={},
        )
        self.scope: anyio.CancelScope | None = None

    @property
    def finished(self) -> bool:
        return self.view.status in TERMINAL_SESSION_STATUSES

    async def update(self, credentials: dict[str, Any] | None = None, **changes: Any) -> None:
        if self.finished:
            return
        self.view = msgspec.structs.replace(self.view, **changes)
        fields = msgspec.structs.asdict(self.view)
        await self.feishu.plugin.host.session_update(
            SessionUpdate(**fields, connection_id=self.params.connection_id, credentials=credentials)
        )

    async def fail(self, message: str, status: str = "error") -> None:
        message = self.feishu.redact(message)
        log.warning("session %s: %s", self.params.session_id, message)
        await self.update(status=status, error=message, qr_code=None, qr_image=None)

    async def connect(self, account: Account) -> None:
        """Validate the app's credentials with the token endpoint, then hand them to the host."""
        feishu = self.feishu
        feishu.redactor.add(*account.secrets())
        try:
            base_url = feishu.config.open_base_url(account.domain)
        except ValueError as exc:
            await self.fail(str(exc))
            return
        try:
            await feishu.api.fetch_token(base_url, account.app_id, account.app_secret)
        except PlatformError as exc:
            await self.fail(f"the platform refused the app credentials (code {exc.code}): {exc.message}")
            return
        try:
            # the bot's own open_id tells mentions of the bot apart; a send works without it
            bot: BotInfo = await feishu.api.bot_info(self.params.connection_id, base_url, account)
            account = msgspec.structs.replace(account, bot_open_id=bot.open_id, bot_name=bot.name)
        except PlatformError as exc:
            log.warning("session %s: bot info unavailable: %s", self.params.session_id, feishu.redact(exc.message))
        finally:
            feishu.api.forget(self.params.connection_id)  # the connection gets its own token once served
        await self.update(
            credentials=account.credentials(),
            status="connected",
            account_id=account.app_id,
            display_name=self.params.display_name or account.bot_name or account.app_id,
            qr_code=None,
            qr_image=None,
            error=None,
            instructions=[],
            metadata={
                **self.view.metadata,
                "appId": account.app_id,
                "domain": account.domain,
                "connection": account.connection,
            },
        )


def options_for(params: SessionStartParams) -> LinkOptions | CreateOptions | dict[str, Any]:
    """The session's options, checked; -32602 with a sentence naming the problem."""
    options = dict(params.options or {})
    mode = options.get("mode", "create")
    try:
        if mode == "link":
            return msgspec.convert(options, LinkOptions)
        if mode == "create":
            return msgspec.convert(options, CreateOptions)
    except msgspec.ValidationError as exc:
        raise RpcError(INVALID_PARAMS, f"invalid options for mode {mode}: {exc}") from None
    if mode == "vendor_cli":
        return options
    raise RpcError(INVALID_PARAMS, f"options.mode must be create, link or vendor_cli, not {str(mode)[:40]!r}")


# ---------------------------------------------------------------- the three flows


async def link(session: Session, options: LinkOptions) -> None:
    if options.connection == "webhook" and not (options.encrypt_key or options.verification_token):
        await session.fail(
            "a webhook connection needs an encryptKey or a verificationToken to check the platform's requests"
        )
        return
    await session.update(status="pending", instructions=["Checking the app's credentials with the Open Platform..."])
    await session.connect(
        Account(
            app_id=options.app_id,
            app_secret=options.app_secret,
            domain=options.domain,
            encrypt_key=options.encrypt_key or None,
            verification_token=options.verification_token or None,
            connection=options.connection,
        )
    )


async def create(session: Session, options: CreateOptions) -> None:
    config = session.feishu.config
    registration = AppRegistration(
        session.feishu.http,
        session.feishu.clock,
        feishu_accounts=config.accounts_base_url,
        lark_accounts=config.lark_accounts_base_url,
        slow_down_seconds=config.slow_down_seconds,
        min_interval=config.min_poll_interval_seconds,
        timeout=config.http_timeout_seconds,
    )

    async def show(prompt: Prompt) -> None:
        app_name = "Lark" if prompt.brand == "lark" else "Feishu"
        instructions = [
            f"Scan the QR code with the {app_name} app to create the bot, then confirm on the phone.",
            f"Or open {prompt.url}",
        ]
        if prompt.user_code:
            instructions.append(f"Code: {prompt.user_code}")
        await session.update(
            status="qr_ready",
            qr_code=prompt.url,
            qr_image=None,
            instructions=instructions,
            metadata={
                "brand": prompt.brand,
                "pollIntervalSeconds": prompt.interval,
                "expiresInSeconds": round(prompt.expires_in),
            },
        )

    try:
        app = await registration.run(show, brand=options.domain)
    except RegistrationError as exc:
        await session.fail(exc.message, exc.status)
        return
    await session.update(status="confirmed", qr_code=None, qr_image=None, instructions=["Bot created; checking it..."])
    await session.connect(
        Account(app_id=app.app_id, app_secret=app.app_secret, domain=app.brand, connection="websocket")
    )


async def vendor_install(session: Session) -> None:
    """Run the admin's vendor installer; it prints progress and writes the app to `vendorCredentialsFile`.

    Output contract: a stdout line that is a JSON object may carry `status` (a
    session status) and `qrCode` (or `url`); otherwise the first http(s) URL
    printed is shown as the QR code. On exit 0 the file (JSON `{appId,
    appSecret, domain?}`, relative to stateDir) is read, deleted, and the app
    linked over the long connection.
    """
    from plugin_host.sdk import VendorCommand, VendorCommandError, VendorRunner

    feishu = session.feishu
    config = feishu.config
    try:
        command = VendorCommand.from_env(config.vendor_install_command_env)
    except VendorCommandError as exc:
        await session.fail(f"vendor_cli mode is not set up: {exc}")
        return
    state_dir = feishu.plugin.state_dir
    target = os.path.realpath(os.path.join(state_dir, config.vendor_credentials_file))
    if not target.startswith(os.path.realpath(state_dir) + os.sep):
        await session.fail("vendorCredentialsFile must stay inside the plugin's state folder")
        return
    if os.path.exists(target):
        os.unlink(target)  # only what this run writes counts
    await session.update(status="installing", instructions=["Running the vendor installer..."])

    async def progress(line: str) -> None:
        await _vendor_progress(session, line)

    try:
        await VendorRunner(state_dir).run(command, {}, timeout=config.vendor_timeout_seconds, on_stdout_line=progress)
    except RpcError as exc:
        data = exc.data if isinstance(exc.data, dict) else {}
        tail = str(data.get("stderr") or "").strip().splitlines()[-1:] or [""]
        await session.fail(f"{exc.message} {tail[0]}".strip())
        return
    try:
        with open(target, "rb") as f:
            raw = f.read(MAX_VENDOR_FILE_BYTES + 1)
        os.unlink(target)
        if len(raw) > MAX_VENDOR_FILE_BYTES:
            raise ValueError("too large")
        found = msgspec.json.decode(raw, type=VendorCredentials)
    except (OSError, ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        await session.fail(
            f"the vendor installer finished without writing the app's credentials ({type(exc).__name__})"
        )
        return
    await session.update(
        status="confirmed", qr_code=None, qr_image=None, instructions=["App installed; checking it..."]
    )
    await session.connect(
        Account(app_id=found.app_id, app_secret=found.app_secret, domain=found.domain, connection="websocket")
    )


_VENDOR_STATUSES = frozenset({"pending", "qr_ready", "scanned", "confirmed", "installing", "waiting_for_user"})


async def _vendor_progress(session: Session, line: str) -> None:
    line = line.strip()
    if not line:
        return
    if line.startswith("{"):
        try:
            message = msgspec.json.decode(line)
        except msgspec.DecodeError:
            message = None
        if isinstance(message, dict):
            status = message.get("status")
            qr = message.get("qrCode") or message.get("url")
            changes: dict[str, Any] = {}
            if isinstance(status, str) and status in _VENDOR_STATUSES:
                changes["status"] = status
            if isinstance(qr, str) and qr.startswith(("https://", "http://")) and len(qr) <= 2048:
                changes["qr_code"] = qr
                changes.setdefault("status", "qr_ready")
            if isinstance(message.get("message"), str):
                changes["instructions"] = [session.feishu.redact(message["message"])[:300]]  # masked whole, then cut
            if changes:
                await session.update(**changes)
            return
    if session.view.qr_code is None:
        for word in line.split():
            if word.startswith(("https://", "http://")) and len(word) <= 2048:
                await session.update(
                    status="qr_ready", qr_code=word, instructions=["Scan the QR code to install the bot."]
                )
                return
