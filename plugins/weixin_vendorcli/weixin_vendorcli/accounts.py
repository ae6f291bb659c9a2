"""One connected Weixin account: its credentials, and what the host keeps for it.

Host-kept state (SPEC 3.4), per connection, in a fixed number of keys whatever
the number of peers (the host allows 10,000 keys per connection):
- `cursor`: the last non-empty `get_updates_buf`, sent on the next poll (also after a restart);
- `seen`: the dedupe keys of the most recent deliveries (a bounded window, see `SeenWindow`);
- `ctx:<n>` (`CONTEXT_BUCKETS` keys): each peer's latest `context_token`, needed to
  reply to it, hashed to a bucket; a token older than the 24 h reply window is dropped;
- `out:<n>` (`PROGRESS_BUCKETS` keys): the parts of a long message already out, per
  requestId, until all are (kept a day at most).
Logout leaves them: the host drops all of a revoked connection's state. Credentials
stay with the host (encrypted at rest) and come back in `ConnectionInfo`.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Literal, Protocol

import msgspec

from plugin_host.clock import Clock
from plugin_host.protocol import STATE_VALUE_MAX_BYTES
from plugin_host.redact import redact
from plugin_host.sdk import StateBuckets

CURSOR_KEY = "cursor"
SEEN_KEY = "seen"
CONTEXT_PREFIX = "ctx:"
PROGRESS_PREFIX = "out:"
CONTEXT_BUCKETS = 64  # a personal account has at most 10,000 friends: ~250 tokens per bucket fit in 64 KiB
PROGRESS_BUCKETS = 16
REPLY_WINDOW_SECONDS = 86_400.0  # the platform takes replies within 24 h of the peer's last message
PROGRESS_RETENTION = 86_400.0  # a long message the host stopped retrying is forgotten after a day
MAX_TOKEN_CHARS = 16_384  # a context token or cursor longer than this is kept in memory only
SEEN_WINDOW = 1500  # deliveries remembered per account (the platform redelivers within seconds)
CONTEXT_CACHE = 5000  # context tokens kept in memory per account
# budget for one state value, below the host's limit, for the JSON framing around it
_VALUE_BUDGET = STATE_VALUE_MAX_BYTES - 1024
# what an HTTP header value may hold: visible ASCII (a token outside it cannot be sent)
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")

AccountStatus = Literal["connected", "expired", "stopped"]

log = logging.getLogger(__name__)


class Credentials(msgspec.Struct, rename="camel", forbid_unknown_fields=False):
    """What the host stores encrypted after a login; camelCase like every other wire name."""

    bot_token: str
    ilink_bot_id: str
    base_url: str
    ilink_user_id: str | None = None


def usable_token(token: str) -> bool:
    """Whether the bot token can go in the `Authorization` header at all."""
    return _HEADER_SAFE.fullmatch(token) is not None


class HostState(Protocol):
    """The SDK's host-kept state (`plugin.state`)."""

    async def get(self, key: str, *, connection_id: str | None = None, type: Any = Any) -> Any: ...

    async def put(self, key: str, value: Any, *, connection_id: str | None = None) -> Any: ...


