"""The one worker loop shape shared by the inbox and the outbox.

Claims due entries from a store queue and processes each in its own task, at
most `concurrency` at a time. `wake()` after committing work makes it claim at
once; an idle loop still looks again every `idle_poll` seconds, for entries
whose retry delay has run out.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskStatus

E = TypeVar("E")
log = logging.getLogger(__name__)


def backoff_delay(attempts: int, *, base: float, cap: float) -> float:
    """Retry delay after `attempts` failed attempts: base, 2×base, 4×base … capped."""
    return min(base * (2 ** max(attempts - 1, 0)), cap)


class QueueWorker(Generic[E]):
    def __init__(
        self,
        name: str,
        claim: Callable[[int], Awaitable[list[E]]],
        process: Callable[[E], Awaitable[None]],
        *,
        concurrency: int,
        idle_poll: float = 1.0,
    ) -> None:
        self.name = name
        self._claim = claim
        self._process = process
        self._concurrency = concurrency
        self.idle_poll = idle_poll
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
                    with anyio.move_on_after(self.idle_poll):
                        await self._wakeup.wait()
                    self._wakeup = anyio.Event()
                    continue
                for entry in entries:
                    self._busy += 1
                    tg.start_soon(self._run_one, entry)

    async def _run_one(self, entry: E) -> None:
        try:
            await self._process(entry)
        except Exception:
            # process() records its own outcome; reaching here is a bug, and the lease brings the entry back
            log.exception("%s: processing an entry failed", self.name)
        finally:
            self._busy -= 1
            self._wakeup.set()
