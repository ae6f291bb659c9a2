"""One connected Weixin account: its credentials, and what the host keeps for it.

Host-kept state (SPEC 3.4), per connection:
- `cursor`: the last non-empty `get_updates_buf`, sent on the next poll (also after a restart);
- `seen`: the dedupe keys of the most recent deliveries (a bounded window, see `SeenWindow`);
- `ctx:<peer>`: the latest `context_token` of that peer, needed to reply to it;
- `peers`: the `ctx:` keys written, so that logout can forget them all;
- `out:<requestId>`: how many chunks of a long message are already out (deleted once all are).
Credentials stay with the host (encrypted at rest) and come back in `ConnectionInfo`.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Literal, Protocol

import anyio
import msgspec

from plugin_host.protocol import STATE_VALUE_MAX_BYTES
from plugin_host.redact import redact

CURSOR_KEY = "cursor"
SEEN_KEY = "seen"
PEERS_KEY = "peers"
CONTEXT_PREFIX = "ctx:"
PROGRESS_PREFIX = "out:"
MAX_TOKEN_CHARS = 16_384  # a context token or cursor longer than this is kept in memory only
_MAX_PEER_IN_KEY = 200  # longer peer ids are hashed into their key (host keys are short)
SEEN_WINDOW = 1500  # deliveries remembered per account (the platform redelivers within seconds)
CONTEXT_CACHE = 5000  # context tokens kept in memory per account
# budget for one state value, below the host's limit, for the JSON framing around it
_VALUE_BUDGET = STATE_VALUE_MAX_BYTES - 1024

AccountStatus = Literal["connected", "expired", "stopped"]

log = logging.getLogger(__name__)


def context_key(peer_id: str) -> str:
    if len(peer_id) <= _MAX_PEER_IN_KEY:
        return CONTEXT_PREFIX + peer_id
    return CONTEXT_PREFIX + "#" + hashlib.sha256(peer_id.encode()).hexdigest()


class Credentials(msgspec.Struct, rename="camel", forbid_unknown_fields=False):
    """What the host stores encrypted after a login; camelCase like every other wire name."""

    bot_token: str
    ilink_bot_id: str
    base_url: str
    ilink_user_id: str | None = None

    def public(self) -> dict[str, Any]:
        return {"ilinkBotId": self.ilink_bot_id, "baseUrl": self.base_url, "ilinkUserId": self.ilink_user_id}


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
        self, connection_id: str, channel_id: str, credentials: Credentials, state: HostState, display_name: str = ""
    ) -> None:
        self.connection_id = connection_id
        self.channel_id = channel_id
        self.credentials = credentials
        self.display_name = display_name
        self.state = state
        self.status: AccountStatus = "connected"
        self.receiver: anyio.CancelScope | None = None
        self._contexts: OrderedDict[str, str] = OrderedDict()
        self._peers: list[str] | None = None
        self._peers_lock = anyio.Lock()

    @property
    def account_id(self) -> str:
        return self.credentials.ilink_bot_id

    def scrub(self, text: str, limit: int = 300) -> str:
        """Platform text (an `errmsg`) made safe to log or answer: bounded, the token masked."""
        return redact(text.strip()[:limit], [self.credentials.bot_token])

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
        token = self._contexts.get(peer_id)
        if token is None:
            value = await self.state.get(context_key(peer_id), connection_id=self.connection_id)
            if isinstance(value, str) and value:
                token = value
                self._remember(peer_id, token)
        return token

    async def save_context_token(self, peer_id: str, token: str) -> None:
        """Persist the peer's latest token (before its message is delivered, so a reply finds it)."""
        if self._contexts.get(peer_id) == token:
            return
        if len(token) <= MAX_TOKEN_CHARS:
            key = context_key(peer_id)
            await self._index(key)
            await self.state.put(key, token, connection_id=self.connection_id)
        else:
            log.warning("account %s: a context token of %d characters is not persisted", self.account_id, len(token))
        self._remember(peer_id, token)

    def _remember(self, peer_id: str, token: str) -> None:
        self._contexts[peer_id] = token
        self._contexts.move_to_end(peer_id)
        while len(self._contexts) > CONTEXT_CACHE:
            self._contexts.popitem(last=False)

    async def _index(self, key: str) -> None:
        async with self._peers_lock:
            peers = await self._load_peers()
            if key in peers:
                return
            peers.append(key)
            while len(msgspec.json.encode(peers)) > _VALUE_BUDGET:
                del peers[0]  # the index is best effort past ~1,500 peers; the key limit comes first anyway
            await self.state.put(PEERS_KEY, peers, connection_id=self.connection_id)

    async def _load_peers(self) -> list[str]:
        if self._peers is None:
            value = await self.state.get(PEERS_KEY, connection_id=self.connection_id)
            self._peers = [p for p in value if isinstance(p, str)] if isinstance(value, list) else []
        return self._peers

    # ---------------------------------------------------------------- long messages

    async def chunks_sent(self, request_id: str) -> list[str]:
        value = await self.state.get(PROGRESS_PREFIX + request_id, connection_id=self.connection_id)
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []

    async def save_chunks_sent(self, request_id: str, ids: list[str] | None) -> None:
        await self.state.put(PROGRESS_PREFIX + request_id, ids, connection_id=self.connection_id)

    # ---------------------------------------------------------------- logout

    async def forget(self) -> None:
        """Delete everything kept for this account (its cursor, dedupe window and context tokens)."""
        keys = set(await self._load_peers()) | {context_key(peer) for peer in self._contexts}
        for key in keys:
            await self.state.put(key, None, connection_id=self.connection_id)
        for key in (CURSOR_KEY, SEEN_KEY, PEERS_KEY):
            await self.state.put(key, None, connection_id=self.connection_id)
        self._contexts.clear()
        self._peers = []
