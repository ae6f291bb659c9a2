"""Several hosts on one PostgreSQL (SPEC 10): what one run on 2 cores can measure, and a projection of the rest.

    .venv/bin/python bench/scale.py [--quick] [--json] [--messages N]

Everything runs on this machine, in one run, against a PostgreSQL cluster of the
bench's own (initdb in a temporary folder, pg_stat_statements loaded, fsync and
synchronous_commit on, as in production), so other users of the machine's server
neither slow it down nor show up in its counters. Hosts are real `serve`
processes (`bench._serve ours`: the CLI's composition root) with the echo
plugin connected; the load generator (`bench/_loadgen.py`) POSTs BridgeEvents.

1. Bridge ingest (POSTs/s answered 200) and end to end (bridge -> inbox -> echo
   handler -> outbox -> the plugin's `message.send`, until the last delivery is
   `sent`), one host on PostgreSQL next to one host on SQLite. Target: PG >= 50%.
2. Coordination cost: one host pinned to core 0 (`taskset`) against two hosts
   pinned to that same core together (leases, heartbeats, SKIP LOCKED claims of
   two consumers), PostgreSQL and the load generator on core 1. Target: >= 90%.
3. Per message, from that PostgreSQL run: statements (pg_stat_statements calls,
   BEGIN/COMMIT included: each is one round trip, the driver does not pipeline),
   transactions, rows written (pg_stat_database), CPU seconds of the database and
   of the host; from them, a projection for 2, 4 and 8 hosts of 2 cores against
   one PostgreSQL server of 2 cores.
4. Failover: median of 5 SIGKILLs of the lease owner on the SPEC lease times
   (TTL 10 s, renewal every 3 s), until the survivor's plugin process has the
   connection (`tests/plugins/lease_probe` logs it). Target: <= 12 s.
5. One claim (`inbox.claim_ready(16)`) with 100 and with 10,000 entries waiting
   in 64 conversations (16 heads claimed either way). Target: flat (10k / 100 <= 1.5).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO, Report, free_port, median, parser, progress  # noqa: E402
from channel_runtime.messages import InboundMessage  # noqa: E402
from channel_runtime.store import open_store  # noqa: E402
from plugin_host.package import pack_directory  # noqa: E402

ADMIN = "bench-admin-token-0123456789"
BRIDGE = "bench-bridge-token-0123456789"
SECRET_KEY = "bench-shared-credentials-key-0123456789"
PG_BIN = (
    Path("/usr/lib/postgresql")
    / (sorted(os.listdir("/usr/lib/postgresql"))[-1] if Path("/usr/lib/postgresql").is_dir() else "15")
    / "bin"
)
HAS_TASKSET = shutil.which("taskset") is not None
CLAIM_CONVERSATIONS = 64  # the same heads either way: every claim of 16 finds 16, only the backlog behind them grows


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if cpu is not None and HAS_TASKSET else argv


def proc_cpu(pid: int) -> float:
    """CPU seconds of a process and of its children, live and reaped."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks  # utime stime cutime cstime
    except (OSError, IndexError, ValueError):
        return 0.0
    for child in _children(pid):
        total += proc_cpu(child)
    return total


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# ---------------------------------------------------------------- a PostgreSQL of the bench's own


class PrivatePostgres:
    def __init__(self, cpu: int | None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self.cpu = cpu
        data = self.dir / "data"
        self._as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"])
        (data / "postgresql.conf").open("a").write(
            f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.dir}'\n"
            "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track_utility = on\n"
            "max_connections = 200\nfsync = on\nsynchronous_commit = on\n"
        )
        self._as_postgres(
            pinned([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"), "-w", "start"], cpu)
        )
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        self.postmaster = int((data / "postmaster.pid").read_text().split()[0])

    @staticmethod
    def _as_postgres(argv: list[str]) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, cwd="/tmp")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def fresh(self, name: str) -> str:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def counters(self, database: str) -> dict[str, float]:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            statements = conn.execute(
                "SELECT COALESCE(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
                " WHERE d.datname = %s",
                (database,),
            ).fetchone()
            db = conn.execute(
                "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datname = %s",
                (database,),
            ).fetchone()
        return {
            "statements": float(statements[0]) if statements else 0.0,
            "commits": float(db[0]) if db else 0.0,
            "rows": float(db[1]) if db else 0.0,
            "cpu": proc_cpu(self.postmaster),
        }

    def reset(self) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")

    def stop(self) -> None:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.dir / "data"),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            cwd="/tmp",
        )
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- hosts


