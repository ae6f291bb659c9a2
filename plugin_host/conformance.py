"""`channel-runtime plugin check`: a protocol v1 conformance run against one plugin.

The plugin (a folder or a zip) is installed into a temporary home with the
package rules of SPEC 5.1, spawned with the isolation of SPEC 5.3, and driven
over raw stdio, so that malformed input can be sent and every stdout line seen:

    package, spawn, initialize, initialized, health, unknown method,
    malformed input, shutdown, stdout, every field, exit on EOF

Each check prints one line (PASS/FAIL/SKIP + reason); the run fails when any
check fails. Every message the plugin writes is validated against `schemas/`;
`every field` names each field the plugin leaves out of a message (SPEC 3.1:
optional ones go out as null, never missing). The plugin's `state.get` /
`state.put` requests are answered from memory, as a host would.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio
import msgspec

from .errors import INVALID_PARAMS, METHOD_NOT_FOUND, RpcError
from .launch import LaunchError, LaunchSpec, prepare_launch
from .manifest import Manifest
from .package import PackageError, install_package, pack_directory
from .process_group import GroupProcess, spawn
from .protocol import PROTOCOL_VERSION, StateGetParams, StatePutParams
from .redact import redact
from .sdk.testing import MemoryState
from .streams import FdReceiveStream, FdSendStream
from .wire_schemas import message_errors, missing_fields

HOST_INFO = {"name": "channel-runtime-check", "version": "1"}
SHUTDOWN_TIMEOUT = 2.0
EXIT_TIMEOUT = 5.0
CALL_TIMEOUT = 5.0
STDERR_KEEP = 20
_READ_CHUNK = 65_536


@dataclass
class CheckResult:
    name: str
    ok: bool | None  # None: skipped
    reason: str = ""

    def line(self) -> str:
        status = "SKIP" if self.ok is None else ("PASS" if self.ok else "FAIL")
        return f"{status}  {self.name}" + (f": {self.reason}" if self.reason else "")


@dataclass
class Report:
    target: str
    checks: list[CheckResult] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok is not False for c in self.checks)

    def add(self, name: str, ok: bool | None, reason: str = "") -> bool:
        self.checks.append(CheckResult(name, ok, reason))
        return bool(ok)

    def skip_rest(self, names: list[str], why: str) -> None:
        for name in names:
            if not any(c.name == name for c in self.checks):
                self.add(name, None, why)

    def render(self) -> str:
        lines = [f"plugin check {self.target}"]
        lines += [c.line() for c in self.checks]
        failed = sum(1 for c in self.checks if c.ok is False)
        if failed and self.stderr_tail:
            lines.append("last stderr lines of the plugin:")
            lines += [f"  | {line}" for line in self.stderr_tail]
        lines.append("OK: the plugin conforms to protocol v1" if self.passed else f"FAILED: {failed} check(s) failed")
        return "\n".join(lines)


CHECKS = [
    "package",
    "spawn",
    "initialize",
    "initialized",
    "health",
    "unknown method",
    "malformed input",
    "shutdown",
    "stdout",
    "every field",
    "exit on EOF",
]


class _Peer:
    """The host end of the plugin's stdio, without a JSON-RPC library in between."""

    def __init__(self, stdin: FdSendStream, stdout: FdReceiveStream, max_message_bytes: int) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.max_message_bytes = max_message_bytes
        self.sent_methods: dict[Any, str] = {}
        self.responses: dict[Any, dict[str, Any]] = {}
        self.null_id_errors: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.missing: dict[str, list[str]] = {}  # message -> fields it left out
        self.state = MemoryState()
        self.eof = anyio.Event()
        self._arrived = anyio.Event()

    async def read_loop(self) -> None:
        buffer = bytearray()
        try:
            while True:
                try:
                    chunk = await self.stdout.receive(_READ_CHUNK)
                except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                    break
                buffer += chunk
                while (nl := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:nl])
                    del buffer[: nl + 1]
                    await self._line(line)
                if len(buffer) > self.max_message_bytes:
                    self.violations.append(f"a stdout line longer than maxMessageBytes ({self.max_message_bytes})")
                    buffer.clear()
            if buffer.strip():
                await self._line(bytes(buffer))
        finally:
            self.eof.set()
            self._notify()

    def _notify(self) -> None:
        self._arrived.set()
        self._arrived = anyio.Event()

    async def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        if len(line) > self.max_message_bytes:
            self.violations.append(f"a {len(line)}-byte message exceeds maxMessageBytes ({self.max_message_bytes})")
            return
        try:
            message = json.loads(line)
        except ValueError:
            self.violations.append(f"not JSON on stdout: {redact(line[:120].decode('utf-8', 'replace'))!r}")
            return
        if not isinstance(message, dict):
            self.violations.append(
                f"not a JSON-RPC message object on stdout: {redact(line[:120].decode('utf-8', 'replace'))!r}"
            )
            return
        method = self.sent_methods.get(message.get("id")) if "method" not in message else None
        what = message.get("method") or f"answer to {method or message.get('id')!r}"
        # missing fields are reported by name in their own check; here what a host would refuse
        for issue in message_errors("plugin_to_host", message, method=method, complete=False)[:3]:
            self.violations.append(f"{what}: {issue['path'] or '/'}: {issue['message']}")
        if "result" in message or "method" in message:
            missing = missing_fields("plugin_to_host", message, method=method)
            if missing:
                self.missing.setdefault(what, [])
                self.missing[what] += [f for f in missing if f not in self.missing[what]]
        if "method" in message:
            if "id" in message:  # a request of the plugin
                await self.send(self._answer(message))
            return
        if message.get("id") is None:
            self.null_id_errors.append(message)
        else:
            self.responses[message["id"]] = message
        self._notify()

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """A host's answer to a plugin request: state.* from memory, nothing else."""
        method, params = request["method"], request.get("params", {})
        try:
            if method == "state.get":
                result: Any = self.state.get(msgspec.convert(params, StateGetParams))
            elif method == "state.put":
                result = self.state.put(msgspec.convert(params, StatePutParams))
            else:
                raise RpcError(METHOD_NOT_FOUND, f"the conformance check does not serve {method}")
        except msgspec.ValidationError as exc:
            return _error(request["id"], INVALID_PARAMS, f"invalid {method} params: {exc}")
        except RpcError as exc:
            return _error(request["id"], exc.code, exc.message)
        return {"jsonrpc": "2.0", "id": request["id"], "result": msgspec.json.decode(msgspec.json.encode(result))}

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(message, separators=(",", ":")).encode())

    async def send_raw(self, line: bytes) -> None:
        try:
            await self.stdin.send(line + b"\n")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the plugin is gone or closed its stdin: the missing answer tells the check why

    async def request(self, id_: Any, method: str, params: Any, timeout: float) -> dict[str, Any] | None:
        """Send a request; its response, or None when none came within `timeout`."""
        self.sent_methods[id_] = method
        await self.send({"jsonrpc": "2.0", "id": id_, "method": method, "params": params})
        return await self.wait_response(id_, timeout)

    async def wait_response(self, id_: Any, timeout: float) -> dict[str, Any] | None:
        with anyio.move_on_after(timeout):
            while id_ not in self.responses and not self.eof.is_set():
                await self._arrived.wait()
        return self.responses.get(id_)


