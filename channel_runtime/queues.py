"""The one worker loop shape shared by the inbox, the outbox and the forwarder.

Claims due entries from a store queue and processes each in its own task, at
most `concurrency` at a time. `wake()` after committing work makes it claim at
once; an idle loop looks again when the earliest waiting entry is due
(`next_due`, in the clock's time) and at the latest every `idle_poll` seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import TaskStatus

from plugin_host.clock import Clock, SystemClock

E = TypeVar("E")
MIN_IDLE_WAIT = 0.005  # a due entry that a claim did not return (another consumer took it) must not spin
log = logging.getLogger(__name__)


RETRY_AFTER_MAX = 300.0  # a peer's retryAfterSeconds is honoured up to this (inf would block forever)


def backoff_delay(attempts: int, *, base: float, cap: float) -> float:
    """Retry delay after `attempts` failed attempts: base, 2×base, 4×base … capped."""
    return min(base * (2 ** max(attempts - 1, 0)), cap)


def retry_after_seconds(data: Any) -> float | None:
    """A peer's `retryAfterSeconds` (an RPC error's data, an HTTP error body) within [0, RETRY_AFTER_MAX]."""
    value = data.get("retryAfterSeconds") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return min(max(float(value), 0.0), RETRY_AFTER_MAX)


def retry_after_answer(response: Any) -> float | None:
    """How long an HTTP answer (an httpx.Response) asks to wait: its body's `retryAfterSeconds`, else
    the Retry-After header (seconds), within [0, RETRY_AFTER_MAX]; None when it says nothing."""
    try:
        seconds = retry_after_seconds(response.json())
    except ValueError:
        seconds = None
    header = response.headers.get("retry-after", "").strip()
    if seconds is None and header.isdigit():
        seconds = min(float(header), RETRY_AFTER_MAX)
    return seconds


class QueueWorker(Generic[E]):
    def __init__(
        self,
        name: str,
        claim: Callable[[int], Awaitable[list[E]]],
        process: Callable[[E], Awaitable[None]],
        *,
        concurrency: int,
        idle_poll: float = 1.0,
        next_due: Callable[[], Awaitable[float | None]] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self._claim = claim
        self._process = process
        self._concurrency = concurrency
        self.idle_poll = idle_poll
        self._next_due = next_due
        self._clock = clock or SystemClock()
        self._busy = 0
        self._wakeup = anyio.Event()

    @property
    def busy(self) -> int:
        return self._busy

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            task_status.started()
            while True:
                free = self._concurrency - self._busy
                entries: list[E] = []
                if free > 0:
                    try:
                        entries = await self._claim(free)
                    except Exception:
                        log.exception("%s: claiming work failed", self.name)
                if not entries:
                    with anyio.move_on_after(await self._idle_wait() if free > 0 else self.idle_poll):
                        await self._wakeup.wait()
                    self._wakeup = anyio.Event()
                    continue
                for entry in entries:
                    self._busy += 1
                    tg.start_soon(self._run_one, entry)

    async def _idle_wait(self) -> float:
        """Seconds until the earliest waiting entry is due, within [MIN_IDLE_WAIT, idle_poll]."""
        if self._next_due is None:
            return self.idle_poll
        try:
            due = await self._next_due()
        except Exception:
            log.exception("%s: reading the next due time failed", self.name)
            return self.idle_poll
        if due is None:
            return self.idle_poll
        return min(self.idle_poll, max(MIN_IDLE_WAIT, due - self._clock.time()))

    async def _run_one(self, entry: E) -> None:
        try:
            await self._process(entry)
        except Exception:
            # process() records its own outcome; reaching here is a bug, and the lease brings the entry back
            log.exception("%s: processing an entry failed", self.name)
        finally:
            self._busy -= 1
            self._wakeup.set()