class Host:
    def __init__(self, name: str, work: Path, store: str, *, cpu: int | None, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.home = work / name
        self.log = open(work / f"{name}.log", "ab")
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CHANNEL_RUNTIME_")}
        environ.update(
            {
                "CHANNEL_RUNTIME_STORE": store,
                "CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN,
                "CHANNEL_RUNTIME_BRIDGE_TOKEN": BRIDGE,
                "CHANNEL_RUNTIME_SECRET_KEY": SECRET_KEY,
                "CHANNEL_RUNTIME_NODE_ID": name,
                "PYTHONPATH": str(REPO),
                **env,
            }
        )
        argv = [sys.executable, "-m", "bench._serve", "ours", "--port", str(self.port), "--home", str(self.home)]
        argv += ["--handler", "channel_runtime.runtime:echo_handler"]
        self.proc = subprocess.Popen(pinned(argv, cpu), env=environ, cwd=REPO, stdout=self.log, stderr=self.log)

    def call(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json") -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=body,
            method=method,
            headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": content_type},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read() or b"null")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"host {self.name} exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"host {self.name} did not become ready")

    def plugin_running(self, plugin_id: str) -> bool:
        try:
            return self.call("GET", f"/api/plugins/{plugin_id}")["state"] == "running"
        except OSError:
            return False

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def stop(self, sig: int = signal.SIGINT) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def install_and_connect(host: Host, plugin_dir: Path, kind: str, work: Path) -> str:
    archive = pack_directory(plugin_dir, work / f"{kind}.zip")
    host.call("POST", "/api/plugins", archive.read_bytes(), "application/zip")
    plugin_id = json.loads((plugin_dir / "plugin.json").read_text())["id"]
    host.call("POST", f"/api/plugins/{plugin_id}/enable", b"{}")
    wait(lambda: host.plugin_running(plugin_id), 60, f"{plugin_id} running")
    started = host.call("POST", "/api/connector-sessions", json.dumps({"kind": kind}).encode())
    connection_id = str(started["connection"]["connectionId"])
    wait(lambda: host.call("GET", f"/api/connections/{connection_id}")["status"] == "connected", 30, "connected")
    return connection_id


def sent_count(store: str) -> int:
    if store.startswith("sqlite:///"):
        conn = sqlite3.connect(f"file:{store.removeprefix('sqlite:///')}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE status = 'sent'").fetchone()[0])
        finally:
            conn.close()
    with psycopg.connect(store, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM outbox WHERE status = 'sent'").fetchone()
    return int(row[0]) if row else 0


def load(hosts: list[Host], connection_id: str, prefix: str, count: int, cpu: int | None) -> list[dict[str, Any]]:
    """One load generator per host, `count` events spread over them; their JSON results."""
    procs = [
        subprocess.Popen(
            pinned(
                [
                    sys.executable,
                    str(REPO / "bench/_loadgen.py"),
                    "--port",
                    str(host.port),
                    "--token",
                    BRIDGE,
                    "--connection-id",
                    connection_id,
                    "--prefix",
                    f"{prefix}{i}",
                    "--count",
                    str(count // len(hosts)),
                    "--connections",
                    str(max(4, 32 // len(hosts))),
                    "--peers",
                    "64",
                ],
                cpu,
            ),
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        for i, host in enumerate(hosts)
    ]
    return [json.loads(p.communicate(timeout=600)[0]) for p in procs]


def end_to_end(
    hosts: list[Host], store: str, connection_id: str, count: int, *, load_cpu: int | None, prefix: str
) -> dict[str, float]:
    """POST `count` events; ingest = POSTs/s; e2e = messages/s until every echo reply is `sent`."""
    before = sent_count(store)
    cpu_before = sum(h.cpu() for h in hosts)
    results = load(hosts, connection_id, prefix, count, load_cpu)
    first = min(r["first"] for r in results)
    posts = sum(r["requests"] for r in results)
    ingest_seconds = max(r["last"] for r in results) - first
    wait(lambda: sent_count(store) - before >= posts, 600, "every reply sent")
    done = time.time()
    return {
        "messages": float(posts),
        "ingest": posts / ingest_seconds,
        "e2e": posts / (done - first),
        "ok": float(sum(r["statuses"].get("200", 0) for r in results)),
        "host_cpu": sum(h.cpu() for h in hosts) - cpu_before,
    }


# ---------------------------------------------------------------- the parts


def part_throughput(report: Report, pg: PrivatePostgres, work: Path, count: int, repeats: int) -> dict[str, Any]:
    rows = []
    figures: dict[str, dict[str, float]] = {}
    for backend in ("sqlite", "postgresql"):
        runs = []
        for r in range(repeats):
            progress(f"throughput: {backend}, run {r + 1}/{repeats}")
            run_dir = work / f"tp-{backend}-{r}"
            run_dir.mkdir()
            store = f"sqlite:///{run_dir / 'host' / 'state.db'}" if backend == "sqlite" else pg.fresh(f"tp{r}")
            host = Host("host", run_dir, store, cpu=None, env={})
            try:
                host.wait_ready()
                connection_id = install_and_connect(host, REPO / "plugins" / "echo", "echo", run_dir)
                end_to_end([host], store, connection_id, count // 5, load_cpu=None, prefix="warm")  # warm-up
                runs.append(end_to_end([host], store, connection_id, count, load_cpu=None, prefix="run"))
            finally:
                host.stop()
        figures[backend] = {k: median([run[k] for run in runs]) for k in runs[0]}
        rows.append([backend, figures[backend]["ingest"], figures[backend]["e2e"]])
    report.table("One host: bridge ingest and end to end, messages/s (median)", ["store", "ingest/s", "e2e/s"], rows)
    for what in ("ingest", "e2e"):
        ratio = 100 * figures["postgresql"][what] / figures["sqlite"][what]
        report.check(f"PostgreSQL {what} vs SQLite, one host", ratio, ">= 50", "%")
    return figures


def part_coordination(report: Report, pg: PrivatePostgres, work: Path, count: int, repeats: int) -> dict[str, Any]:
    host_cpu, other_cpu = (0, 1) if HAS_TASKSET and (os.cpu_count() or 1) >= 2 else (None, None)
    if host_cpu is None:
        report.note("taskset or a second core is missing: the coordination run is not pinned")
    results: dict[str, dict[str, float]] = {}
    per_message: dict[str, float] = {}
    for hosts_n in (1, 2):
        runs = []
        for r in range(repeats):
            progress(f"coordination: {hosts_n} host(s) on one core, run {r + 1}/{repeats}")
            run_dir = work / f"co-{hosts_n}-{r}"
            run_dir.mkdir()
            database = f"co{hosts_n}_{r}"
            store = pg.fresh(database)
            hosts = [Host(f"host-{i}", run_dir, store, cpu=host_cpu, env={}) for i in range(hosts_n)]
            try:
                for h in hosts:
                    h.wait_ready()
                connection_id = install_and_connect(hosts[0], REPO / "plugins" / "echo", "echo", run_dir)
                for h in hosts[1:]:
                    wait(lambda h=h: h.plugin_running("echo"), 60, "echo running on every host")
                end_to_end(hosts, store, connection_id, count // 5, load_cpu=other_cpu, prefix="warm")
                pg.reset()
                before = pg.counters(database)
                run = end_to_end(hosts, store, connection_id, count, load_cpu=other_cpu, prefix="run")
                after = pg.counters(database)
                for key in ("statements", "commits", "rows", "cpu"):
                    run[f"db_{key}"] = (after[key] - (0.0 if key == "statements" else before[key])) / run["messages"]
                run["host_cpu_per_message"] = run["host_cpu"] / run["messages"]
                runs.append(run)
            finally:
                for h in hosts:
                    h.stop()
        results[str(hosts_n)] = {k: median([run[k] for run in runs]) for k in runs[0]}
    one, two = results["1"], results["2"]
    report.table(
        "Coordination: hosts pinned to one core, PostgreSQL and load on the other (median)",
        ["hosts on core 0", "ingest/s", "e2e/s", "e2e vs one host"],
        [
            ["1", one["ingest"], one["e2e"], "100%"],
            ["2", two["ingest"], two["e2e"], f"{100 * two['e2e'] / one['e2e']:.0f}%"],
        ],
    )
    report.check(
        "two hosts on one core vs one host (leases + SKIP LOCKED claims)", 100 * two["e2e"] / one["e2e"], ">= 90", "%"
    )
    for key in ("db_statements", "db_commits", "db_rows", "db_cpu", "host_cpu_per_message"):
        per_message[key] = one[key]
    report.table(
        "Per message on PostgreSQL (one host; from pg_stat_statements, pg_stat_database and /proc)",
        ["statements (= round trips)", "transactions", "rows written", "DB CPU ms", "host CPU ms"],
        [
            [
                one["db_statements"],
                one["db_commits"],
                one["db_rows"],
                1000 * one["db_cpu"],
                1000 * one["host_cpu_per_message"],
            ]
        ],
    )
    # the projection: hosts of 2 cores, one database server of 2 cores
    host_capacity = 2 / one["host_cpu_per_message"] if one["host_cpu_per_message"] else float("nan")
    db_capacity = 2 / one["db_cpu"] if one["db_cpu"] else float("nan")
    efficiency = min(1.0, two["e2e"] / one["e2e"])
    rows = []
    for n in (1, 2, 4, 8):
        hosts_limit = n * host_capacity * (efficiency if n > 1 else 1.0)
        rows.append(
            [
                n,
                hosts_limit,
                db_capacity,
                min(hosts_limit, db_capacity),
                "database" if db_capacity < hosts_limit else "hosts",
            ]
        )
    report.table(
        "Projection: messages/s for hosts of 2 cores on one PostgreSQL of 2 cores (from the CPU per message)",
        ["hosts", "hosts could do", "database could do", "projected", "bound by"],
        rows,
    )
    report.note(
        f"projection = min(hosts x 2 cores / host CPU per message x coordination efficiency {efficiency:.2f}, "
        "2 cores / database CPU per message); it assumes CPU bounds both and the network adds latency, not load"
    )
    return {"runs": results, "per_message": per_message}


def part_failover(report: Report, pg: PrivatePostgres, work: Path, kills: int) -> list[float]:
    store = pg.fresh("failover")
    env: dict[str, str] = {}  # SPEC lease times: the defaults
    (work / "fo").mkdir(exist_ok=True)
    hosts = {name: Host(name, work / "fo", store, cpu=None, env=env) for name in ("node-a", "node-b")}
    times: list[float] = []
    try:
        for h in hosts.values():
            h.wait_ready()
        connection_id = install_and_connect(hosts["node-a"], REPO / "tests" / "plugins" / "lease_probe", "probe", work)
        wait(lambda: all(h.plugin_running("probe") for h in hosts.values()), 60, "probe running on both")

        def records() -> list[dict[str, Any]]:  # each probe writes in its host's data folder
            found = [
                json.loads(line)
                for path in (work / "fo").glob("*/plugin-data/probe/probe.jsonl")
                for line in path.read_text().splitlines()
                if line.strip()
            ]
            return sorted(found, key=lambda r: r["t"])

        def owner() -> str | None:
            for h in hosts.values():
                try:
                    for node in h.call("GET", "/api/nodes"):
                        if node["live"] and any(x["connectionId"] == connection_id for x in node["leases"]):
                            return str(node["nodeId"])
                except OSError:
                    continue
            return None

        for k in range(kills):
            progress(f"failover: SIGKILL {k + 1}/{kills}")
            name = wait(owner, 60, "an owner")
            time.sleep(1.0)
            victim = hosts[name]
            killed_at = time.time()
            victim.stop(signal.SIGKILL)
            resumed = wait(lambda since=killed_at: _connected_after(records(), connection_id, since), 60, "a resume")
            times.append(resumed - killed_at)
            hosts[name] = Host(name, work / "fo", store, cpu=None, env=env)
            hosts[name].wait_ready()
            wait(lambda h=hosts[name]: h.plugin_running("probe"), 60, "probe running again")
    finally:
        for h in hosts.values():
            h.stop()
    report.table(
        "Failover: SIGKILL of the lease owner until the survivor's plugin has the connection (TTL 10 s, renew 3 s)",
        ["kills", "median s", "min s", "max s"],
        [[len(times), median(times), min(times), max(times)]],
    )
    report.check("failover, median of SIGKILLs", median(times), "<= 12", " s")
    return times


def _connected_after(records: list[dict[str, Any]], connection_id: str, since: float) -> float | None:
    return next(
        (r["t"] for r in records if r["event"] == "connect" and r["connectionId"] == connection_id and r["t"] > since),
        None,
    )


async def _claim_cost(url: str, waiting: int, samples: int) -> float:
    async with await open_store(url) as store:
        for n in range(waiting):
            await store.inbox.commit(
                InboundMessage(
                    message_id=f"m{n}",
                    channel_id="ch",
                    kind="echo",
                    peer_id=f"p{n % CLAIM_CONVERSATIONS}",
                    peer_type="dm",
                    content="x",
                )
            )
        times = []
        for _ in range(samples):
            start = time.perf_counter()
            claimed = await store.inbox.claim_ready(16, lease=60.0, owner="bench")
            times.append(time.perf_counter() - start)
            assert claimed
            await store.inbox.release_claims("bench")
        return median(times)


def part_claims(report: Report, pg: PrivatePostgres, samples: int) -> dict[str, float]:
    costs = {}
    for waiting in (100, 10_000):
        progress(f"claims: {waiting} entries waiting")
        costs[str(waiting)] = anyio.run(_claim_cost, pg.fresh(f"claims{waiting}"), waiting, samples)
    report.table(
        "One claim of 16 on PostgreSQL (median)",
        ["entries waiting", "ms per claim"],
        [[int(k), 1000 * v] for k, v in costs.items()],
    )
    report.check("claim cost, 10,000 waiting / 100 waiting", costs["10000"] / costs["100"], "<= 1.5")
    return costs


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=None, help="events per measured run (default 3000; --quick 600)")
    args = p.parse_args()
    count = args.messages or (600 if args.quick else 3000)
    repeats = 1 if args.quick else 3
    report = Report("scale", args.quick)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    pg = PrivatePostgres(cpu=1 if HAS_TASKSET and (os.cpu_count() or 1) >= 2 else None)
    try:
        report.data["throughput"] = part_throughput(report, pg, work, count, repeats)
        report.data["coordination"] = part_coordination(report, pg, work, count, repeats)
        report.data["failover"] = part_failover(report, pg, work, 2 if args.quick else 5)
        report.data["claims"] = part_claims(report, pg, 50 if args.quick else 300)
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    report.emit(args.json)


if __name__ == "__main__":
    main()
