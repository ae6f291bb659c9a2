"""The sidecar's forwarder (SPEC 11): queued inbound events to the application's bridge.

Events wait in the store's durable forward queue (`store.forward`) and are posted to
`{BEAVER_BRIDGE_BASE_URL}/api/channel-connector-bridge/events` with the application's
bridge token: at least once, one at a time per conversation (conversations in
parallel), the same `eventId` on every try with `deliveryAttempt` = the try's number.

Answers: 2xx delivered; 409 waits `retryAfterSeconds`; 400/404/410/413/422 (the
application refuses the event itself) are tried `refused_attempts` times and then kept
as dead letters; anything else — unreachable, 401/403, 408, 429, 5xx — is retried with
capped backoff for as long as it takes, so nothing is dropped while the application
is down or misconfigured.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import httpx
import msgspec
from anyio.abc import TaskStatus

from plugin_host.clock import Clock, SystemClock
from plugin_host.redact import redact

from .bridge_http import BridgeClient, BridgeError
from .queues import QueueWorker, backoff_delay, retry_after_answer
from .store import ForwardEntry, Store
from .store.base import RETRY_AFTER_SECONDS

log = logging.getLogger(__name__)

BRIDGE_PATH = "/api/channel-connector-bridge/events"
REFUSED_STATUSES = frozenset({400, 404, 410, 413, 422})
_ERROR_EXCERPT = 200


@dataclass
class ForwarderStats:
    """What `/health` and `/metrics` show about the forwarder."""

    backlog: int = 0
    dead: int = 0
    delivered: int = 0
    failures: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_delivered_at: float | None = None
    failing: bool = False  # the latest try failed


class _Answer(Protocol):
    """What the forwarder reads of an answer: `httpx.Response` and `bridge_http.BridgeAnswer` both have it."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def json(self) -> Any: ...


class _Slot(Protocol):
    """One delivery slot's connection to the bridge; `post` raises BridgeError when no answer came."""

    async def post(self, body: bytes) -> _Answer: ...


class _HttpxSlot:
    """A slot on httpx: for an injected transport (the tests' in-process application)."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self._client = client
        self._url = url

    async def post(self, body: bytes) -> _Answer:
        try:
            return await self._client.post(self._url, content=body)
        except httpx.HTTPError as exc:
            raise BridgeError(type(exc).__name__) from None


class Forwarder:
    def __init__(
        self,
        store: Store,
        *,
        bridge_base_url: str | None,
        bridge_token: str | None,
        clock: Clock | None = None,
        concurrency: int = 16,
        lease: float = 60.0,
        retry_base: float = 0.5,
        retry_cap: float = 30.0,
        refused_attempts: int = 5,
        timeout: float = 10.0,
        idle_poll: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._store = store
        self.url = bridge_base_url.rstrip("/") + BRIDGE_PATH if bridge_base_url else None
        self._token = bridge_token or ""
        self._clock = clock or SystemClock()
        self._concurrency = concurrency
        self._lease = lease
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._refused_attempts = refused_attempts
        self._timeout = timeout
        self._transport = transport
        self._slots: list[_Slot] = []  # the idle ones; a delivery takes one
        self.stats = ForwarderStats()
        self._worker = QueueWorker[ForwardEntry](
            "forwarder", self._claim, self._deliver, concurrency=concurrency, idle_poll=idle_poll
        )

    def wake(self) -> None:
        self._worker.wake()

    async def refresh(self) -> ForwarderStats:
        """Read the backlog and dead letters from the store (for `/health` and `/metrics`)."""
        self.stats.backlog = await self._store.forward.pending_count()
        self.stats.dead = await self._store.forward.dead_count()
        return self.stats

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled; without a bridge URL, events wait in the queue (and nothing runs)."""
        if self.url is None:
            log.warning("BEAVER_BRIDGE_BASE_URL is not set: inbound events are queued, not forwarded")
            task_status.started()
            return
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"}
        tls = ssl.create_default_context()  # one for all the connections (each would build its own)
        async with contextlib.AsyncExitStack() as stack:
            if self._transport is None:  # aiohttp, one keep-alive connection per delivery slot
                client = BridgeClient(self.url, headers, timeout=self._timeout, connections=self._concurrency, tls=tls)
                self._slots.extend([await stack.enter_async_context(client)] * self._concurrency)
            for _ in range(self._concurrency if self._transport is not None else 0):
                # an injected transport (tests): httpx, one client per slot (a shared pool looks at
                # every connection on each request)
                httpx_client = httpx.AsyncClient(
                    headers=headers,
                    timeout=self._timeout,
                    verify=tls,
                    transport=self._transport,
                    limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                )
                self._slots.append(_HttpxSlot(await stack.enter_async_context(httpx_client), self.url))
            try:
                await self._worker.run(task_status=task_status)
            finally:
                self._slots.clear()

    async def _claim(self, limit: int) -> list[ForwardEntry]:
        return await self._store.forward.claim_ready(limit, lease=self._lease)

    async def _deliver(self, entry: ForwardEntry) -> None:
        assert self.url is not None
        # the same eventId on every try; deliveryAttempt says which try this is
        event = msgspec.structs.replace(entry.event, delivery_attempt=max(entry.attempts, 1))
        slot = self._slots.pop()  # the worker runs at most `concurrency` deliveries at once
        try:
            response: _Answer | None = await slot.post(msgspec.json.encode(event))
        except BridgeError as exc:
            response, unreachable = None, f"the application is unreachable ({exc.kind})"
        finally:
            self._slots.append(slot)
        if response is None:
            await self._retry(entry, unreachable, None)
            return
        status = response.status_code
        if 200 <= status < 300:
            if await self._store.forward.mark_sent(entry.id):
                self.stats.delivered += 1
            self.stats.last_delivered_at = self._clock.time()
            self.stats.failing = False
            return
        error = f"the application answered {status}{_excerpt(response)}"
        if status == 409:  # in progress there: wait as asked, it is not a failure of ours
            wait = retry_after_answer(response)
            await self._store.forward.retry(entry.id, error, RETRY_AFTER_SECONDS if wait is None else wait)
            return
        if status in REFUSED_STATUSES and entry.attempts >= self._refused_attempts:
            self._failed(error)
            log.warning("event %s dead-lettered: %s", entry.event.event_id, error)
            await self._store.forward.dead_letter(entry.id, error)
            return
        delay = retry_after_answer(response) if status in (429, 503) else None
        await self._retry(entry, error, delay)

    async def _retry(self, entry: ForwardEntry, error: str, delay: float | None) -> None:
        self._failed(error)
        if delay is None:
            delay = backoff_delay(entry.attempts, base=self._retry_base, cap=self._retry_cap)
        await self._store.forward.retry(entry.id, error, delay)

    def _failed(self, error: str) -> None:
        self.stats.failures += 1
        self.stats.failing = True
        self.stats.last_error = error
        self.stats.last_error_at = self._clock.time()


def _excerpt(response: _Answer) -> str:
    """A short, redacted piece of the application's error answer (its `error.code` when it has one)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return f" ({redact(str(code))[:_ERROR_EXCERPT]})" if code else ""
