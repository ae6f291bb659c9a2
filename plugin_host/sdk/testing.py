"""A host stand-in for a plugin author's own tests.

```python
async with PluginHarness.in_process(plugin, config={...}) as h:      # same event loop
    result = await h.call("message.send", request, result_type=SendResult)
    assert h.inbound_events[0].content == "hi"

async with PluginHarness.subprocess("plugins/echo") as h:             # a real child process
    ...
```
Both perform `initialize`/`initialized`, answer the plugin's `event.inbound`
(accepted, unless `inbound_answer` says otherwise) and `state.get`/`state.put`
(from memory, with the host's limits: `h.state`), and record everything the
plugin sends to the host. Shapes the plugin sends are validated against
`plugin_host.protocol`; mismatches land in `protocol_errors`.

    await h.resume(ConnectionInfo(...))     # connection.resume (SPEC 10)
    await h.release("conn_1")               # connection.release
    h.state.set_epoch("conn_1", 2)          # another host took the lease: puts are fenced
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import ByteReceiveStream, TaskStatus

from ..errors import FENCED, INVALID_PARAMS, METHOD_NOT_FOUND, RpcError
from ..launch import LaunchSpec, plugin_env, prepare_data_dir, prepare_launch, python_path
from ..manifest import MANIFEST_NAME, Manifest
from ..process_group import GroupProcess, LaunchPlan, spawn
from ..protocol import (
    PLUGIN_TO_HOST,
    PROTOCOL_VERSION,
    STATE_KEYS_PER_CONNECTION,
    STATE_VALUE_MAX_BYTES,
    BridgeEvent,
    ConnectionInfo,
    ConnectionRef,
    Empty,
    InboundAck,
    InitializeParams,
    InitializeResult,
    NameVersion,
    PluginRef,
    SessionUpdate,
    StateGetParams,
    StateGetResult,
    StatePutParams,
    StatePutResult,
)
from ..rpc import Connection, RequestContext
from ..streams import pipe_pair
from .plugin import Plugin

# a fixed answer to `event.inbound`, or a function (sync or async) of the event returning one
InboundAnswer = InboundAck | Mapping[str, Any] | Callable[[BridgeEvent], Any]

_STOP_GRACE = 5.0
_HOST = NameVersion("plugin-harness", "1")
_ACCEPTED = InboundAck(accepted=True, duplicate=False, pending=True)


class MemoryState:
    """Host-kept plugin state (SPEC 3.4) in memory, with the host's rules.

    Values by (connectionId or None, key), at most 64 KiB of JSON, at most 10,000
    keys per scope (a connection, or the plugin-wide one), refused as the host does
    (-32602 with `data.limit`); each connection has a lease epoch (1 unless set),
    and a put carrying an older epoch is refused with -32018.
    """

    def __init__(self) -> None:
        self.values: dict[tuple[str | None, str], bytes] = {}
        self.epochs: dict[str, int] = {}
        self._keys: dict[str | None, int] = {}  # keys per scope

    def epoch(self, connection_id: str | None) -> int:
        return 0 if connection_id is None else self.epochs.get(connection_id, 1)

    def set_epoch(self, connection_id: str, epoch: int) -> None:
        """The lease moved (to this epoch): writes with an older one are fenced."""
        self.epochs[connection_id] = epoch

    def value(self, key: str, *, connection_id: str | None = None) -> Any:
        """The stored value as plain JSON (None when unset)."""
        raw = self.values.get((connection_id, key))
        return None if raw is None else msgspec.json.decode(raw)

    def keys(self, connection_id: str | None = None) -> list[str]:
        return sorted(k for c, k in self.values if c == connection_id)

    def get(self, params: StateGetParams) -> StateGetResult:
        raw = self.values.get((params.connection_id, params.key))
        value = msgspec.Raw(raw) if raw is not None else None
        return StateGetResult(value=value, epoch=self.epoch(params.connection_id))

    def put(self, params: StatePutParams) -> StatePutResult:
        connection_id = params.connection_id
        current = self.epoch(connection_id)
        if connection_id is not None and params.epoch is not None and params.epoch < current:
            raise RpcError(
                FENCED,
                f"connection {connection_id} is owned at epoch {current}, not {params.epoch}",
                {"epoch": current},
            )
        slot = (connection_id, params.key)
        if params.value is None:
            if self.values.pop(slot, None) is not None:
                self._keys[connection_id] -= 1
            return StatePutResult(epoch=current)
        raw = msgspec.json.encode(params.value)
        if len(raw) > STATE_VALUE_MAX_BYTES:
            raise RpcError(
                INVALID_PARAMS,
                f"state value {params.key!r} is {len(raw)} bytes of JSON; at most {STATE_VALUE_MAX_BYTES}",
                {"limit": STATE_VALUE_MAX_BYTES},
            )
        new = slot not in self.values
        if new and self._keys.get(connection_id, 0) >= STATE_KEYS_PER_CONNECTION:
            raise RpcError(
                INVALID_PARAMS,
                f"{connection_id or 'the plugin'} already keeps {STATE_KEYS_PER_CONNECTION} state keys; at most"
                f" {STATE_KEYS_PER_CONNECTION} (delete keys with a null value)",
                {"limit": STATE_KEYS_PER_CONNECTION},
            )
        self.values[slot] = raw
        if new:
            self._keys[connection_id] = self._keys.get(connection_id, 0) + 1
        return StatePutResult(epoch=current)


class PluginHarness:
    """The host end of one plugin connection, with a record of what the plugin sent."""

    def __init__(self, *, inbound_answer: InboundAnswer | None = None, state: MemoryState | None = None) -> None:
        self.inbound_answer: InboundAnswer = inbound_answer if inbound_answer is not None else _ACCEPTED
        self.state = state if state is not None else MemoryState()
        self.connection: Connection | None = None
        self.initialize_result: InitializeResult | None = None
        self.calls: list[tuple[str, Any]] = []  # plugin -> host requests, as plain JSON
        self.notifications: list[tuple[str, Any]] = []  # plugin -> host notifications, as plain JSON
        self.inbound_events: list[BridgeEvent] = []
        self.protocol_errors: list[str] = []
        self.process: GroupProcess | None = None
        self.stderr_lines: list[str] = []
        self.disconnected = anyio.Event()  # set when the plugin closed the connection
        self._changed = anyio.Event()

    # ---------------------------------------------------------------- talking to the plugin

    async def call(
        self, method: str, params: Any = None, *, timeout: float | None = 10.0, result_type: Any = Any
    ) -> Any:
        return await self._conn.call(method, params, timeout=timeout, result_type=result_type)

    async def notify(self, method: str, params: Any = None) -> None:
        await self._conn.notify(method, params)

    async def resume(self, info: ConnectionInfo) -> None:
        """`connection.resume`: the plugin serves `info` (again) from now on."""
        await self.call("connection.resume", info, result_type=Empty)

    async def release(self, connection_id: str) -> None:
        """`connection.release`: the plugin stops serving the connection (no logout)."""
        await self.call("connection.release", ConnectionRef(connection_id), result_type=Empty)

    async def initialize(
        self,
        *,
        state_dir: str,
        config: Mapping[str, Any] | None = None,
        connections: Sequence[ConnectionInfo] = (),
        plugin_id: str = "plugin",
        version: str = "0.0.0",
    ) -> InitializeResult:
        params = InitializeParams(
            protocol_version=PROTOCOL_VERSION,
            host=_HOST,
            plugin=PluginRef(plugin_id, version),
            state_dir=state_dir,
            config=dict(config or {}),
            connections=list(connections),
        )
        self.initialize_result = await self.call("initialize", params, result_type=InitializeResult)
        await self.notify("initialized", {})
        return self.initialize_result

    @property
    def session_updates(self) -> list[SessionUpdate]:
        return [msgspec.convert(p, SessionUpdate) for m, p in self.notifications if m == "session.update"]

    def notifications_of(self, method: str) -> list[Any]:
        return [params for m, params in self.notifications if m == method]

    async def wait_for_notification(
        self, method: str, predicate: Callable[[Any], bool] | None = None, *, timeout: float = 5.0
    ) -> Any:
        """The first notification `method` (matching `predicate`), waiting for it if need be."""
        with anyio.fail_after(timeout):
            while True:
                for m, params in self.notifications:
                    if m == method and (predicate is None or predicate(params)):
                        return params
                await self._wait_changed()

    async def wait_for_inbound(self, count: int = 1, *, timeout: float = 5.0) -> list[BridgeEvent]:
        with anyio.fail_after(timeout):
            while len(self.inbound_events) < count:
                await self._wait_changed()
        return self.inbound_events

    async def _wait_changed(self) -> None:
        await self._changed.wait()

    def _record(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    @property
    def _conn(self) -> Connection:
        if self.connection is None:
            raise RuntimeError("the harness is not connected")
        return self.connection

    # ---------------------------------------------------------------- what the plugin sends

    async def _on_request(self, method: str, params: msgspec.Raw | None, ctx: RequestContext) -> Any:
        plain = msgspec.json.decode(params) if params is not None else None
        self.calls.append((method, plain))
        self._record()
        if method in ("state.get", "state.put"):
            try:
                typed: Any = msgspec.json.decode(params or b"{}", type=PLUGIN_TO_HOST[method][0])
            except msgspec.ValidationError as exc:
                self.protocol_errors.append(f"{method}: {exc}")
                raise RpcError(INVALID_PARAMS, f"invalid {method} params: {exc}") from None
            return self.state.get(typed) if method == "state.get" else self.state.put(typed)
        if method != "event.inbound":
            raise RpcError(METHOD_NOT_FOUND, f"the harness does not answer {method}")
        try:
            event = msgspec.json.decode(params or b"{}", type=BridgeEvent)
        except msgspec.ValidationError as exc:
            self.protocol_errors.append(f"event.inbound: {exc}")
            raise RpcError(INVALID_PARAMS, f"invalid BridgeEvent: {exc}") from None
        self.inbound_events.append(event)
        self._record()
        answer = self.inbound_answer
        if callable(answer):
            answer = answer(event)
            if inspect.isawaitable(answer):
                answer = await answer
        return answer

    async def _on_notification(self, method: str, params: msgspec.Raw | None) -> None:
        plain = msgspec.json.decode(params) if params is not None else None
        known = PLUGIN_TO_HOST.get(method)
        if known is None:
            self.protocol_errors.append(f"unknown notification {method}")
        else:
            try:
                msgspec.convert(plain, known[0])
            except msgspec.ValidationError as exc:
                self.protocol_errors.append(f"{method}: {exc}")
        self.notifications.append((method, plain))
        self._record()

    async def _serve_connection(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._conn.serve(task_status=task_status)
        finally:
            self.disconnected.set()

    def _connect(self, receive: ByteReceiveStream, send: Any) -> Connection:
        self.connection = Connection(
            receive,
            send,
            on_request=self._on_request,
            on_notification=self._on_notification,
            on_violation=lambda kind, head: self.protocol_errors.append(f"{kind}: {head[:80]!r}"),
            name="plugin",
        )
        return self.connection

    # ---------------------------------------------------------------- in the same event loop

    @classmethod
    @asynccontextmanager
    async def in_process(
        cls,
        plugin: Plugin,
        *,
        config: Mapping[str, Any] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        connections: Sequence[ConnectionInfo] = (),
        inbound_answer: InboundAnswer | None = None,
        state: MemoryState | None = None,
        initialize: bool = True,
        plugin_id: str = "plugin",
        version: str = "0.0.0",
    ) -> AsyncIterator[PluginHarness]:
        """Serve `plugin` over OS pipes in this event loop (`stateDir` a temporary folder by default).

        Pass the `state` of an earlier harness to see a plugin restart with its host-kept state."""
        harness = cls(inbound_answer=inbound_answer, state=state)
        async with AsyncExitStack() as stack:
            if state_dir is None:
                state_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="plugin-state-"))
            to_plugin_r, to_plugin_w = pipe_pair()
            to_host_r, to_host_w = pipe_pair()
            harness._connect(to_host_r, to_plugin_w)
            plugin_done = anyio.Event()

            async def serve_plugin() -> None:
                try:
                    await plugin.serve(to_plugin_r, to_host_w)
                finally:
                    plugin_done.set()

            error: Exception | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve_plugin)
                await tg.start(harness._serve_connection)
                try:
                    if initialize:
                        await harness.initialize(
                            state_dir=os.fspath(state_dir),
                            config=config,
                            connections=connections,
                            plugin_id=plugin_id,
                            version=version,
                        )
                    yield harness
                except Exception as exc:  # re-raised below, outside the task group: not wrapped in a group
                    error = exc
                finally:
                    with anyio.CancelScope(shield=True):
                        await to_plugin_w.aclose()  # EOF: the plugin stops and closes its end
                        with anyio.move_on_after(_STOP_GRACE):
                            await plugin_done.wait()
                    tg.cancel_scope.cancel()
            await to_host_r.aclose()
            if error is not None:
                raise error

    # ---------------------------------------------------------------- as a child process

    @classmethod
    @asynccontextmanager
    async def subprocess(
        cls,
        target: str | os.PathLike[str] | Sequence[str],
        *,
        config: Mapping[str, Any] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        connections: Sequence[ConnectionInfo] = (),
        env: Mapping[str, str] | None = None,
        inbound_answer: InboundAnswer | None = None,
        state: MemoryState | None = None,
        initialize: bool = True,
        plugin_id: str | None = None,
        version: str | None = None,
    ) -> AsyncIterator[PluginHarness]:
        """Spawn the plugin as a child: `target` is a plugin folder (with `plugin.json`),
        a Python file, or an argv list. Launched as the host launches it (SPEC 4
        command, SPEC 5.3 environment: PATH, LANG, LC_ALL, TZ, the manifest's
        `env` names, HOME = stateDir, TMPDIR inside it, PLUGIN_DIR, PYTHONPATH;
        never `CHANNEL_RUNTIME_*`), stateDir as working directory, own process
        group; `env` adds the test's own variables. Not the supervisor: stderr is
        collected in `stderr_lines`; on exit stdin is closed, then the group is
        stopped (SIGTERM, SIGKILL) and reaped."""
        harness = cls(inbound_answer=inbound_answer, state=state)
        async with AsyncExitStack() as stack:
            if state_dir is None:
                state_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="plugin-state-"))
            plan, manifest = _plan(target, Path(state_dir).resolve())
            if env:
                plan = dataclasses.replace(plan, env={**(plan.env or {}), **env})
            process = await spawn(plan)
            stack.push_async_callback(_release, process)
            harness.process = process
            assert process.stdin is not None and process.stdout is not None
            harness._connect(process.stdout, process.stdin)
            error: Exception | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(harness._read_stderr, process.stderr)
                await tg.start(harness._serve_connection)
                try:
                    if initialize:
                        await harness.initialize(
                            state_dir=os.fspath(state_dir),
                            config=config,
                            connections=connections,
                            plugin_id=plugin_id or (manifest.id if manifest else "plugin"),
                            version=version or (manifest.version if manifest else "0.0.0"),
                        )
                    yield harness
                except Exception as exc:  # re-raised below, outside the task group: not wrapped in a group
                    error = exc
                finally:
                    with anyio.CancelScope(shield=True):
                        await harness._stop_process(process)
                    tg.cancel_scope.cancel()
            if error is not None:
                raise error

    async def close_stdin(self) -> None:
        """EOF on the plugin's stdin: a plugin must then exit."""
        if self.process is not None:
            await self.process.close_stdin()

    async def wait_exit(self, *, timeout: float = _STOP_GRACE) -> int:
        assert self.process is not None
        with anyio.fail_after(timeout):
            return await self.process.wait()

    async def _stop_process(self, process: GroupProcess) -> None:
        await self.close_stdin()
        with anyio.move_on_after(_STOP_GRACE):
            await process.wait()
        await process.kill_group(term_timeout=_STOP_GRACE, kill_timeout=_STOP_GRACE)

    async def _read_stderr(self, stream: ByteReceiveStream | None) -> None:
        if stream is None:
            return
        pending = b""
        try:
            async for chunk in stream:
                *lines, pending = (pending + chunk).split(b"\n")
                self.stderr_lines.extend(line.decode("utf-8", "replace") for line in lines)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        if pending:
            self.stderr_lines.append(pending.decode("utf-8", "replace"))


async def _release(process: GroupProcess) -> None:
    """Nothing of the child outlives the harness: its group is gone and our pipe ends closed."""
    try:
        await process.kill_group()
    finally:
        await process.aclose()


def _plan(target: str | os.PathLike[str] | Sequence[str], state_dir: Path) -> tuple[LaunchPlan, Manifest | None]:
    """What to run for a plugin folder (its manifest), a Python file or an argv list, and the manifest."""
    if not isinstance(target, (str, os.PathLike)):
        prepare_data_dir(state_dir)
        env = plugin_env(os.environ, data_dir=state_dir, plugin_dir=None, pythonpath=python_path(None))
        return LaunchPlan(tuple(target), env, state_dir), None
    path = Path(target).resolve()
    if path.is_file():
        prepare_data_dir(state_dir)
        env = plugin_env(os.environ, data_dir=state_dir, plugin_dir=path.parent, pythonpath=python_path(path.parent))
        return LaunchPlan((sys.executable, str(path)), env, state_dir), None
    manifest = msgspec.json.decode((path / MANIFEST_NAME).read_bytes(), type=Manifest)
    spec = LaunchSpec(manifest.id, manifest.version, path, state_dir, manifest)
    return prepare_launch(spec), manifest
