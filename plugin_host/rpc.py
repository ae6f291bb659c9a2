"""JSON-RPC 2.0 over a pair of byte streams, one message per line (SPEC 3.1).

Transport (line framing with a hard size bound) and dispatch (ids, pending
calls, cancellation) live here; both the host and the SDK use this class, so
the two ends of every plugin connection share one implementation.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from time import monotonic as _monotonic
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
from anyio.abc import ByteReceiveStream, ByteSendStream, TaskStatus

from .errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    OVERLOADED,
    REQUEST_CANCELLED,
    TIMED_OUT,
    TOO_LARGE,
    UNAVAILABLE,
    RpcError,
)

DEFAULT_MAX_MESSAGE_BYTES = 524_288
CANCEL_METHOD = "$/cancelRequest"
_READ_CHUNK = 65_536
_NOTIFICATION_QUEUE = 1024
# request tasks kept waiting for the next request: spawning a task per request costs ~30 us
_IDLE_REQUEST_WORKERS = 64

log = logging.getLogger(__name__)

UNSET = msgspec.UNSET
Id = int | str | None


class ErrorObject(msgspec.Struct, omit_defaults=True):
    code: int
    message: str
    data: Any = None


class Incoming(msgspec.Struct, omit_defaults=True):
    """Any message read from the peer; params/result stay raw until a typed decode."""

    jsonrpc: str | msgspec.UnsetType = UNSET
    id: Id | msgspec.UnsetType = UNSET
    method: str | msgspec.UnsetType = UNSET
    params: msgspec.Raw | msgspec.UnsetType = UNSET
    result: msgspec.Raw | msgspec.UnsetType = UNSET
    error: ErrorObject | msgspec.UnsetType = UNSET


class _Request(msgspec.Struct):
    jsonrpc: str
    id: int | str
    method: str
    params: Any


class _Notification(msgspec.Struct):
    jsonrpc: str
    method: str
    params: Any


class _Result(msgspec.Struct):
    jsonrpc: str
    id: Id
    result: Any


class _Error(msgspec.Struct):
    jsonrpc: str
    id: Id
    error: ErrorObject


RequestHandler = Callable[[str, "msgspec.Raw | None", "RequestContext"], Awaitable[Any]]
NotificationHandler = Callable[[str, "msgspec.Raw | None"], Awaitable[None]]
ViolationHook = Callable[[str, bytes], None]
# called in the read loop, before the notification is queued: what must happen before anything else
# the peer says is handled (the host registers the secrets a `session.update` carries)
IncomingHook = Callable[[str, "msgspec.Raw | None"], None]


class RequestContext:
    """What a request handler knows about the request it serves."""

    __slots__ = ("id", "method", "cancel_scope")

    def __init__(self, id: Id, method: str, cancel_scope: anyio.CancelScope) -> None:
        self.id = id
        self.method = method
        self.cancel_scope = cancel_scope


class ConnectionStats:
    __slots__ = ("protocol_violations", "oversized_messages", "messages_in", "messages_out")

    def __init__(self) -> None:
        self.protocol_violations = 0
        self.oversized_messages = 0
        self.messages_in = 0
        self.messages_out = 0


class _Waiter:
    __slots__ = ("event", "result", "error", "deadline", "timed_out")

    def __init__(self, event: anyio.Event, deadline: float | None = None) -> None:
        self.event = event
        self.result: msgspec.Raw | None = None
        self.error: RpcError | None = None
        self.deadline = deadline
        self.timed_out = False


class _WriteTimedOut(Exception):
    """The writer could not take a message before the call's deadline."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Incoming)
_NULL = msgspec.Raw(b"null")
_CANCELLED = object()  # in Connection._incoming: cancelled before its worker started it
_ANSWERING = object()  # in Connection._incoming: its handler is done, its answer on the way
_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, msgspec.EncodeError)


def _over(data: bytes | bytearray, end: int, limit: int, start: int = 0) -> bool:
    """Whether the line data[start:end], without a trailing CR, is over `limit` bytes."""
    size = end - start
    if size > 0 and data[end - 1] == 0x0D:  # CRLF framing: the CR is not part of the message
        size -= 1
    return size > limit


