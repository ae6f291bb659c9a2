"""JSON-RPC framing and dispatch (plugin_host.rpc) over real OS pipes and scripted streams."""

from __future__ import annotations

import tracemalloc
from typing import Any

import anyio
import msgspec
import pytest
from anyio.abc import ByteReceiveStream, ByteSendStream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin_host import errors
from plugin_host.errors import RpcError
from plugin_host.rpc import Connection
from plugin_host.streams import pipe_pair

pytestmark = pytest.mark.anyio


class ScriptedStream(ByteReceiveStream):
    """Yields the given chunks, then EOF."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = list(chunks)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.lowlevel.checkpoint()
        if not self._chunks:
            raise anyio.EndOfStream
        return self._chunks.pop(0)

    async def aclose(self) -> None:
        self._chunks.clear()


class GeneratedStream(ByteReceiveStream):
    """`total` bytes of `fill` without a newline, then `tail`, then EOF."""

    def __init__(self, total: int, tail: bytes, fill: bytes = b"x") -> None:
        self._left = total
        self._tail = tail
        self._chunk = fill * 65536

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.lowlevel.checkpoint()
        if self._left > 0:
            n = min(self._left, len(self._chunk), max_bytes)
            self._left -= n
            return self._chunk[:n]
        if self._tail:
            tail, self._tail = self._tail, b""
            return tail
        raise anyio.EndOfStream

    async def aclose(self) -> None:
        pass


class Sink(ByteSendStream):
    def __init__(self) -> None:
        self.data = bytearray()

    async def send(self, item: bytes) -> None:
        self.data += item

    async def aclose(self) -> None:
        pass

    def messages(self) -> list[dict[str, Any]]:
        return [msgspec.json.decode(line) for line in bytes(self.data).splitlines() if line]


def request(id: int, method: str, params: Any = None) -> bytes:
    return msgspec.json.encode({"jsonrpc": "2.0", "id": id, "method": method, "params": params or {}})


def notification(method: str, params: Any = None) -> bytes:
    return msgspec.json.encode({"jsonrpc": "2.0", "method": method, "params": params or {}})


async def run_scripted(chunks: list[bytes], *, limit: int = 4096) -> tuple[Connection, Sink, list[Any], list[Any]]:
    """Feed chunks to a Connection whose handlers record what they see."""
    requests: list[Any] = []
    notes: list[Any] = []

    async def on_request(method: str, params: msgspec.Raw | None, ctx: Any) -> Any:
        value = msgspec.json.decode(params) if params is not None else None
        requests.append((ctx.id, method, value))
        return {"echo": value}

    async def on_notification(method: str, params: msgspec.Raw | None) -> None:
        notes.append((method, msgspec.json.decode(params) if params is not None else None))

    sink = Sink()
    conn = Connection(
        ScriptedStream(chunks), sink, on_request=on_request, on_notification=on_notification, max_message_bytes=limit
    )
    with anyio.fail_after(10):
        await conn.serve()
    return conn, sink, requests, notes


@pytest.fixture
async def pair():
    """Two connected Connections over real OS pipes; `b` echoes requests."""
    a_r, b_w = pipe_pair()
    b_r, a_w = pipe_pair()
    seen: dict[str, Any] = {"cancelled": []}

    async def on_request(method: str, params: msgspec.Raw | None, ctx: Any) -> Any:
        if method == "sleep":
            try:
                await anyio.sleep(30)
            except anyio.get_cancelled_exc_class():
                seen["cancelled"].append(ctx.id)
                raise
        if method == "fail":
            raise RpcError(errors.IN_PROGRESS, "busy", {"retryAfterSeconds": 5})
        if method == "crash":
            raise ValueError("secret detail")
        if method == "big":
            return "x" * 10_000
        return msgspec.json.decode(params) if params is not None else None

    a = Connection(a_r, a_w, name="a", max_message_bytes=8192)
    b = Connection(b_r, b_w, name="b", on_request=on_request, max_message_bytes=8192)
    async with anyio.create_task_group() as tg:
        await tg.start(a.serve)
        await tg.start(b.serve)
        yield a, b, seen, (a_w, b_w)
        tg.cancel_scope.cancel()


# ---------------------------------------------------------------- round trips

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.dictionaries(st.text(max_size=10), json_values, max_size=5))
async def test_round_trip_random_params(pair, params):
    a, _, _, _ = pair
    assert await a.call("echo", params, timeout=5) == params


async def test_error_objects_and_codes(pair):
    a, _, _, _ = pair
    with pytest.raises(RpcError) as exc:
        await a.call("fail", timeout=5)
    assert exc.value.code == errors.IN_PROGRESS
    assert exc.value.data == {"retryAfterSeconds": 5}
    with pytest.raises(RpcError) as exc:
        await a.call("crash", timeout=5)
    assert exc.value.code == errors.INTERNAL_ERROR
    assert "secret detail" not in exc.value.message


async def test_unknown_method_on_default_handler(pair):
    _, b, _, _ = pair
    # `a` has no request handler: every method is -32601
    with pytest.raises(RpcError) as exc:
        await b.call("anything", timeout=5)
    assert exc.value.code == errors.METHOD_NOT_FOUND


async def test_timeout_sends_cancel_request(pair):
    a, b, seen, _ = pair
    with pytest.raises(RpcError) as exc:
        await a.call("sleep", timeout=0.2)
    assert exc.value.code == errors.TIMED_OUT
    with anyio.fail_after(5):
        while not seen["cancelled"]:
            await anyio.sleep(0.01)
    assert a.pending_calls == 0


async def test_caller_cancellation_sends_cancel_request(pair):
    a, _, seen, _ = pair
    with anyio.move_on_after(0.2):
        await a.call("sleep")
    with anyio.fail_after(5):
        while not seen["cancelled"]:
            await anyio.sleep(0.01)


async def test_oversized_request_refused_locally(pair):
    a, _, _, _ = pair
    with pytest.raises(RpcError) as exc:
        await a.call("echo", {"x": "y" * 10_000}, timeout=5)
    assert exc.value.code == errors.TOO_LARGE


async def test_oversized_result_becomes_error(pair):
    a, _, _, _ = pair
    with pytest.raises(RpcError) as exc:
        await a.call("big", timeout=5)
    assert exc.value.code == errors.TOO_LARGE


async def test_peer_eof_fails_pending_calls(pair):
    a, b, _, (a_w, b_w) = pair
    async with anyio.create_task_group() as tg:
        results: list[RpcError] = []

        async def waiting() -> None:
            try:
                await a.call("sleep", timeout=10)
            except RpcError as exc:
                results.append(exc)

        tg.start_soon(waiting)
        await anyio.sleep(0.1)
        await b_w.aclose()  # b's output ends: a sees EOF
    assert [e.code for e in results] == [errors.UNAVAILABLE]
    with pytest.raises(RpcError) as exc:
        await a.call("echo", timeout=1)
    assert exc.value.code == errors.UNAVAILABLE


async def test_many_concurrent_calls_correlate(pair):
    a, _, _, _ = pair
    results: dict[int, Any] = {}

    async def one(i: int) -> None:
        results[i] = await a.call("echo", {"i": i}, timeout=10)

    async with anyio.create_task_group() as tg:
        for i in range(300):
            tg.start_soon(one, i)
    assert results == {i: {"i": i} for i in range(300)}


# ---------------------------------------------------------------- hostile input

garbage_lines = st.one_of(
    st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"")),
    st.just(b"not json"),
    st.just(b'{"jsonrpc": "1.0", "id": 5, "method": "x"}'),
    st.just(b'{"jsonrpc": "2.0"}'),
    st.just(b"[1, 2, 3]"),
    st.just(b'{"jsonrpc": "2.0", "id": 99, "result": 1}'),  # answer to nothing we asked
    st.just(b"x" * 5000),  # over the 4096 limit
)


@settings(max_examples=80, deadline=None)
@given(
    noise=st.lists(garbage_lines, max_size=8),
    valid=st.lists(st.integers(0, 1000), min_size=1, max_size=8),
    splits=st.lists(st.integers(1, 50), max_size=30),
    data=st.data(),
)
def test_garbage_never_loses_valid_messages(noise, valid, splits, data):
    lines = [request(i + 1, "m", {"v": v}) for i, v in enumerate(valid)]
    stream: list[bytes] = []
    for line in lines:
        position = data.draw(st.integers(0, len(stream)))
        stream.insert(position, line)
    for junk in noise:
        stream.insert(data.draw(st.integers(0, len(stream))), junk)
    blob = b"\n".join(stream) + b"\n"
    # cut the byte stream at arbitrary points: partial lines across reads
    chunks, pos = [], 0
    for size in splits:
        if pos >= len(blob):
            break
        chunks.append(blob[pos : pos + size])
        pos += size
    chunks.append(blob[pos:])

    conn, sink, requests, _ = anyio.run(run_scripted, [c for c in chunks if c])
    seen = sorted((ctx_id, value["v"]) for ctx_id, _, value in requests)
    assert seen == sorted((i + 1, v) for i, v in enumerate(valid))
    answers = {m["id"]: m for m in sink.messages() if "result" in m}
    for i, v in enumerate(valid):
        assert answers[i + 1]["result"] == {"echo": {"v": v}}
    junk_count = sum(1 for j in noise if j.strip())
    counted = conn.stats.protocol_violations + conn.stats.oversized_messages
    # every non-blank junk line is counted, except the stray answer which is tolerated
    stray = sum(1 for j in noise if j == b'{"jsonrpc": "2.0", "id": 99, "result": 1}')
    assert counted == junk_count - stray


def test_invalid_version_request_is_answered_with_error():
    _, sink, requests, _ = anyio.run(run_scripted, [b'{"jsonrpc": "1.0", "id": 7, "method": "x"}\n'])
    assert requests == []
    [answer] = sink.messages()
    assert answer["id"] == 7 and answer["error"]["code"] == errors.INVALID_REQUEST


def test_notifications_keep_order_and_cancel_is_internal():
    chunks = [notification("n", {"i": i}) + b"\n" for i in range(50)]
    chunks.append(notification("$/cancelRequest", {"id": 12345}) + b"\n")
    _, _, _, notes = anyio.run(run_scripted, chunks)
    assert notes == [("n", {"i": i}) for i in range(50)]


def test_crlf_lines_accepted():
    _, sink, requests, _ = anyio.run(run_scripted, [request(1, "m", {"v": 1}) + b"\r\n"])
    assert requests == [(1, "m", {"v": 1})]


def test_endless_line_does_not_grow_memory():
    """A peer that never sends a newline must not grow our buffer past the limit."""
    limit = 64 * 1024
    tail = b"\n" + request(1, "m", {"v": "after"}) + b"\n"
    stream = GeneratedStream(20 * 1024 * 1024, tail)

    async def main() -> tuple[Connection, list[Any]]:
        seen: list[Any] = []

        async def on_request(method: str, params: Any, ctx: Any) -> Any:
            seen.append(msgspec.json.decode(params))
            return None

        conn = Connection(stream, Sink(), on_request=on_request, max_message_bytes=limit)
        await conn.serve()
        return conn, seen

    tracemalloc.start()
    try:
        conn, seen = anyio.run(main)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert conn.stats.oversized_messages == 1
    assert seen == [{"v": "after"}]
    assert peak < 8 * limit, f"peak {peak} bytes for a {limit} byte limit"


# ---------------------------------------------------------------- incoming bound


async def test_incoming_requests_beyond_max_incoming_are_refused_overloaded() -> None:
    a_r, b_w = pipe_pair()
    b_r, a_w = pipe_pair()
    running = 0
    most = 0
    release = anyio.Event()

    async def on_request(method: str, params: msgspec.Raw | None, ctx: Any) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await release.wait()
        finally:
            running -= 1
        return "done"

    a = Connection(a_r, a_w, name="a")
    b = Connection(b_r, b_w, name="b", on_request=on_request, max_incoming=4)
    outcomes: list[Any] = []

    async def one(i: int) -> None:
        try:
            outcomes.append(await a.call("event.inbound", {"i": i}, timeout=10))
        except RpcError as exc:
            outcomes.append(exc.code)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(a.serve)
            await tg.start(b.serve)
            async with anyio.create_task_group() as callers:
                for i in range(50):
                    callers.start_soon(one, i)
                while len(outcomes) < 46:
                    await anyio.sleep(0.01)
                assert running == 4
                release.set()
            tg.cancel_scope.cancel()
    assert most == 4
    assert outcomes.count(errors.OVERLOADED) == 46
    assert outcomes.count("done") == 4
    assert b._incoming == {}


# ---------------------------------------------------------------- size limit, exactly


def sized_request(id: int, size: int) -> bytes:
    """A request line of exactly `size` bytes (without its newline)."""
    line = request(id, "m", {"p": ""})
    line = request(id, "m", {"p": "x" * (size - len(line))})
    assert len(line) == size
    return line


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_size_limit_is_exact_whole_or_split(split: bool, crlf: bool) -> None:
    end = b"\r\n" if crlf else b"\n"
    lines = [sized_request(1, 1024) + end, sized_request(2, 1025) + end, sized_request(3, 100) + end]
    chunks = [part for line in lines for part in ((line[:500], line[500:]) if split else (line,))]
    conn, _, requests, _ = anyio.run(lambda: run_scripted(chunks, limit=1024))
    assert [r[0] for r in requests] == [1, 3]
    assert conn.stats.oversized_messages == 1


# ---------------------------------------------------------------- pushed lines (real pipes)


async def run_piped(
    data: bytes, *, requests_expected: int, notes_expected: int, slow_notes: bool = False, limit: int = 4096
) -> tuple[Connection, list[dict[str, Any]], list[Any], list[Any]]:
    """`data` written into a real pipe at once, EOF once the handlers saw what is expected: the
    connection reads it in push mode (the loop's read callback), the way it reads a plugin;
    returns what it answered and saw."""
    requests: list[Any] = []
    notes: list[Any] = []

    async def on_request(method: str, params: msgspec.Raw | None, ctx: Any) -> Any:
        requests.append((ctx.id, method))
        return {"echo": ctx.id}

    async def on_notification(method: str, params: msgspec.Raw | None) -> None:
        if slow_notes:
            await anyio.sleep(0)
        notes.append((method, msgspec.json.decode(params) if params is not None else None))

    ours_r, peer_w = pipe_pair()
    peer_r, ours_w = pipe_pair()
    conn = Connection(ours_r, ours_w, on_request=on_request, on_notification=on_notification, max_message_bytes=limit)
    answers = bytearray()

    async def peer() -> None:
        await peer_w.send(data)
        while len(requests) < requests_expected or len(notes) < notes_expected:
            await anyio.sleep(0.01)
        await anyio.sleep(0.05)  # the answers are written
        await peer_w.aclose()

    async def collect() -> None:
        try:
            while True:
                answers.extend(await peer_r.receive())
        except anyio.EndOfStream:
            pass

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            tg.start_soon(peer)
            await conn.serve()
            await ours_w.aclose()
    await peer_r.aclose()
    messages = [msgspec.json.decode(line) for line in bytes(answers).splitlines() if line]
    return conn, messages, requests, notes


async def test_pushed_lines_that_must_wait_keep_their_order_and_push_resumes() -> None:
    """Error answers (bad version, null id) stop the push mid-chunk; what follows is still handled, in order."""
    lines = [request(1, "m"), b'{"jsonrpc": "1.0", "id": 2, "method": "x"}', notification("n", {"i": 1})]
    lines += [b'{"jsonrpc": "2.0", "id": null, "method": "x"}', request(3, "m"), notification("n", {"i": 2})]
    lines += [b"not json", request(4, "m") + b"\r"]
    conn, messages, requests, notes = await run_piped(b"\n".join(lines) + b"\n", requests_expected=3, notes_expected=2)
    assert sorted(requests) == [(1, "m"), (3, "m"), (4, "m")]
    assert notes == [("n", {"i": 1}), ("n", {"i": 2})]
    errors_by_id = {m["id"]: m["error"]["code"] for m in messages if "error" in m}
    assert errors_by_id == {2: errors.INVALID_REQUEST, None: errors.INVALID_REQUEST}
    assert {m["id"] for m in messages if "result" in m} == {1, 3, 4}
    assert conn.stats.protocol_violations == 3  # bad version, null id, not JSON


async def test_pushed_notifications_beyond_the_queue_wait_for_room_in_order() -> None:
    count = 3000  # well past the 1024 queued notifications: the read task waits for room
    data = b"".join(notification("n", {"i": i}) + b"\n" for i in range(count)) + request(1, "m") + b"\n"
    conn, messages, requests, notes = await run_piped(data, requests_expected=1, notes_expected=count, slow_notes=True)
    assert notes == [("n", {"i": i}) for i in range(count)]
    assert requests == [(1, "m")]
    assert [m["id"] for m in messages] == [1]
    assert conn.stats.messages_in == count + 1


async def test_pushed_lines_split_across_reads_and_oversized_ones_are_dropped() -> None:
    big = request(9, "m", {"p": "x" * 5000})  # over the 4096 byte limit
    data = request(1, "m") + b"\n" + big + b"\n" + request(2, "m") + b"\r\n"
    ours_r, peer_w = pipe_pair()
    peer_r, ours_w = pipe_pair()
    seen: list[Any] = []

    async def on_request(method: str, params: msgspec.Raw | None, ctx: Any) -> Any:
        seen.append(ctx.id)
        return None

    conn = Connection(ours_r, ours_w, on_request=on_request, max_message_bytes=4096)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.serve)
            for i in range(0, len(data), 7):  # a byte at a time would take long: seven at a time
                await peer_w.send(data[i : i + 7])
                await anyio.sleep(0)
            await peer_w.aclose()
    assert sorted(seen) == [1, 2]
    assert conn.stats.oversized_messages == 1
    for stream in (ours_w, peer_r):
        await stream.aclose()


async def test_a_worker_serves_on_after_cancellations_and_a_handler_changing_its_scope() -> None:
    """Requests of one worker share a cancel scope until one is cancelled or changes it: what
    follows must see none of it (answered normally, no leftover deadline)."""
    ours_r, peer_w = pipe_pair()
    peer_r, ours_w = pipe_pair()

    async def on_request(method: str, params: msgspec.Raw | None, ctx: Any) -> Any:
        if method == "sleep":
            await anyio.sleep(30)
        if method == "own_deadline":  # the handler bounds itself through its scope
            ctx.cancel_scope.deadline = anyio.current_time() + 0.05
            await anyio.sleep(30)
        if method == "swallow":  # cancelled, catches it and answers anyway
            ctx.cancel_scope.cancel()
            try:
                await anyio.sleep(30)
            except anyio.get_cancelled_exc_class():
                return "swallowed"
        if method == "slow":
            await anyio.sleep(0.2)
        return method

    conn = Connection(ours_r, ours_w, on_request=on_request)
    answers: dict[Any, dict[str, Any]] = {}
    buffer = bytearray()

    async def answer(request_id: int) -> dict[str, Any]:
        while request_id not in answers:
            buffer.extend(await peer_r.receive())
            *lines, rest = bytes(buffer).split(b"\n")
            buffer[:] = rest
            for line in lines:
                message = msgspec.json.decode(line)
                answers[message["id"]] = message
        return answers[request_id]

    async def cancel(request_id: int) -> None:
        await peer_w.send(notification("$/cancelRequest", {"id": request_id}) + b"\n")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.serve)
            for round_ in range(3):  # one worker: every request after the first reuses it
                base = round_ * 10
                await peer_w.send(request(base + 1, "sleep") + b"\n")
                await anyio.sleep(0.02)
                await cancel(base + 1)
                assert (await answer(base + 1))["error"]["code"] == errors.REQUEST_CANCELLED
                await peer_w.send(request(base + 2, "echo") + b"\n")
                assert (await answer(base + 2))["result"] == "echo"
                await cancel(base + 2)  # late: the request is answered already
                await peer_w.send(request(base + 3, "own_deadline") + b"\n")
                assert (await answer(base + 3))["error"]["code"] == errors.REQUEST_CANCELLED
                await peer_w.send(request(base + 4, "slow") + b"\n")  # no deadline left over
                assert (await answer(base + 4))["result"] == "slow"
                await peer_w.send(request(base + 5, "swallow") + b"\n")
                assert (await answer(base + 5))["result"] == "swallowed"
            # cancelled before any worker took it, in the same chunk as the request
            await peer_w.send(request(99, "sleep") + b"\n" + notification("$/cancelRequest", {"id": 99}) + b"\n")
            assert (await answer(99))["error"]["code"] == errors.REQUEST_CANCELLED
            await peer_w.aclose()
    assert conn._incoming == {}
    for stream in (ours_w, peer_r):
        await stream.aclose()
