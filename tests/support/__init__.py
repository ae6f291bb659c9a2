"""Helpers shared by the tests: bounded waiting, free loopback ports, a real `channel-runtime serve`."""

from __future__ import annotations

import inspect
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Wait until `check()` (sync or async) is truthy and return it; fails the test after `timeout`."""
    with anyio.fail_after(timeout):
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            await anyio.sleep(0.02)


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """`eventually` for synchronous tests."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def serve_command() -> list[str]:
    script = Path(sys.executable).with_name("channel-runtime")
    return [str(script)] if script.exists() else [sys.executable, "-m", "channel_runtime_cli.main"]


class ServeProcess:
    """`channel-runtime serve` in a child process on a free port; stdout and stderr kept apart."""

    def __init__(
        self,
        home: Path,
        *,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        command: Sequence[str] | None = None,  # default: this environment's `channel-runtime`
        subcommand: str = "serve",
        port: int | None = None,
    ) -> None:
        """`subcommand` is `serve` or `sidecar` (then on 127.0.0.1); `port` reuses a port (a restart)."""
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("CHANNEL_RUNTIME_", "CONNECTOR_", "BEAVER_"))
        }
        environ.update(env or {})
        self._out = open(home.parent / f"{subcommand}-{self.port}.out", "a+")
        self._err = open(home.parent / f"{subcommand}-{self.port}.err", "a+")
        bind = ["--host", "127.0.0.1"] if subcommand == "sidecar" else []
        self.proc = subprocess.Popen(
            [*(command or serve_command()), subcommand, "--home", str(home), "--port", str(self.port), *bind, *args],
            cwd=cwd,
            env=environ,
            stdout=self._out,
            stderr=self._err,
            text=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited early with {self.proc.returncode}: {self._read(self._err)}")
            try:
                return httpx.get(self.base + "/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout, "serve to become ready")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> tuple[int, str, str]:
        """Signal the server, wait, and return (exit code, stdout, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=timeout)
        out, err = self._read(self._out), self._read(self._err)
        self._out.close()
        self._err.close()
        return self.proc.returncode, out, err

    @staticmethod
    def _read(f: Any) -> str:
        f.flush()
        f.seek(0)
        return f.read()


__all__ = ["REPO", "ServeProcess", "eventually", "free_port", "serve_command", "signal", "wait_for"]
