"""Shared helpers of the bench scripts: medians, PASS/MISS verdicts, tables, JSON output.

Benchmarks print figures, never assert: a 2-core machine is noisy, so each figure
is a median over repeats and is shown next to a reference measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes (a smoke run)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    return p


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def echo_clone_zip(work: Path, plugin_id: str) -> Path:
    """The echo plugin packed under another id and connector kind (benches that need many plugins)."""
    import shutil

    from plugin_host.package import pack_directory

    repo = Path(__file__).resolve().parents[1]
    src = work / plugin_id
    shutil.copytree(repo / "plugins" / "echo", src, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = json.loads((src / "plugin.json").read_text())
    manifest["id"] = plugin_id
    manifest["connectors"][0]["kind"] = plugin_id
    (src / "plugin.json").write_text(json.dumps(manifest))
    return pack_directory(src, work / f"{plugin_id}.zip")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@dataclass
class Check:
    name: str
    value: float
    target: str  # e.g. ">= 50" or "<= 1.3"
    unit: str = ""

    @property
    def passed(self) -> bool:
        op, _, number = self.target.partition(" ")
        bound = float(number)
        if self.value != self.value:  # NaN: not measured
            return False
        return self.value >= bound if op == ">=" else self.value <= bound

    def line(self) -> str:
        verdict = "PASS" if self.passed else "MISS"
        value = "n/a" if self.value != self.value else f"{self.value:,.2f}{self.unit}"
        return f"{verdict}  {self.name}: {value} (target {self.target}{self.unit})"


@dataclass
class Report:
    bench: str
    quick: bool
    tables: list[tuple[str, list[str], list[list[Any]]]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def table(self, title: str, header: list[str], rows: list[list[Any]]) -> None:
        self.tables.append((title, header, rows))

    def check(self, name: str, value: float, target: str, unit: str = "") -> None:
        self.checks.append(Check(name, value, target, unit))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def emit(self, as_json: bool) -> None:
        if as_json:
            doc = {
                "bench": self.bench,
                "quick": self.quick,
                "machine": machine(),
                "tables": [{"title": t, "header": h, "rows": r} for t, h, r in self.tables],
                "checks": [
                    {"name": c.name, "value": c.value, "target": c.target, "pass": c.passed} for c in self.checks
                ],
                "notes": self.notes,
                "data": self.data,
            }
            print(json.dumps(doc, indent=2, default=str))
            return
        m = machine()
        print(
            f"# {self.bench}{' (--quick)' if self.quick else ''}: Python {m['python']}, {m['cpus']} cpus, {m['time']}"
        )
        for title, header, rows in self.tables:
            print()
            print(f"## {title}")
            print(format_table(header, rows))
        if self.checks:
            print()
            for c in self.checks:
                print(c.line())
        for n in self.notes:
            print(f"note: {n}")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(r[i])) for r in [list(header), *cells]) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=False))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=False)))
        )
    return "\n".join(lines)


def progress(text: str) -> None:
    """Progress on stderr, so --json output stays one document."""
    print(text, file=sys.stderr, flush=True)


class Child:
    """A process of a bench (a server, a fake platform): its output kept, stopped with SIGINT (then killed)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], *, stop_timeout: float = 20.0) -> None:
        self.name = name
        self.stop_timeout = stop_timeout
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            argv, env=env, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        """Until `url` answers HTTP (any status); raises when the process exits or the time is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                urllib.request.urlopen(url, timeout=1).read()
                return
            except urllib.error.HTTPError:
                return  # it answers HTTP: up
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become ready:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