class SeenWindow:
    """The dedupe keys of the last `size` deliveries, oldest first; kept in one state value."""

    def __init__(self, keys: Iterable[str] = (), size: int = SEEN_WINDOW) -> None:
        self.size = size
        self._keys: OrderedDict[str, None] = OrderedDict((k, None) for k in keys if isinstance(k, str))
        self._trim()

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def add(self, key: str) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        self._trim()

    def encoded(self) -> list[str]:
        keys = list(self._keys)
        while keys and len(msgspec.json.encode(keys)) > _VALUE_BUDGET:
            del keys[: max(1, len(keys) // 10)]  # the oldest go first
        return keys

    def _trim(self) -> None:
        while len(self._keys) > self.size:
            self._keys.popitem(last=False)


class Account:
    """A connection this process serves, with a cache in front of its host-kept state."""

    def __init__(
        self, connection_id: str, channel_id: str, credentials: Credentials, state: HostState, clock: Clock
    ) -> None:
        self.connection_id = connection_id
        self.channel_id = channel_id
        self.credentials = credentials
        self.state = state
        self.clock = clock
        self.status: AccountStatus = "connected"
        self._contexts: OrderedDict[str, tuple[str, float]] = OrderedDict()  # peer -> (token, saved at)
        self._context_buckets = StateBuckets(
            state, connection_id, CONTEXT_PREFIX, buckets=CONTEXT_BUCKETS, retention=REPLY_WINDOW_SECONDS, clock=clock
        )
        self._progress = StateBuckets(
            state, connection_id, PROGRESS_PREFIX, buckets=PROGRESS_BUCKETS, retention=PROGRESS_RETENTION, clock=clock
        )

    @property
    def account_id(self) -> str:
        return self.credentials.ilink_bot_id

    def scrub(self, text: str, limit: int = 300) -> str:
        """Platform text (an `errmsg`) made safe to log or answer: the token masked, then bounded."""
        return redact(text.strip(), [self.credentials.bot_token])[:limit]

    # ---------------------------------------------------------------- cursor and dedupe window

    async def load_cursor(self) -> str:
        value = await self.state.get(CURSOR_KEY, connection_id=self.connection_id)
        return value if isinstance(value, str) else ""

    async def save_cursor(self, cursor: str) -> None:
        if len(cursor) > MAX_TOKEN_CHARS:
            log.warning("account %s: a cursor of %d characters is not persisted", self.account_id, len(cursor))
            return
        await self.state.put(CURSOR_KEY, cursor, connection_id=self.connection_id)

    async def load_seen(self) -> SeenWindow:
        value = await self.state.get(SEEN_KEY, connection_id=self.connection_id)
        return SeenWindow(value if isinstance(value, list) else ())

    async def save_seen(self, seen: SeenWindow) -> None:
        await self.state.put(SEEN_KEY, seen.encoded(), connection_id=self.connection_id)

    # ---------------------------------------------------------------- context tokens

    async def context_token(self, peer_id: str) -> str | None:
        """The peer's latest token within the reply window (None: send without one)."""
        cached = self._contexts.get(peer_id)
        if cached is not None:
            token, saved_at = cached
            return token if self.clock.time() - saved_at < REPLY_WINDOW_SECONDS else None
        entry = await self._context_buckets.entry(peer_id)
        if entry is None or not isinstance(entry.value, str) or not entry.value:
            return None
        self._remember(peer_id, entry.value, entry.updated_at)
        return entry.value

    async def save_context_token(self, peer_id: str, token: str) -> None:
        """Keep the peer's latest token (before its message is delivered, so a reply finds it).

        In memory first; a token the host cannot keep (too long, host refused or
        unavailable) is logged and lives on in memory: it never holds up the batch."""
        cached = self._contexts.get(peer_id)
        if cached is not None and cached[0] == token:
            return
        self._remember(peer_id, token)
        if len(token) > MAX_TOKEN_CHARS:
            log.warning("account %s: a context token of %d characters is not persisted", self.account_id, len(token))
            return
        try:
            await self._context_buckets.put(peer_id, token)
        except Exception as exc:  # kept in memory: replies from this process still find it
            log.warning(
                "account %s: a context token could not be kept by the host (%s); kept in memory only",
                self.account_id,
                _described(exc),
            )

    def _remember(self, peer_id: str, token: str, saved_at: float | None = None) -> None:
        self._contexts[peer_id] = (token, self.clock.time() if saved_at is None else saved_at)
        self._contexts.move_to_end(peer_id)
        while len(self._contexts) > CONTEXT_CACHE:
            self._contexts.popitem(last=False)

    # ---------------------------------------------------------------- long messages

    async def parts_sent(self, request_id: str) -> list[str]:
        value = await self._progress.get(request_id)
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []

    async def save_parts_sent(self, request_id: str, ids: list[str] | None) -> None:
        await self._progress.put(request_id, ids)


def _described(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    return f"{type(exc).__name__} {code}" if isinstance(code, int) else type(exc).__name__