def _error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


@contextmanager
def _installed(source: Path) -> Iterator[tuple[Path, Manifest, Path]]:
    """Install `source` (folder or zip) into a temporary home: (version folder, manifest, home)."""
    with tempfile.TemporaryDirectory(prefix="plugin-check-") as tmp:
        home = Path(tmp)
        archive = source
        if source.is_dir():
            archive = pack_directory(source, home / "package.zip")
        installed = install_package(archive, home / "plugins")
        yield installed.path, installed.manifest, home


async def run_checks(source: Path, *, host_env: dict[str, str] | None = None) -> Report:
    """Run every check against the plugin folder or zip at `source`."""
    source = Path(source)
    report = Report(str(source))
    if not source.exists():
        report.add("package", False, f"{source} does not exist")
        report.skip_rest(CHECKS, "no plugin")
        return report
    try:
        with _installed(source) as (version_dir, manifest, home):
            report.add("package", True, f"{manifest.id} {manifest.version}")
            spec = LaunchSpec(
                plugin_id=manifest.id,
                version=manifest.version,
                version_dir=version_dir,
                data_dir=home / "plugin-data" / manifest.id,
                manifest=manifest,
                host_env=host_env,
            )
            await _run_process(spec, report)
    except PackageError as exc:
        errors = exc.details.get("errors") if isinstance(exc.details, dict) else None
        detail = f" ({errors[0]['path']}: {errors[0]['message']})" if errors else ""
        report.add("package", False, f"{exc.code}: {exc.message}{detail}")
    report.skip_rest(CHECKS, "an earlier check failed")
    return report


