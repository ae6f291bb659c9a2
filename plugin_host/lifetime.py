"""`owned_task_group()`: the task group that holds an object's background tasks for its lifetime.

Owners (`PluginHost`, `PluginSupervisor`, `ChannelRuntime`) put their whole life in one
`__asynccontextmanager__` (anyio's `AsyncContextManagerMixin`) and their background
tasks in this group. Unlike a bare task group, an exception raised by the owner's
body (the `async with` block of its user) comes out as itself, not wrapped in an
`ExceptionGroup`; the background tasks are cancelled when the life ends either way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc


@asynccontextmanager
async def owned_task_group() -> AsyncIterator[anyio.abc.TaskGroup]:
    error: BaseException | None = None
    async with anyio.create_task_group() as tg:
        try:
            yield tg
        except BaseException as exc:  # re-raised below, once the tasks are gone
            error = exc
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
