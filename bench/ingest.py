"""Bridge ingest over HTTP with durable commit, against a bare Starlette + SQLite ceiling.

    .venv/bin/python bench/ingest.py [--quick] [--json] [--connections 32] [--seconds 5]

Servers (each a subprocess, `python -m bench._serve`, identical uvicorn settings:
one worker, asyncio loop, h11, access log off, lifespan on):
- ceiling: `bench/_ceiling_app.py`, one SQLite insert (WAL, synchronous=NORMAL) per POST;
- ours: the app `channel-runtime serve` builds (`channel_runtime_cli.compose.build_app`), SQLite
  store in a temp home, bridge token from CHANNEL_RUNTIME_BRIDGE_TOKEN, one connected
  connection created beforehand directly in the store, no-op handler
  (`bench._handlers:noop`), so the inbox workers drain while events arrive;
- ours via the CLI as shipped (`channel-runtime serve ...`, its own uvicorn settings,
  access log on): shown for information, not the target row.
Load: Debian's `wrk` (1 thread, keep-alive connections, `bench/bridge.lua`: a unique
eventId/messageId per request) or, when wrk is missing, `bench/_loadgen.py`.
Servers are measured in turn within each repeat; figures are medians over repeats.

Target: ours >= 60% of the ceiling's requests/s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO, VENV_BIN, Child, Report, free_port, median, parser, progress  # noqa: E402
from channel_runtime.store import open_store  # noqa: E402

BRIDGE_TOKEN = "bench-bridge-token-0123456789"
ADMIN_TOKEN = "bench-admin-token-0123456789"
CONNECTION_ID = "conn_benchingest"
PATH = "/api/channel-connector-bridge/events"


class Server(Child):
    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int, ready_path: str) -> None:
        super().__init__(name, argv, env)
        self.port = port
        self.ready_path = ready_path

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.wait_http(f"http://127.0.0.1:{self.port}{self.ready_path}", timeout)


async def prepare_home(home: Path) -> None:
    """A connected connection, written directly into the store the server will open."""
    store = await open_store(f"sqlite:///{home / 'state.db'}")
    async with store:
        await store.connections.create(
            kind="echo",
            plugin_id="echo",
            channel_id=CONNECTION_ID,
            account_id="acct_bench",
            display_name="bench",
            status="connected",
            connection_id=CONNECTION_ID,
        )


def run_load(port: int, seconds: float, connections: int, prefix: str) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk:
        out = subprocess.run(
            [
                wrk,
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(REPO / "bench/bridge.lua"),
                f"http://127.0.0.1:{port}",
                "--",
                prefix,
                BRIDGE_TOKEN,
                CONNECTION_ID,
            ],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
        out = out.stdout
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        non200 = int(re.search(r"BENCH_NON200 (\d+)", out).group(1))  # type: ignore[union-attr]
        p50 = int(re.search(r"BENCH_P50_US (\d+)", out).group(1)) / 1000  # type: ignore[union-attr]
        p99 = int(re.search(r"BENCH_P99_US (\d+)", out).group(1)) / 1000  # type: ignore[union-attr]
        errors = re.search(r"Socket errors:.*", out)
        return {
            "rps": rps,
            "requests": total,
            "non200": non200,
            "p50_ms": p50,
            "p99_ms": p99,
            "socket_errors": errors.group(0) if errors else "",
            "tool": "wrk",
        }
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench/_loadgen.py"),
            "--port",
            str(port),
            "--token",
            BRIDGE_TOKEN,
            "--connection-id",
            CONNECTION_ID,
            "--prefix",
            prefix,
            "--duration",
            str(seconds),
            "--connections",
            str(connections),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out)
    non200 = sum(v for k, v in result["statuses"].items() if k != "200")
    return {
        "rps": result["rps"],
        "requests": result["requests"],
        "non200": non200,
        "p50_ms": float("nan"),
        "p99_ms": float("nan"),
        "socket_errors": "",
        "tool": "bench/_loadgen.py",
    }


def committed_events(db: Path, table: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--seconds", type=float)
    p.add_argument("--no-cli", action="store_true", help="skip the informational `channel-runtime serve` row")
    args = p.parse_args()
    repeats = 2 if args.quick else 5
    seconds = args.seconds or (3.0 if args.quick else 6.0)
    report = Report("bench/ingest.py: bridge ingest over HTTP, durable commit", args.quick)

    with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir=os.environ.get("BENCH_TMP")) as tmp_text:
        tmp = Path(tmp_text)
        homes = {"ours": tmp / "home-ours", "cli": tmp / "home-cli"}
        for home in homes.values():
            anyio.run(prepare_home, home)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("CHANNEL_RUNTIME_")}
        base_env["PYTHONPATH"] = str(REPO)
        ours_env = {
            **base_env,
            "CHANNEL_RUNTIME_BRIDGE_TOKEN": BRIDGE_TOKEN,
            "CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        py = sys.executable
        specs: list[tuple[str, list[str], dict[str, str], str]] = [
            (
                "ceiling",
                [py, "-m", "bench._serve", "ceiling"],
                {**base_env, "BENCH_CEILING_DB": str(tmp / "ceiling.db")},
                PATH,
            ),
            ("ours", [py, "-m", "bench._serve", "ours", "--home", str(homes["ours"])], ours_env, "/readyz"),
        ]
        if not args.no_cli:
            specs.append(
                (
                    "ours-cli",
                    [
                        str(VENV_BIN / "channel-runtime"),
                        "serve",
                        "--home",
                        str(homes["cli"]),
                        "--handler",
                        "bench._handlers:noop",
                    ],
                    ours_env,
                    "/readyz",
                )
            )
        servers: dict[str, Server] = {}
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in specs}
        try:
            for name, argv, env, ready in specs:
                port = free_port()
                servers[name] = Server(name, [*argv, "--port", str(port)], env, port, ready)
            for server in servers.values():
                server.wait_ready()
            for name, server in servers.items():
                progress(f"warm-up {name} ...")
                run_load(server.port, 1.0, args.connections, f"warm_{name}")
            for rep in range(repeats):
                for name, server in servers.items():
                    progress(f"repeat {rep + 1}/{repeats}: {name} ...")
                    results[name].append(run_load(server.port, seconds, args.connections, f"r{rep}_{name}"))
        finally:
            for server in servers.values():
                server.stop()
        committed = {
            "ceiling": committed_events(tmp / "ceiling.db", "events"),
            "ours": committed_events(homes["ours"] / "state.db", "message_dedupe"),
        }
        if "ours-cli" in servers:
            committed["ours-cli"] = committed_events(homes["cli"] / "state.db", "message_dedupe")

    ceiling = median([r["rps"] for r in results["ceiling"]])
    rows = []
    for name, runs in results.items():
        rps = median([r["rps"] for r in runs])
        rows.append(
            [
                name,
                rps,
                rps / ceiling * 100,
                median([r["p50_ms"] for r in runs]),
                median([r["p99_ms"] for r in runs]),
                sum(r["non200"] for r in runs),
                f"{committed.get(name, 0):,}",
                " ".join(f"{r['rps']:.0f}" for r in runs),
            ]
        )
        if any(r["socket_errors"] for r in runs):
            report.note(f"{name}: {'; '.join(r['socket_errors'] for r in runs if r['socket_errors'])}")
    tool = results["ceiling"][0]["tool"]
    report.table(
        f"bridge POST requests/s ({tool}, 1 thread, {args.connections} connections, {seconds:g} s x {repeats} repeats, "
        "medians; 'committed' = rows durably written, warm-up included)",
        ["server", "req/s", "% of ceiling", "p50 ms", "p99 ms", "non-200", "committed", "each repeat"],
        rows,
    )
    per_rep = [o["rps"] / c["rps"] * 100 for o, c in zip(results["ours"], results["ceiling"], strict=False)]
    report.check("ours / ceiling (medians)", median([r["rps"] for r in results["ours"]]) / ceiling * 100, ">= 60", "%")
    report.note(f"ours / ceiling per repeat: {', '.join(f'{x:.0f}%' for x in per_rep)}")
    report.data = {"results": results, "committed": committed}
    report.emit(args.json)


if __name__ == "__main__":
    main()
