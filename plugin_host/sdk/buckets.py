"""`StateBuckets`: a map of many small entries kept in a fixed number of host-state keys.

Host-kept state allows at most 10,000 keys per connection (SPEC 3.4), so a plugin
that keeps something per peer, per thread or per request cannot give each its
own key. `StateBuckets` hashes an entry's id (crc32, stable across processes) to
one of `buckets` keys (`<prefix><n>`); each key holds its entries as one JSON
object `{id: [value, updatedAt]}`. An entry last written more than `retention`
seconds ago counts as absent and is dropped whenever its key is written; when a
key would exceed the 64 KiB value limit, its oldest entries go first. The SDK's
send records (`sdk:send:<n>`) follow the same scheme.

One instance serves one connection, and keeps the buckets it read in memory
(at most `cached` of them): the connection's owner is the only writer of its
state (SPEC 10 fences the others), so the copy stays true. A lock per key makes
read-modify-write atomic within the process.

```python
contexts = StateBuckets(plugin.state, connection_id, "ctx:", buckets=64, retention=86400, clock=plugin.clock)
await contexts.put(peer_id, token)
token = await contexts.get(peer_id, type=str)
```
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from typing import Any, Protocol

import msgspec

from ..clock import Clock
from ..locks import KeyedLock
from ..protocol import STATE_VALUE_MAX_BYTES

# room for the JSON-RPC framing around a value (the limit counts the value alone, but stay clear of it)
_VALUE_BUDGET = STATE_VALUE_MAX_BYTES - 512


class StateStore(Protocol):
    """What the buckets need of host-kept state (`plugin_host.sdk.state.HostState`)."""

    async def get(self, key: str, *, connection_id: str | None = None, type: Any = Any) -> Any: ...

    async def put(self, key: str, value: Any, *, connection_id: str | None = None) -> Any: ...


class Entry(msgspec.Struct, array_like=True):
    """One entry as stored: `[value, updatedAt]` (wall-clock seconds)."""

    value: Any
    updated_at: float


Bucket = dict[str, Entry]


class EntryTooLarge(ValueError):
    """One entry alone does not fit in a state value."""


def bucket_key(prefix: str, entry_id: str, buckets: int) -> str:
    """The state key (`<prefix><n>`) holding `entry_id`; crc32 is stable across processes."""
    return f"{prefix}{zlib.crc32(entry_id.encode()) % buckets}"


class StateBuckets:
    def __init__(
        self,
        state: StateStore,
        connection_id: str,
        prefix: str,
        *,
        buckets: int,
        retention: float,
        clock: Clock,
        cached: int = 64,
    ) -> None:
        if buckets < 1:
            raise ValueError("buckets must be at least 1")
        self.state = state
        self.connection_id = connection_id
        self.prefix = prefix
        self.buckets = buckets
        self.retention = retention
        self.clock = clock
        self.cached = cached
        self._cache: OrderedDict[str, Bucket] = OrderedDict()
        self._locks = KeyedLock()

    def key(self, entry_id: str) -> str:
        """The state key holding `entry_id`."""
        return bucket_key(self.prefix, entry_id, self.buckets)

    async def entry(self, entry_id: str) -> Entry | None:
        """The live entry of `entry_id` (its value and when it was written), or None."""
        entry = (await self._read(self.key(entry_id))).get(entry_id)
        if entry is None or entry.updated_at < self.clock.time() - self.retention:
            return None
        return entry

    async def get(self, entry_id: str, *, type: Any = Any) -> Any:
        """The live value of `entry_id` (converted to `type`), or None."""
        entry = await self.entry(entry_id)
        if entry is None:
            return None
        if type is Any:
            return entry.value
        try:
            return msgspec.convert(entry.value, type)
        except msgspec.ValidationError:
            return None  # written in another shape (an older version): as good as absent

    async def put(self, entry_id: str, value: Any) -> None:
        """Store `value` for `entry_id` (None deletes it). Raises what the host answers, and
        `EntryTooLarge` when the entry alone does not fit in one value."""
        key = self.key(entry_id)
        async with self._locks(key):
            bucket = dict(await self._read(key))
            now = self.clock.time()
            live = {i: e for i, e in bucket.items() if e.updated_at >= now - self.retention and i != entry_id}
            if value is None and len(live) == len(bucket):
                return  # nothing to delete, nothing expired
            if value is not None:
                live[entry_id] = Entry(value, now)
            encoded = _fit(live, entry_id)
            await self.state.put(key, msgspec.Raw(encoded) if live else None, connection_id=self.connection_id)
            self._remember(key, live)

    async def _read(self, key: str) -> Bucket:
        bucket = self._cache.get(key)
        if bucket is not None:
            self._cache.move_to_end(key)
            return bucket
        try:
            bucket = await self.state.get(key, connection_id=self.connection_id, type=Bucket | None) or {}
        except msgspec.ValidationError:
            bucket = {}  # unreadable (written by something else): start the key afresh
        self._remember(key, bucket)
        return bucket

    def _remember(self, key: str, bucket: Bucket) -> None:
        self._cache[key] = bucket
        self._cache.move_to_end(key)
        while len(self._cache) > self.cached:
            self._cache.popitem(last=False)


def _fit(bucket: Bucket, keep: str) -> bytes:
    """The bucket encoded within the value budget, its oldest entries (never `keep`) dropped first."""
    encoded = msgspec.json.encode(bucket)
    excess = len(encoded) - _VALUE_BUDGET
    if excess <= 0:
        return encoded
    for entry_id, entry in sorted(bucket.items(), key=lambda item: item[1].updated_at):
        if entry_id != keep:
            del bucket[entry_id]
            excess -= len(msgspec.json.encode({entry_id: entry}))  # its share of the object, commas aside
            if excess <= 0:
                break
    encoded = msgspec.json.encode(bucket)
    if len(encoded) > _VALUE_BUDGET:
        raise EntryTooLarge(f"an entry of {len(encoded)} bytes does not fit in a state value")
    return encoded
