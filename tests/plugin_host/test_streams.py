"""fd streams (plugin_host.streams) over real OS pipes: what a registered reader must never lose or hold."""

from __future__ import annotations

import os

import anyio
import pytest

from plugin_host import streams
from plugin_host.streams import FdReceiveStream, pipe_pair

pytestmark = pytest.mark.anyio


async def test_bytes_arrive_in_order_then_end_of_stream() -> None:
    receive, send = pipe_pair()
    sent = [bytes([i]) * (1000 + i) for i in range(50)]
    got = bytearray()

    async def writer() -> None:
        for part in sent:
            await send.send(part)
            await anyio.sleep(0)
        await send.aclose()

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        with pytest.raises(anyio.EndOfStream):
            while True:
                got += await receive.receive()
    assert bytes(got) == b"".join(sent)
    await receive.aclose()


async def test_a_cancelled_receive_loses_nothing() -> None:
    receive, send = pipe_pair()
    with anyio.move_on_after(0.05):
        await receive.receive()  # nothing written yet: waits, then is cancelled
    await send.send(b"first")
    # what arrives while nobody waits is read by the loop's callback and kept
    await anyio.sleep(0.05)
    assert await receive.receive() == b"first"
    await send.aclose()
    with pytest.raises(anyio.EndOfStream):
        await receive.receive()
    await receive.aclose()


async def test_max_bytes_splits_a_chunk_without_losing_the_rest() -> None:
    receive, send = pipe_pair()
    await send.send(b"abcdefgh")
    await anyio.sleep(0.05)
    assert await receive.receive(3) == b"abc"
    assert await receive.receive(3) == b"def"
    assert await receive.receive(3) == b"gh"
    await send.aclose()
    await receive.aclose()


async def test_read_ahead_is_bounded_so_a_slow_reader_pushes_back_on_the_writer() -> None:
    receive, send = pipe_pair()
    with anyio.move_on_after(0.01):
        await receive.receive()  # registers the reader
    blob = b"x" * 65_536
    written = 0
    with anyio.move_on_after(1.0):  # the writer blocks once the pipe and the read-ahead are full
        while True:
            await send.send(blob)
            written += len(blob)
    reader = receive._reader
    assert reader is not None
    assert reader.size <= streams._READ_AHEAD + 65_536
    assert written < streams._READ_AHEAD + 4 * 1024 * 1024  # bounded: not everything was taken in
    total = 0
    while total < written:
        total += len(await receive.receive())
    assert total == written
    await send.aclose()
    await receive.aclose()


async def test_aclose_wakes_a_blocked_receive() -> None:
    receive, send = pipe_pair()
    outcome: list[type[BaseException]] = []

    async def blocked() -> None:
        try:
            await receive.receive()
        except anyio.ClosedResourceError as exc:
            outcome.append(type(exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(blocked)
        await anyio.sleep(0.05)
        await receive.aclose()
    assert outcome == [anyio.ClosedResourceError]
    with pytest.raises(anyio.ClosedResourceError):
        await receive.receive()
    await send.aclose()


async def test_a_second_concurrent_receive_is_refused() -> None:
    receive, send = pipe_pair()
    async with anyio.create_task_group() as tg:
        tg.start_soon(receive.receive)
        await anyio.sleep(0.05)
        with pytest.raises(anyio.BusyResourceError):
            await receive.receive()
        await send.send(b"x")
    await send.aclose()
    await receive.aclose()


async def test_the_fd_is_closed_by_aclose() -> None:
    r, w = os.pipe()
    receive = FdReceiveStream(r)
    with anyio.move_on_after(0.01):
        await receive.receive()
    await receive.aclose()
    with pytest.raises(OSError):
        os.fstat(r)
    os.close(w)