async def _run_process(spec: LaunchSpec, report: Report) -> None:
    try:
        plan = prepare_launch(spec)
    except LaunchError as exc:
        report.add("spawn", False, str(exc))
        return
    plan = dataclasses.replace(plan, env={"PYTHONDONTWRITEBYTECODE": "1", **(plan.env or {})})
    try:
        process = await spawn(plan)
    except OSError as exc:
        report.add("spawn", False, f"cannot start {plan.argv[0]!r}: {exc}")
        return
    report.add("spawn", True, f"pid {process.pid}: {' '.join(plan.argv)}")
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    peer = _Peer(process.stdin, process.stdout, spec.manifest.limits.max_message_bytes)
    stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_KEEP)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer.read_loop)
            tg.start_soon(_drain, process.stderr, stderr_tail)
            try:
                await _converse(peer, process, spec, report)
            finally:
                # whatever state the plugin is in: kill its group and reap it
                await process.kill_group()
                with anyio.CancelScope(shield=True):
                    # the group is gone: the pipes reach EOF unless a grandchild escaped the group
                    with anyio.move_on_after(1.0):
                        await peer.eof.wait()
                tg.cancel_scope.cancel()
    finally:
        await process.aclose()
        report.stderr_tail = [redact(line) for line in stderr_tail]


