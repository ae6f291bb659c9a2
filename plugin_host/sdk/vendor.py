"""Vendor command runner (SPEC 5.6): run an admin-configured CLI safely.

- The command template comes only from the plugin's environment, never from a
  request: `VendorCommand.from_env("FEISHU_VENDOR_INSTALL_COMMAND")`.
- `{name}` placeholders are filled per argv element, so one element stays one
  element whatever a value contains (no shell, no splitting). A value may still
  start with `-`; put placeholders after `--` or in `--flag={value}` form when
  the vendor CLI would read it as an option.
- Working directory stateDir, own session (process group), hard timeout that
  kills the whole group, bounded output redacted before anyone sees it.
"""

from __future__ import annotations

import logging
import os
import string
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path

import anyio
import msgspec
from anyio.abc import ByteReceiveStream, ByteSendStream

from ..errors import VENDOR_COMMAND_FAILED, RpcError
from ..process_group import LaunchPlan, spawn
from ..redact import redact

MAX_OUTPUT_BYTES = 1024 * 1024  # per stream; the tail is kept
ERROR_STDERR_CHARS = 4000  # stderr tail carried in the -32014 error data
_REAP_GRACE = 5.0
_DRAIN_GRACE = 0.5  # output still arriving after the command exited

log = logging.getLogger(__name__)


class VendorCommandError(ValueError):
    """A vendor command is not configured, or its template or arguments are invalid."""


class VendorResult(msgspec.Struct, frozen=True):
    exit_code: int
    stdout: str  # redacted, at most MAX_OUTPUT_BYTES of the tail
    stderr: str
    truncated: bool = False


class VendorCommand:
    """An argv template read from one environment variable.

    The variable holds a JSON array of strings (`["vendor", "send", "--to", "{peer}"]`)
    or a shell-style string split with `shlex` (never run by a shell).
    """

    __slots__ = ("env_var", "template", "_fields")

    def __init__(self, env_var: str, template: Sequence[str]) -> None:
        if not template or not all(isinstance(part, str) for part in template):
            raise VendorCommandError(f"{env_var} must be a non-empty list of strings")
        self.env_var = env_var
        self.template = tuple(template)
        self._fields = [_parse(env_var, part) for part in self.template]

    @classmethod
    def from_env(cls, env_var: str, environ: Mapping[str, str] | None = None) -> VendorCommand:
        raw = (os.environ if environ is None else environ).get(env_var, "").strip()
        if not raw:
            raise VendorCommandError(f"vendor command {env_var} is not set in the plugin's environment")
        if raw.startswith("["):
            try:
                template = msgspec.json.decode(raw, type=list[str])
            except msgspec.MsgspecError as exc:
                raise VendorCommandError(f"{env_var} is not a JSON array of strings: {exc}") from None
        else:
            import shlex

            template = shlex.split(raw)
        return cls(env_var, template)

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(name for parts in self._fields for _, name in parts if name is not None)

    def format(self, args: Mapping[str, str]) -> list[str]:
        """The argv: each template element with its placeholders filled in, one element each."""
        missing = self.placeholders - args.keys()
        if missing:
            raise VendorCommandError(f"vendor command {self.env_var} needs argument(s) {', '.join(sorted(missing))}")
        argv = []
        for parts in self._fields:
            pieces = []
            for literal, name in parts:
                pieces.append(literal)
                if name is not None:
                    value = args[name]
                    if not isinstance(value, str):
                        raise VendorCommandError(f"argument {name} must be a string, not {type(value).__name__}")
                    if "\x00" in value:
                        raise VendorCommandError(f"argument {name} contains a NUL character")
                    pieces.append(value)
            argv.append("".join(pieces))
        return argv

    def __repr__(self) -> str:
        return f"VendorCommand({self.env_var!r})"


def _parse(env_var: str, part: str) -> list[tuple[str, str | None]]:
    """Split one element into (literal, placeholder) pairs; only plain `{name}` is allowed."""
    try:
        parsed = list(string.Formatter().parse(part))
    except ValueError as exc:
        raise VendorCommandError(f"{env_var}: bad template element {part!r}: {exc}") from None
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is not None and (not name.isidentifier() or spec or conversion):
            raise VendorCommandError(
                f"{env_var}: placeholder {{{name}}} must be a plain {{name}} (no index, attribute, format or conversion)"
            )
        parts.append((literal, name))
    return parts


