"""The long-poll loop of one account: `getupdates` → dedupe → `event.inbound`, cursor in host state.

- A batch is committed in this order: per peer (peers in parallel) its newest
  context token, then its events in order; then the dedupe window, then the cursor.
  A crash in between redelivers; the dedupe window and the host's own dedupe
  (stable `eventId`) answer the redelivery once.
- `-14` (session expired): `connection.status` `error` / `session_expired`, sends
  answer -32017, and the loop sleeps `sessionPauseMs` before trying the same
  token once more (the vendor's hour); a fresh login replaces the loop.
- Other failures (network, HTTP status, garbage, host errors, and anything
  unexpected): retry after `retryDelayMs`, and after `failuresBeforeBackoff` in a
  row wait `backoffMs`. Nothing here ends the loop except cancellation or the
  host forgetting the connection.
- The messages of a batch are read one by one: a malformed one is logged,
  counted and skipped, and the cursor moves on.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Protocol

import anyio
import msgspec

from plugin_host.clock import Clock
from plugin_host.errors import INVALID_PARAMS, TOO_LARGE, UNKNOWN_CONNECTION, RpcError
from plugin_host.protocol import BridgeEvent, ConnectionStatus, InboundAck

from .accounts import Account, SeenWindow
from .backend import Backend, TransportError
from .config import WeixinConfig, seconds
from .inbound import dedupe_key, to_event
from .wire import MESSAGE_TYPE_BOT, Updates, WeixinMessage, decode_message

SESSION_EXPIRED_REASON = "session_expired"
_EMPTY_POLL_FLOOR = 0.25  # an empty answer faster than this waits the rest: a broken server cannot make us spin
_HINT_RANGE = (1.0, 300.0)  # bounds of the server's `longpolling_timeout_ms`, in seconds
_UNDELIVERABLE = frozenset({INVALID_PARAMS, TOO_LARGE})  # answers about the event itself, not the moment

log = logging.getLogger(__name__)


class Host(Protocol):
    async def inbound(self, event: BridgeEvent) -> InboundAck: ...

    async def connection_status(
        self, connection_id: str, status: ConnectionStatus, error: str | None = None
    ) -> None: ...


class ConnectionGone(Exception):
    """The host no longer knows this connection: receiving for it is pointless."""


class Receiver:
    def __init__(self, account: Account, backend: Backend, config: WeixinConfig, clock: Clock, host: Host) -> None:
        self.account = account
        self.backend = backend
        self.config = config
        self.clock = clock
        self.host = host
        self.malformed = 0  # messages skipped because they could not be read
        self._failures = 0

    async def run(self) -> None:
        account = self.account
        try:
            cursor, seen = await self._load()
            timeout = seconds(self.config.poll_timeout_ms)
            while True:
                try:
                    cursor, timeout = await self._poll_once(cursor, seen, timeout)
                except ConnectionGone:
                    raise
                except Exception as exc:  # a bug or an odd answer: this poll failed, the loop lives on
                    _raise_if_gone(exc)
                    await self._failed(f"the poll failed: {self._describe_unexpected(exc)}")
        except ConnectionGone:
            log.warning(
                "account %s: the host no longer knows connection %s; receiving stopped",
                account.account_id,
                account.connection_id,
            )

    async def _poll_once(self, cursor: str, seen: SeenWindow, timeout: float) -> tuple[str, float]:
        """One long poll and its batch; the cursor and poll timeout to go on with."""
        account = self.account
        retrying = account.status == "expired"
        if retrying:
            await self.clock.sleep(seconds(self.config.session_pause_ms))
        started = self.clock.monotonic()
        try:
            updates = await self.backend.get_updates(account.credentials, cursor, timeout)
        except TransportError as exc:
            await self._failed(exc.message)
            return cursor, timeout
        if updates.session_expired:
            await self.expired()
            return cursor, timeout
        if updates.code:
            await self._failed(f"getupdates answered {updates.code}: {account.scrub(updates.errmsg or '', 200)}")
            return cursor, timeout
        self._failures = 0
        if retrying and account.status == "expired":  # the same token works again after the pause
            account.status = "connected"
            await self.host.connection_status(account.connection_id, "connected")
        timeout = _hinted(updates, timeout)
        try:
            delivered = await self._commit(updates, seen, cursor)
        except Exception as exc:  # the host was unavailable: the same cursor is polled again
            _raise_if_gone(exc)
            await self._failed(f"delivering to the host failed: {_describe(exc)}")
            return cursor, timeout
        cursor = updates.get_updates_buf or cursor
        if not delivered and self.clock.monotonic() - started < _EMPTY_POLL_FLOOR:
            await self.clock.sleep(_EMPTY_POLL_FLOOR)
        return cursor, timeout

    def _describe_unexpected(self, exc: BaseException) -> str:
        # no traceback: its text may quote a token; the type and the scrubbed message name the failure
        return self.account.scrub(f"{type(exc).__name__}: {exc}", 200)

    async def expired(self) -> None:
        """The session expired (-14 here or on a send): report it once and pause polling."""
        if self.account.status == "expired":
            return
        self.account.status = "expired"
        log.warning(
            "account %s: the Weixin session expired (-14); polling paused until a new login", self.account.account_id
        )
        await self.host.connection_status(self.account.connection_id, "error", SESSION_EXPIRED_REASON)

    # ---------------------------------------------------------------- steps

    async def _load(self) -> tuple[str, SeenWindow]:
        while True:
            try:
                return await self.account.load_cursor(), await self.account.load_seen()
            except Exception as exc:
                _raise_if_gone(exc)
                await self._failed(f"reading the cursor from the host failed: {_describe(exc)}")

    async def _commit(self, updates: Updates, seen: SeenWindow, cursor: str) -> int:
        account = self.account
        batch: dict[str, list[tuple[str, WeixinMessage]]] = {}
        tokens: dict[str, str] = {}
        keys: set[str] = set()
        for position, raw in enumerate(updates.msgs or ()):
            message = self._read_message(raw, position)
            if message is None or message.message_type == MESSAGE_TYPE_BOT:
                continue  # unreadable, or our own message echoed back
            peer = message.from_user_id
            if not peer:
                log.warning("account %s: a message without a sender was skipped", account.account_id)
                continue
            if message.context_token:
                tokens[peer] = message.context_token
            key = dedupe_key(message) or _content_key(message)
            if key in seen or key in keys:
                continue
            keys.add(key)
            batch.setdefault(peer, []).append((key, message))
        if tokens or batch:
            await self._deliver(batch, tokens, seen)
        if batch:
            await account.save_seen(seen)
        if updates.get_updates_buf and updates.get_updates_buf != cursor:
            await account.save_cursor(updates.get_updates_buf)
        return len(keys)

    def _read_message(self, raw: msgspec.Raw, position: int) -> WeixinMessage | None:
        """One message of a batch, read on its own: a malformed one is skipped, never the batch."""
        try:
            return decode_message(raw)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
            self.malformed += 1
            # the error names the path of the bad field, never a value
            log.warning(
                "account %s: message %d of a batch is malformed and skipped (%s; %d skipped so far)",
                self.account.account_id,
                position,
                str(exc)[:200],
                self.malformed,
            )
            return None

    async def _deliver(
        self, batch: dict[str, list[tuple[str, WeixinMessage]]], tokens: dict[str, str], seen: SeenWindow
    ) -> None:
        """Per peer, in parallel: its newest context token, then its messages in order."""
        failures: list[Exception] = []

        async def conversation(peer: str) -> None:
            try:
                token = tokens.get(peer)
                if token is not None:
                    await self.account.save_context_token(peer, token)
                for key, message in batch.get(peer, ()):
                    await self._deliver_one(key, message)
                    seen.add(key)
            except Exception as exc:
                failures.append(exc)

        async with anyio.create_task_group() as tg:
            for peer in batch.keys() | tokens.keys():
                tg.start_soon(conversation, peer)
        if failures:
            raise failures[0]

    async def _deliver_one(self, key: str, message: WeixinMessage) -> None:
        account = self.account
        event = to_event(
            message,
            key,
            connection_id=account.connection_id,
            channel_id=account.channel_id,
            account_id=account.account_id,
            now=self.clock.time(),
        )
        try:
            await self.host.inbound(event)  # accepted, duplicate or in progress: the host has it either way
        except RpcError as exc:
            if exc.code not in _UNDELIVERABLE:
                raise
            # the same answer would come for ever: skip this one message rather than stall the account
            log.warning(
                "account %s: message %s was refused by the host (%s) and is skipped",
                account.account_id,
                event.message_id,
                _describe(exc),
            )

    async def _failed(self, reason: str) -> None:
        self._failures += 1
        if self._failures >= self.config.failures_before_backoff:
            log.warning(
                "account %s: %s (%d failures in a row; waiting %g s)",
                self.account.account_id,
                reason,
                self._failures,
                seconds(self.config.backoff_ms),
            )
            self._failures = 0
            await self.clock.sleep(seconds(self.config.backoff_ms))
        else:
            log.info("account %s: %s; retrying", self.account.account_id, reason)
            await self.clock.sleep(seconds(self.config.retry_delay_ms))


def _raise_if_gone(exc: BaseException) -> None:
    """-32011 from the host (event or state call): the connection was revoked or moved away."""
    if isinstance(exc, ConnectionGone):
        raise exc
    if isinstance(exc, RpcError) and exc.code == UNKNOWN_CONNECTION:
        raise ConnectionGone() from None


def _hinted(updates: Updates, current: float) -> float:
    hint = updates.longpolling_timeout_ms
    if hint is None or hint <= 0:
        return current
    return min(max(hint / 1000, _HINT_RANGE[0]), _HINT_RANGE[1])


def _content_key(message: WeixinMessage) -> str:
    """A message with no id, client id or seq: the same content from the same sender is the same message."""
    return "h:" + hashlib.sha256(msgspec.json.encode(message)).hexdigest()[:32]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RpcError):
        return f"{exc.name} ({exc.code}): {exc.message[:200]}"
    return type(exc).__name__