async def _converse(peer: _Peer, process: GroupProcess, spec: LaunchSpec, report: Report) -> None:
    manifest = spec.manifest
    handshake = manifest.timeouts.handshake_ms / 1000.0
    health_timeout = manifest.timeouts.health_ms / 1000.0

    # -- initialize
    started = time.monotonic()
    params = {
        "protocolVersion": PROTOCOL_VERSION,
        "host": HOST_INFO,
        "plugin": {"id": manifest.id, "version": manifest.version},
        "config": {},
        "stateDir": str(spec.data_dir),
        "connections": [],
    }
    answer = await peer.request(1, "initialize", params, handshake)
    if not _check_answer(report, "initialize", answer, peer, process, handshake, started):
        return
    result = answer["result"] if answer else {}
    if result.get("protocolVersion") != PROTOCOL_VERSION:
        report.add(
            "initialize", False, f"protocolVersion {result.get('protocolVersion')!r}; expected {PROTOCOL_VERSION}"
        )
        return
    report.add("initialize", True, f"answered in {_ms(started)} ms")

    # -- initialized
    await peer.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
    started = time.monotonic()
    answer = await peer.request(2, "health", {}, health_timeout)
    if answer is None:
        report.add("initialized", False, _silence(peer, process, "after the initialized notification"))
        return
    report.add("initialized", True)

    # -- health
    if _check_answer(report, "health", answer, peer, process, health_timeout, started):
        report.add("health", True, f"status {answer['result'].get('status')!r}")

    # -- unknown method
    answer = await peer.request(3, "conformance/noSuchMethod", {}, CALL_TIMEOUT)
    if answer is None:
        report.add("unknown method", False, _silence(peer, process, "to an unknown method"))
    elif answer.get("error", {}).get("code") != METHOD_NOT_FOUND:
        got = answer.get("error", {}).get("code") if "error" in answer else "a result"
        report.add("unknown method", False, f"answered with {got}; expected error {METHOD_NOT_FOUND}")
    else:
        report.add("unknown method", True, f"error {METHOD_NOT_FOUND}")

    # -- malformed input: answered with an error or ignored, never a result, never fatal
    await peer.send_raw(b"this line is not JSON")
    await peer.send_raw(b'{"jsonrpc":"2.0","id":"bad-1"}')
    peer.sent_methods["bad-2"] = "health"
    await peer.send_raw(b'{"jsonrpc":"2.0","id":"bad-2","method":"health","params":"not structured"}')
    peer.sent_methods["bad-3"] = "session.get"
    await peer.send_raw(b'{"jsonrpc":"2.0","id":"bad-3","method":"session.get","params":{"sessionId":123}}')
    answer = await peer.request(4, "health", {}, max(health_timeout, CALL_TIMEOUT))
    wrong = [i for i in ("bad-1", "bad-2", "bad-3") if "result" in peer.responses.get(i, {})]
    if answer is None or "result" not in answer:
        report.add("malformed input", False, _silence(peer, process, "to health after malformed input"))
    elif wrong:
        report.add("malformed input", False, f"malformed request(s) {', '.join(wrong)} answered with a result")
    else:
        answered = sum(1 for i in ("bad-1", "bad-2", "bad-3") if i in peer.responses) + len(peer.null_id_errors)
        report.add("malformed input", True, f"{answered} error answer(s), still healthy")

    # -- shutdown
    started = time.monotonic()
    answer = await peer.request(5, "shutdown", {}, SHUTDOWN_TIMEOUT)
    if _check_answer(report, "shutdown", answer, peer, process, SHUTDOWN_TIMEOUT, started):
        report.add("shutdown", True, f"answered in {_ms(started)} ms")

    # -- stdout: judged on everything written so far
    if peer.violations:
        more = f" (+{len(peer.violations) - 1} more)" if len(peer.violations) > 1 else ""
        report.add("stdout", False, peer.violations[0] + more)
    else:
        report.add("stdout", True, "only valid JSON-RPC messages")

    # -- every field (SPEC 3.1): judged on everything written so far
    if peer.missing:
        left_out = "; ".join(f"{what} leaves out {', '.join(fields)}" for what, fields in peer.missing.items())
        report.add("every field", False, left_out + " (send optional fields as null)")
    else:
        report.add("every field", True, "no message leaves a field out")

    # -- exit on EOF
    await peer.stdin.aclose()
    started = time.monotonic()
    code = None
    with anyio.move_on_after(EXIT_TIMEOUT):
        code = await process.wait()
    if code is None:
        report.add("exit on EOF", False, f"still running {EXIT_TIMEOUT:.0f} s after stdin was closed")
    else:
        report.add("exit on EOF", True, f"exit code {code} after {_ms(started)} ms")


def _check_answer(
    report: Report,
    name: str,
    answer: dict[str, Any] | None,
    peer: _Peer,
    process: GroupProcess,
    timeout: float,
    started: float,
) -> bool:
    if answer is None:
        report.add(name, False, _silence(peer, process, f"within {timeout * 1000:.0f} ms"))
        return False
    if "error" in answer:
        err = answer["error"]
        report.add(name, False, f"answered error {err.get('code')}: {redact(str(err.get('message')))}")
        return False
    issues = message_errors("plugin_to_host", answer, method=name, complete=False)
    if issues:
        report.add(name, False, f"result does not match the schema: {issues[0]['path']}: {issues[0]['message']}")
        return False
    return True


def _silence(peer: _Peer, process: GroupProcess, what: str) -> str:
    if process.returncode is not None:
        return f"no answer {what}: the plugin exited with code {process.returncode}"
    if peer.eof.is_set():
        return f"no answer {what}: the plugin closed its stdout"
    return f"no answer {what}"


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


async def _drain(stream: FdReceiveStream, tail: collections.deque[str]) -> None:
    partial = b""
    while True:
        try:
            chunk = await stream.receive(_READ_CHUNK)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            break
        lines = (partial + chunk).split(b"\n")
        partial = lines.pop()[-4096:]
        tail.extend(line.decode("utf-8", "replace")[:500] for line in lines)
    if partial:
        tail.append(partial.decode("utf-8", "replace")[:500])


def check_plugin(source: str | os.PathLike[str], *, out: TextIO | None = None) -> int:
    """Run the suite, print the report; 0 when the plugin conforms, 1 otherwise."""
    report = anyio.run(run_checks, Path(source))
    print(report.render(), file=out or sys.stdout)
    return 0 if report.passed else 1
