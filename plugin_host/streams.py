"""Non-blocking anyio byte streams over raw file descriptors (pipes, stdio)."""

from __future__ import annotations

import os

import anyio
import anyio.lowlevel
from anyio.abc import ByteReceiveStream, ByteSendStream


class FdReceiveStream(ByteReceiveStream):
    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        waited = False
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                waited = True
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            if not data:
                raise anyio.EndOfStream
            if not waited:
                # data was there already: yield anyway, or a flooding peer starves every
                # other task; shielded, so a cancellation cannot drop what was read
                await anyio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            # a task blocked on this fd must wake up (ClosedResourceError), not wait forever
            anyio.notify_closing(self._fd)
            os.close(self._fd)


class FdSendStream(ByteSendStream):
    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._closed = False

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                await anyio.wait_writable(self._fd)
                continue
            except (BrokenPipeError, OSError) as exc:
                raise anyio.BrokenResourceError from exc
            view = view[written:]

    def send_nowait(self, item: bytes) -> int:
        """Write what the fd takes without waiting; returns the number of bytes written (0 if full)."""
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            return os.write(self._fd, item)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            # a task blocked on this fd must wake up (ClosedResourceError), not wait forever
            anyio.notify_closing(self._fd)
            os.close(self._fd)


def pipe_pair() -> tuple[FdReceiveStream, FdSendStream]:
    """An OS pipe as (read end, write end) streams."""
    r, w = os.pipe()
    return FdReceiveStream(r), FdSendStream(w)