class VendorRunner:
    """Runs `VendorCommand`s in stateDir; one runner per plugin is enough."""

    def __init__(
        self,
        cwd: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
        secrets: Iterable[str] = (),
    ) -> None:
        self.cwd = os.fspath(cwd)
        self.env = dict(env) if env is not None else None
        self.max_output_bytes = max_output_bytes
        self.secrets = tuple(secrets)

    async def run(
        self,
        command: VendorCommand,
        args: Mapping[str, str] | None = None,
        *,
        timeout: float,
        secrets: Iterable[str] = (),
        input: bytes | None = None,
        check: bool = True,
        on_stdout_line: Callable[[str], Awaitable[None]] | None = None,
    ) -> VendorResult:
        """Run to completion within `timeout` seconds.

        `on_stdout_line` sees each stdout line as it arrives (for progress: an
        installer's QR URL), unredacted: the caller must not log or store it.
        Raises -32014 (`data.exitCode`, `data.stderr` redacted) on a timeout
        (`exitCode` null) and, when `check`, on a non-zero exit.
        """
        if not isinstance(command, VendorCommand):
            raise TypeError("run() takes a VendorCommand (from VendorCommand.from_env), never a raw argv")
        argv = command.format(args or {})
        known = (*self.secrets, *secrets)
        out, err = _Tail(self.max_output_bytes), _Tail(self.max_output_bytes)
        plan = LaunchPlan(tuple(argv), self.env, Path(self.cwd))
        try:
            process = await spawn(plan, stdin=input is not None)
        except OSError as exc:  # not installed, not executable, bad cwd
            raise RpcError(
                VENDOR_COMMAND_FAILED,
                f"vendor command {command.env_var} could not start: {exc.strerror or exc}",
                {"exitCode": None, "stderr": ""},
            ) from None
        finished = False
        drained = anyio.Event()

        async def read_output() -> None:
            async with anyio.create_task_group() as readers:
                readers.start_soon(out.read_from, process.stdout, on_stdout_line)
                readers.start_soon(err.read_from, process.stderr)
            drained.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_output)
                if input is not None:
                    tg.start_soon(_feed, process.stdin, input)
                with anyio.move_on_after(timeout):
                    await process.wait()
                    finished = True
                if finished:
                    # a background child may hold the pipes open: read what is there, then stop
                    with anyio.move_on_after(_DRAIN_GRACE):
                        await drained.wait()
                tg.cancel_scope.cancel()
        finally:
            # always: no child of the command outlives the call (timed out, cancelled or exited)
            try:
                await process.kill_group(kill_timeout=_REAP_GRACE)
            finally:
                await process.aclose()
        timed_out = not finished
        result = VendorResult(
            exit_code=process.returncode if process.returncode is not None else -1,
            stdout=redact(out.text(), known),
            stderr=redact(err.text(), known),
            truncated=out.truncated or err.truncated,
        )
        name = os.path.basename(argv[0])
        if timed_out:
            log.warning("vendor command %s (%s) timed out after %g s", command.env_var, name, timeout)
            raise RpcError(
                VENDOR_COMMAND_FAILED,
                f"vendor command {command.env_var} timed out after {timeout:g} s",
                {"exitCode": None, "stderr": result.stderr[-ERROR_STDERR_CHARS:]},
            )
        log.info("vendor command %s (%s) exited with %d", command.env_var, name, result.exit_code)
        if check and result.exit_code != 0:
            raise RpcError(
                VENDOR_COMMAND_FAILED,
                f"vendor command {command.env_var} failed with exit code {result.exit_code}",
                {"exitCode": result.exit_code, "stderr": result.stderr[-ERROR_STDERR_CHARS:]},
            )
        return result


async def _feed(stream: ByteSendStream | None, data: bytes) -> None:
    if stream is None:
        return
    async with stream:
        try:
            await stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the command exited without reading all of it


class _Tail:
    """The last `limit` bytes of a stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.truncated = False

    async def read_from(
        self, stream: ByteReceiveStream | None, on_line: Callable[[str], Awaitable[None]] | None = None
    ) -> None:
        if stream is None:
            return
        pending = b""
        async for chunk in stream:
            if on_line is not None:
                # bounded like the tail: a line longer than the limit is cut
                *lines, pending = (pending + chunk).split(b"\n")
                pending = pending[-self.limit :]
                for line in lines:
                    await on_line(line.decode("utf-8", "replace"))
            self.buf += chunk
            if len(self.buf) > self.limit:
                del self.buf[: len(self.buf) - self.limit]
                self.truncated = True
        if on_line is not None and pending:
            await on_line(pending.decode("utf-8", "replace"))

    def text(self) -> str:
        return self.buf.decode("utf-8", "replace")