async def _method_not_found(method: str, params: msgspec.Raw | None, ctx: RequestContext) -> Any:
    from .errors import METHOD_NOT_FOUND

    raise RpcError(METHOD_NOT_FOUND, f"method not found: {method}")


async def _ignore_notification(method: str, params: msgspec.Raw | None) -> None:
    return None


class Connection:
    """One JSON-RPC peer over newline-delimited byte streams.

    Run `serve()` in a task group you own; it returns when the peer closes its
    output (EOF) or the streams break, after failing every pending call with
    -32002. `call`/`notify` may be used from any task while it runs.
    """

    def __init__(
        self,
        receive: ByteReceiveStream,
        send: ByteSendStream,
        *,
        on_request: RequestHandler = _method_not_found,
        on_notification: NotificationHandler = _ignore_notification,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        on_violation: ViolationHook | None = None,
        name: str = "peer",
        max_incoming: int | None = None,
        on_incoming: IncomingHook | None = None,
    ) -> None:
        self._receive = receive
        self._on_incoming = on_incoming
        self._send = send
        self._on_request = on_request
        self._on_notification = on_notification
        self.max_message_bytes = max_message_bytes
        # requests of the peer in flight at once; beyond it they get -32004 (None: no bound)
        self.max_incoming = max_incoming
        self._on_violation = on_violation
        self.name = name
        self.stats = ConnectionStats()
        self._ids = itertools.count(1)
        self._pending: dict[int | str, _Waiter] = {}
        # call deadlines, earliest first, served by one timer task (no cancel scope per call);
        # entries of answered calls stay until they expire or the heap is compacted
        self._deadlines: list[tuple[float, int]] = []
        self._timer_wakeup = anyio.Event()
        # requests of the peer being served: the cancel scope their handler runs under (None
        # before a worker took it, _CANCELLED when `$/cancelRequest` came first, then _ANSWERING)
        self._incoming: dict[Id, anyio.CancelScope | object | None] = {}
        self._requests: deque[tuple[Id, str, msgspec.Raw | None]] = deque()
        # line framing state, shared by the pull loop and the push callback
        self._buf = bytearray()
        self._discarding = False
        # lines left by the push callback for the read task (one needed to wait)
        self._backlog: deque[bytes] = deque()
        self._push_done: anyio.Event | None = None
        self._push_error: BaseException | None = None
        self._idle_workers: list[anyio.Event] = []
        self._wbuf: list[bytes] = []
        # fd streams can take a line without waiting: an idle writer skips the writer task
        self._send_nowait: Callable[[bytes], int] | None = getattr(send, "send_nowait", None)
        self._sending = False  # the writer task is inside `send` (a line may be half written)
        self._round = anyio.Event()  # set when the batch holding the current _wbuf is written
        self._wakeup = anyio.Event()
        self._write_error: BaseException | None = None
        self._closed = False
        self._tg: anyio.abc.TaskGroup | None = None
        # `anyio.Event()` and `anyio.CancelScope()` find the running backend on every call
        # (~2 us each here); `serve` looks its classes up once for the per-message ones
        self._new_event: Callable[[], anyio.Event] = anyio.Event
        self._new_scope: Callable[[], anyio.CancelScope] = anyio.CancelScope
        self._notes_send, self._notes_recv = anyio.create_memory_object_stream[tuple[str, Any]](_NOTIFICATION_QUEUE)

    # ---------------------------------------------------------------- public API

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending_calls(self) -> int:
        return len(self._pending)

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._new_event = type(anyio.Event())
        self._new_scope = type(anyio.CancelScope())
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._writer)
                tg.start_soon(self._notification_worker)
                tg.start_soon(self._timer)
                task_status.started()
                try:
                    await self._read_loop()
                finally:
                    self._close(RpcError(UNAVAILABLE, f"{self.name} closed the connection"))
                # Let answers already queued reach the peer before tearing down.
                with anyio.move_on_after(1):
                    await self._drain()
                tg.cancel_scope.cancel()
        finally:
            self._close(RpcError(UNAVAILABLE, f"{self.name} connection stopped"))
            self._tg = None

    async def call(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = None,
        result_type: Any = Any,
    ) -> Any:
        """Send a request and wait for its answer; raises `RpcError`.

        On timeout the peer is told with `$/cancelRequest` and -32001 is raised;
        a cancelled caller also sends `$/cancelRequest` before unwinding.
        """
        if self._closed:
            raise RpcError(UNAVAILABLE, f"{self.name} is not connected")
        request_id = next(self._ids)
        data = _encoder.encode(_Request("2.0", request_id, method, {} if params is None else params))
        if len(data) > self.max_message_bytes:
            raise RpcError(
                TOO_LARGE,
                f"request {method} is {len(data)} bytes, over the {self.max_message_bytes} byte limit",
            )
        if timeout is not None and self._tg is not None:
            waiter = _Waiter(self._new_event(), _monotonic() + timeout)
            self._pending[request_id] = waiter
            self._add_deadline(waiter.deadline, request_id)  # type: ignore[arg-type]
        else:
            waiter = _Waiter(self._new_event())
            self._pending[request_id] = waiter
        try:
            if waiter.deadline is not None:
                try:
                    await self._write(data, waiter.deadline)
                    await waiter.event.wait()
                except _WriteTimedOut:
                    waiter.timed_out = True
            else:
                # not serving yet: nothing runs the timer, so the call bounds itself
                with anyio.move_on_after(timeout) as scope:
                    await self._write(data)
                    await waiter.event.wait()
                waiter.timed_out = scope.cancelled_caught and not waiter.event.is_set()
            if waiter.timed_out:
                await self._send_cancel(request_id)
                raise RpcError(TIMED_OUT, f"{method} timed out after {timeout:g} s")
        except anyio.get_cancelled_exc_class():
            if not waiter.event.is_set():
                with anyio.CancelScope(shield=True):
                    await self._send_cancel(request_id)
            raise
        finally:
            self._pending.pop(request_id, None)
        if waiter.error is not None:
            raise waiter.error
        raw = waiter.result if waiter.result is not None else _NULL
        if result_type is Any:
            return msgspec.json.decode(raw)
        try:
            return msgspec.json.decode(raw, type=result_type)
        except msgspec.ValidationError as exc:
            raise RpcError(INVALID_PARAMS, f"invalid result for {method}: {exc}") from None

    async def notify(self, method: str, params: Any = None) -> None:
        if self._closed:
            raise RpcError(UNAVAILABLE, f"{self.name} is not connected")
        data = _encoder.encode(_Notification("2.0", method, {} if params is None else params))
        if len(data) > self.max_message_bytes:
            raise RpcError(TOO_LARGE, f"notification {method} is over the size limit")
        if await self._write(data):
            # written at once, without a wait: a notify loop must still let other tasks run
            await anyio.lowlevel.checkpoint()

    def fail_pending(self, error: RpcError) -> None:
        """Fail every call in flight (the peer died)."""
        for waiter in list(self._pending.values()):
            if not waiter.event.is_set():
                waiter.error = error
                waiter.event.set()

    # ---------------------------------------------------------------- writing

    async def _write(self, data: bytes, deadline: float | None = None) -> bool:
        """Send one message; True if it was written at once (without waiting).

        With a `deadline`, waiting for the writer task past it raises _WriteTimedOut
        (the message stays queued and is still sent whole).
        """
        if self._write_error is not None or self._closed and self._tg is None:
            raise RpcError(UNAVAILABLE, f"{self.name} is not connected")
        line = data + b"\n"
        # an idle writer: write at once (no round trip through the writer task)
        if self._send_nowait is not None and not self._wbuf and not self._sending:
            try:
                written = self._send_nowait(line)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                self._write_error = exc
                raise RpcError(UNAVAILABLE, f"{self.name} is not connected") from None
            if written == len(line):
                self.stats.messages_out += 1
                return True
            line = line[written:]  # the pipe is full: the writer task sends the rest, whole
        done = self._round
        self._wbuf.append(line)
        self._wakeup.set()
        if deadline is None:
            await done.wait()
        else:
            with anyio.move_on_after(deadline - _monotonic()) as scope:
                await done.wait()
            if scope.cancelled_caught:
                raise _WriteTimedOut
        if self._write_error is not None:
            raise RpcError(UNAVAILABLE, f"{self.name} is not connected")
        self.stats.messages_out += 1
        return False

    def _add_deadline(self, deadline: float, request_id: int) -> None:
        heapq.heappush(self._deadlines, (deadline, request_id))
        if self._deadlines[0][1] == request_id:
            self._timer_wakeup.set()  # a new earliest deadline
        if len(self._deadlines) > 4096 and len(self._deadlines) > 4 * len(self._pending):
            # drop the deadlines of answered calls in one pass (amortised O(1) per call)
            self._deadlines = [
                (w.deadline, rid)
                for rid, w in self._pending.items()
                if w.deadline is not None and isinstance(rid, int)  # our own ids are ints
            ]
            heapq.heapify(self._deadlines)

    async def _timer(self) -> None:
        """Fail calls whose deadline has passed (their callers then send `$/cancelRequest`)."""
        while True:
            if self._deadlines:
                delay = self._deadlines[0][0] - _monotonic()
                if delay <= 0:
                    _, request_id = heapq.heappop(self._deadlines)
                    waiter = self._pending.get(request_id)
                    if waiter is not None and not waiter.event.is_set():
                        waiter.timed_out = True
                        waiter.event.set()
                    continue
            else:
                delay = None
            with anyio.move_on_after(delay):
                await self._timer_wakeup.wait()
            if self._timer_wakeup.is_set():
                self._timer_wakeup = anyio.Event()

    async def _writer(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
                if not self._wbuf:
                    continue
                batch, self._wbuf = self._wbuf, []
                done, self._round = self._round, anyio.Event()
                self._sending = True
                try:
                    await self._send.send(b"".join(batch))
                finally:
                    self._sending = False
                    done.set()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self._write_error = exc
        finally:
            if self._write_error is None and self._closed:
                self._write_error = anyio.ClosedResourceError()
            self._round.set()

    async def _drain(self) -> None:
        while self._wbuf and self._write_error is None:
            await self._round.wait()

    async def _send_cancel(self, request_id: int | str) -> None:
        try:
            with anyio.move_on_after(1):
                await self.notify(CANCEL_METHOD, {"id": request_id})
        except RpcError:
            pass

    async def _respond(self, request_id: Id, result: Any) -> None:
        try:
            data = _encoder.encode(_Result("2.0", request_id, result))
        except _ENCODE_ERRORS as exc:  # a handler's bad result must not take the connection down
            log.error("%s: result of request %r cannot be encoded: %s", self.name, request_id, exc)
            await self._respond_error(request_id, RpcError(INTERNAL_ERROR, "the result cannot be encoded as JSON"))
            return
        if len(data) > self.max_message_bytes:
            data = _encoder.encode(
                _Error(
                    "2.0", request_id, ErrorObject(TOO_LARGE, f"result is {len(data)} bytes, over the message limit")
                )
            )
        await self._write(data)

    async def _respond_error(self, request_id: Id, error: RpcError) -> None:
        data = error.data
        obj = (
            ErrorObject(error.code, error.message, data) if data is not None else ErrorObject(error.code, error.message)
        )
        try:
            encoded = _encoder.encode(_Error("2.0", request_id, obj))
        except _ENCODE_ERRORS:  # unencodable `data`: answer without it
            encoded = _encoder.encode(_Error("2.0", request_id, ErrorObject(error.code, error.message)))
        await self._write(encoded)

    # ---------------------------------------------------------------- reading

    async def _read_loop(self) -> None:
        """Read and handle lines until EOF.

        A stream that can push (`FdReceiveStream` on asyncio: `set_consumer`) hands each
        chunk to `_on_chunk` inside the loop's read callback: the lines are handled there,
        without waking this task, saving a loop turn and a task switch per message. A line
        that must wait (an error answer to write, a full notification queue) stops the push;
        this task then handles it and what follows with awaits (the same backpressure as
        pulling) and pushes again.
        """
        push: Callable[[Callable[[bytes], bool] | None], bool] | None = getattr(self._receive, "set_consumer", None)
        while True:
            while self._backlog:
                await self._handle_line(self._backlog.popleft())
            if push is not None:
                done = self._push_done = anyio.Event()
                if push(self._on_chunk):
                    try:
                        await done.wait()
                    finally:
                        push(None)
                    if self._push_error is not None:
                        error, self._push_error = self._push_error, None
                        raise error
                    continue  # the backlog, or the end of the stream (the pull below sees it)
            try:
                chunk = await self._receive.receive(_READ_CHUNK)
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                return
            for line in self._frame(chunk):
                await self._handle_line(line)

    def _on_chunk(self, chunk: bytes) -> bool:
        """The push consumer: handle `chunk` now; False stops the push (b"": the stream ended)."""
        done = self._push_done
        try:
            if not chunk:
                return False
            lines = self._frame(chunk)
            for i, line in enumerate(lines):
                if self._handle_line_now(line) is not None:
                    self._backlog.extend(lines[i:])  # re-decoded by the read task: a rare path
                    return False
            return True
        except BaseException as exc:  # raised by the read task, as if it had read the line itself
            self._push_error = exc
            return False
        finally:
            if done is not None and (not chunk or self._backlog or self._push_error is not None):
                done.set()

    def _frame(self, chunk: bytes) -> list[bytes]:
        """The complete lines of `chunk` after what came before (CR of CRLF removed); oversized
        lines are reported and dropped, a partial line is kept for the next chunk."""
        limit = self.max_message_bytes
        buf = self._buf
        lines: list[bytes] = []
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                if not self._discarding:
                    # limit + 1: the last byte may be the \r of a CRLF line
                    if len(buf) + len(chunk) - start > limit + 1:
                        self._oversized(bytes(buf[:200]) or chunk[start : start + 200])
                        buf.clear()
                        self._discarding = True
                    else:
                        buf += chunk[start:]
                return lines
            if self._discarding:
                self._discarding = False
            elif buf:
                buf += chunk[start:nl]
                if _over(buf, len(buf), limit):
                    self._oversized(bytes(buf[:200]))
                else:
                    lines.append(bytes(buf[:-1]) if buf[-1:] == b"\r" else bytes(buf))
                buf.clear()
            elif _over(chunk, nl, limit, start):
                self._oversized(chunk[start : start + 200])
            else:
                end = nl - 1 if nl > start and chunk[nl - 1] == 0x0D else nl
                lines.append(chunk[start:end])
            start = nl + 1

    def _oversized(self, head: bytes) -> None:
        self.stats.oversized_messages += 1
        if self._on_violation is not None:
            self._on_violation("oversized", head)

    def _violation(self, kind: str, line: bytes) -> None:
        self.stats.protocol_violations += 1
        if self._on_violation is not None:
            self._on_violation(kind, line[:200])

    async def _handle_line(self, line: bytes) -> None:
        msg = self._handle_line_now(line)
        if msg is not None:
            await self._handle_line_waiting(msg, line)

    def _handle_line_now(self, line: bytes) -> Incoming | None:
        """Handle a line (without its newline) if that needs no wait; else change nothing
        and return the decoded message for `_handle_line_waiting`."""
        if not line.strip():
            return None
        try:
            msg = _decoder.decode(line)
        except (msgspec.DecodeError, RecursionError):  # nested too deeply is a bad line like any other
            self._violation("not_json_rpc", line)
            return None
        method = msg.method
        if msg.jsonrpc != "2.0":
            if method is not UNSET and msg.id is not UNSET:
                return msg  # answered with an error: a write to wait for
            self._violation("not_json_rpc", line)
            return None
        if method is not UNSET:
            params = None if msg.params is UNSET else msg.params
            request_id = msg.id
            if request_id is UNSET:
                if method == CANCEL_METHOD:
                    self.stats.messages_in += 1
                    self._incoming_hook(method, params)
                    self._cancel_incoming(params)
                    return None
                try:  # ordered, off the read loop, bounded: a slow consumer slows the peer, never us
                    self._notes_send.send_nowait((method, params))
                except anyio.WouldBlock:
                    return msg  # the queue is full: wait for room
                self.stats.messages_in += 1
                # still before the notification is handled: its worker runs later, in its own task
                self._incoming_hook(method, params)
                return None
            if request_id is None or (self.max_incoming is not None and len(self._incoming) >= self.max_incoming):
                return msg  # answered with an error
            self.stats.messages_in += 1
            self._dispatch_request(request_id, method, params)
            return None
        self.stats.messages_in += 1
        if msg.id is UNSET or (msg.result is UNSET and msg.error is UNSET):
            self._violation("invalid_message", line)
            return None
        waiter = self._pending.get(msg.id)  # type: ignore[arg-type]
        if waiter is None or waiter.event.is_set():
            # an answer to a call we already gave up on (timeout) is expected, not a violation
            return None
        if msg.error is not UNSET:
            err = msg.error
            waiter.error = RpcError(err.code, err.message, err.data)
        else:
            waiter.result = msg.result  # type: ignore[assignment]
        waiter.event.set()
        return None

    async def _handle_line_waiting(self, msg: Incoming, line: bytes) -> None:
        """The lines `_handle_line_now` left: an error answer to write, a notification to queue."""
        if msg.jsonrpc != "2.0":
            self._violation("not_json_rpc", line)
            await self._respond_error(msg.id, RpcError(INVALID_REQUEST, 'jsonrpc must be "2.0"'))  # type: ignore[arg-type]
            return
        assert msg.method is not UNSET
        self.stats.messages_in += 1
        params = None if msg.params is UNSET else msg.params
        if msg.id is UNSET:
            self._incoming_hook(msg.method, params)
            if msg.method == CANCEL_METHOD:
                self._cancel_incoming(params)
            else:
                await self._notes_send.send((msg.method, params))
        elif msg.id is None:
            self._violation("invalid_request", line)
            await self._respond_error(None, RpcError(INVALID_REQUEST, "request id must not be null"))
        elif self.max_incoming is not None and len(self._incoming) >= self.max_incoming:
            await self._respond_error(msg.id, RpcError(OVERLOADED, "too many requests in flight"))
        else:  # room again since the line was read
            self._dispatch_request(msg.id, msg.method, params)

    def _incoming_hook(self, method: str, params: msgspec.Raw | None) -> None:
        if self._on_incoming is not None:
            try:
                self._on_incoming(method, params)
            except Exception:  # a hook's bug must not end the reader
                log.exception("%s: incoming hook failed on %s", self.name, method)

    def _cancel_incoming(self, params: msgspec.Raw | None) -> None:
        try:
            target = msgspec.json.decode(params or b"{}").get("id")
        except (msgspec.DecodeError, AttributeError):
            return
        if not isinstance(target, (int, str)) or target not in self._incoming:
            return  # e.g. an unhashable object from a confused peer, or a request already answered
        scope = self._incoming[target]
        if scope is None:
            self._incoming[target] = _CANCELLED  # its worker has not started it yet
        elif isinstance(scope, anyio.CancelScope):
            scope.cancel()

    async def _notification_worker(self) -> None:
        async with self._notes_recv:  # closed on cancel too (else a ResourceWarning at GC)
            async for method, params in self._notes_recv:
                try:
                    await self._on_notification(method, params)
                except Exception:  # a bad notification must not stop the connection
                    log.exception("%s: notification %s failed", self.name, method)

    def _dispatch_request(self, request_id: Id, method: str, params: msgspec.Raw | None) -> None:
        if request_id in self._incoming:
            self._violation("duplicate_id", method.encode())
            return
        self._incoming[request_id] = None  # its cancel scope is made by the worker (in a task)
        self._requests.append((request_id, method, params))
        # every request gets a worker of its own at once (an idle one or a new one), so a
        # slow handler never delays another request
        if self._idle_workers:
            self._idle_workers.pop().set()
        else:
            assert self._tg is not None
            self._tg.start_soon(self._request_worker)

    async def _request_worker(self) -> None:
        """Runs queued requests, then waits for the next one unless enough workers wait already.

        A handler runs in its worker's task: a context variable it sets without
        resetting it is still set for the next request that worker runs. The worker's
        requests run under one cancel scope (entering and leaving one costs ~6 us a
        request): `$/cancelRequest` cancels it while that request's handler runs, the
        request is answered -32800 and the worker carries on under a new scope.
        """
        while True:
            scope = self._new_scope()
            running: list[Any] = []  # [id, method] while a handler runs under `scope`
            answer: tuple[Id, Any, RpcError | None] | None = None
            try:
                with scope:
                    answer = await self._serve_requests(scope, running)
                    if answer is None:
                        return  # enough idle workers
            except BaseException:  # the connection stops: nothing more is answered
                if running:
                    self._incoming.pop(running[0], None)
                raise
            if running:  # its handler was cancelled: `$/cancelRequest`, or its own ctx.cancel_scope
                request_id, method = running
                await self._answer(request_id, None, RpcError(REQUEST_CANCELLED, f"{method} was cancelled"))
            elif answer is not None:  # a handler changed the scope (cancel, deadline, shield): answered outside it
                await self._answer(*answer)

    async def _serve_requests(
        self, scope: anyio.CancelScope, running: list[Any]
    ) -> tuple[Id, Any, RpcError | None] | None:
        """The worker's loop under `scope`; returns an answer still to send when the scope must
        end (a handler changed it), None when the worker is not needed any more."""
        requests = self._requests
        incoming = self._incoming
        while True:
            while requests:
                request_id, method, params = requests.popleft()
                if incoming.get(request_id) is _CANCELLED:  # before it started: a scope of its own, cancelled
                    await self._run_request(request_id, method, params)
                    continue
                incoming[request_id] = scope
                running[:] = (request_id, method)
                result, error = await self._call_handler(request_id, method, params, scope)
                running.clear()
                incoming[request_id] = _ANSWERING  # a late `$/cancelRequest` must not cancel the answer
                if scope.cancel_called or scope.shield or scope.deadline != math.inf:
                    return request_id, result, error
                await self._answer(request_id, result, error)
            if len(self._idle_workers) >= _IDLE_REQUEST_WORKERS:
                return None
            wakeup = self._new_event()
            self._idle_workers.append(wakeup)
            await wakeup.wait()

    async def _call_handler(
        self, request_id: Id, method: str, params: msgspec.Raw | None, scope: anyio.CancelScope
    ) -> tuple[Any, RpcError | None]:
        """(result, None) or (None, the error to answer); a cancellation propagates."""
        try:
            return await self._on_request(method, params, RequestContext(request_id, method, scope)), None
        except RpcError as exc:
            return None, exc
        except msgspec.ValidationError as exc:
            return None, RpcError(INVALID_PARAMS, f"invalid params for {method}: {exc}")
        except msgspec.DecodeError as exc:
            return None, RpcError(INVALID_PARAMS, f"invalid params for {method}: {exc}")
        except Exception as exc:
            log.exception("%s: handler for %s failed", self.name, method)
            return None, RpcError(INTERNAL_ERROR, f"internal error in {method}: {type(exc).__name__}")

    async def _answer(self, request_id: Id, result: Any, error: RpcError | None) -> None:
        try:
            if error is not None:
                await self._respond_error(request_id, error)
            else:
                await self._respond(request_id, result)
        except RpcError:
            pass  # peer gone; nothing to answer
        finally:
            self._incoming.pop(request_id, None)

    async def _run_request(self, request_id: Id, method: str, params: msgspec.Raw | None) -> None:
        """A request cancelled before its worker took it: run in a cancelled scope of its own
        (a handler that never reaches a checkpoint still answers)."""
        error: RpcError | None = None
        result: Any = None
        try:
            scope = self._new_scope()
            scope.cancel()
            self._incoming[request_id] = _ANSWERING
            with scope:
                result, error = await self._call_handler(request_id, method, params, scope)
            if scope.cancelled_caught:
                error = RpcError(REQUEST_CANCELLED, f"{method} was cancelled")
        except BaseException:
            self._incoming.pop(request_id, None)
            raise
        await self._answer(request_id, result, error)

    def _close(self, error: RpcError) -> None:
        if not self._closed:
            self._closed = True
            self.fail_pending(error)
            self._notes_send.close()
