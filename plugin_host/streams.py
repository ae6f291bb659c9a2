"""Non-blocking anyio byte streams over raw file descriptors (pipes, stdio)."""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable

import anyio
import anyio.lowlevel
from anyio.abc import ByteReceiveStream, ByteSendStream

_READ_CHUNK = 65_536
# bytes a registered reader may hold unread before it stops reading (the pipe then fills: backpressure)
_READ_AHEAD = 262_144


class _LoopReader:
    """An fd kept registered with the asyncio loop while its stream is read.

    `anyio.wait_readable` registers and unregisters the fd around every wait (two
    `epoll_ctl` calls, a future and a failed `read` per message); a long-lived
    connection reads in the loop's callback instead, so a message costs one `read`.
    What the callback read stays here until `receive` takes it: a cancelled
    receive loses nothing.
    """

    __slots__ = ("loop", "fd", "chunks", "size", "error", "waiter", "registered", "consumer")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop = loop
        self.fd = fd
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.error: type[Exception] | None = None  # EndOfStream or BrokenResourceError, after the data
        self.waiter: asyncio.Future[None] | None = None
        self.registered = False
        # set_consumer: called with each chunk in the callback instead of buffering it
        self.consumer: Callable[[bytes], bool] | None = None

    def resume(self) -> None:
        if not self.registered and self.error is None and self.size < _READ_AHEAD:
            self.loop.add_reader(self.fd, self._on_readable)
            self.registered = True

    def pause(self) -> None:
        if self.registered:
            self.registered = False
            if not self.loop.is_closed():
                self.loop.remove_reader(self.fd)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            self.error = anyio.BrokenResourceError
            data = b""
        consumer = self.consumer
        if consumer is not None:
            if data:
                if not consumer(data):
                    self.consumer = None  # what comes next is buffered for `receive`
                return
            self.error = self.error or anyio.EndOfStream
            self.pause()
            self.consumer = None
            consumer(b"")
            return
        if data:
            self.chunks.append(data)
            self.size += len(data)
            if self.size >= _READ_AHEAD:
                self.pause()
        else:
            self.error = self.error or anyio.EndOfStream
            self.pause()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class FdReceiveStream(ByteReceiveStream):
    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._closed = False
        self._reader: _LoopReader | None = None

    async def receive(self, max_bytes: int = 65536) -> bytes:
        reader = self._reader
        if reader is None or reader.loop.is_closed():
            reader = self._loop_reader()
            if reader is None:  # not on asyncio: wait for each read
                return await self._receive_waiting(max_bytes)
        if self._closed:
            raise anyio.ClosedResourceError
        if reader.chunks:
            data = self._take(reader, max_bytes)
            # data was there already: yield anyway, or a flooding peer starves every
            # other task; shielded, so a cancellation cannot drop what was read
            await anyio.lowlevel.cancel_shielded_checkpoint()
            return data
        if reader.error is not None:
            raise reader.error
        if reader.waiter is not None:
            raise anyio.BusyResourceError("reading from")
        reader.resume()
        waiter = reader.waiter = reader.loop.create_future()
        try:
            await waiter
        finally:
            reader.waiter = None
        if self._closed:
            raise anyio.ClosedResourceError
        if reader.chunks:
            return self._take(reader, max_bytes)
        raise reader.error or anyio.BrokenResourceError

    def set_consumer(self, consumer: Callable[[bytes], bool] | None) -> bool:
        """Push mode: call `consumer(chunk)` in the loop's read callback for each chunk read,
        until it returns False; b"" once when the stream ends, breaks or is closed (then
        `receive` raises the reason). None stops pushing. Returns False (nothing set) when
        the stream cannot push now: not on asyncio, closed, ended, or data already read
        (take it with `receive` first)."""
        reader = self._reader
        if consumer is None:
            if reader is not None:
                reader.consumer = None
            return True
        if reader is None or reader.loop.is_closed():
            reader = self._loop_reader()
        if reader is None or self._closed or reader.chunks or reader.error is not None or reader.waiter is not None:
            return False
        reader.consumer = consumer
        reader.resume()
        return True

    def _loop_reader(self) -> _LoopReader | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        if not hasattr(loop, "add_reader"):
            return None
        self._reader = _LoopReader(loop, self._fd)
        return self._reader

    def _take(self, reader: _LoopReader, max_bytes: int) -> bytes:
        data = reader.chunks.popleft()
        if len(data) > max_bytes:
            reader.chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        reader.size -= len(data)
        reader.resume()
        return data

    async def _receive_waiting(self, max_bytes: int) -> bytes:
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
                await anyio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            reader = self._reader
            if reader is not None:
                reader.pause()
                reader.chunks.clear()
                consumer, reader.consumer = reader.consumer, None
                if consumer is not None:
                    consumer(b"")  # the pushed-to reader learns it with `receive`: closed
                if reader.waiter is not None and not reader.waiter.done():
                    reader.waiter.set_result(None)  # its receive raises ClosedResourceError
            else:
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
