"""Host RSS with 20 idle SDK plugins running, beside the RSS of the bare host (target: host ≤ 150 MB).

    .venv/bin/python bench/host_rss.py [--plugins 20]

Each figure comes from a fresh process running the whole admin app's host side
(PluginHost + admin_api imported, lifespan started), with 0 or N enabled copies
of plugins/echo. Plugin processes are separate; their total RSS is shown too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(plugins: int) -> dict[str, float]:
    import anyio

    import admin_api  # noqa: F401  (the host process of `serve` has it loaded)
    from bench._common import echo_clone_zip
    from plugin_host.host import PluginHost

    async def run() -> dict[str, float]:
        with tempfile.TemporaryDirectory() as tmp:
            host = PluginHost(Path(tmp) / "home")
            await host.start()
            try:
                for i in range(plugins):
                    outcome = await host.install(echo_clone_zip(Path(tmp), f"idle_{i:02d}"))
                    await host.enable(outcome.plugin_id)
                await anyio.sleep(1.0)  # let the plugins settle into idle
                states = {s["state"] for s in host.snapshots().values()}
                pids = [s["pid"] for s in host.snapshots().values() if s.get("pid")]
                return {
                    "host_mb": rss_mb(),
                    "plugins_mb": sum(rss_mb(pid) for pid in pids),
                    "running": float(len(pids)),
                    "all_running": float(states <= {"running"}),
                }
            finally:
                await host.stop()

    return anyio.run(run)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--plugins", type=int, default=20)
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child)))
        return
    figures = {}
    for n in (0, args.plugins):
        out = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True, check=True)
        figures[n] = json.loads(out.stdout.strip().splitlines()[-1])
    bare, loaded = figures[0], figures[args.plugins]
    print(f"bare host (no plugins):                 {bare['host_mb']:7.1f} MB RSS")
    print(
        f"host with {int(loaded['running'])} idle SDK plugins running: {loaded['host_mb']:7.1f} MB RSS"
        f"  (target <= 150 MB: {'PASS' if loaded['host_mb'] <= 150 else 'MISS'})"
    )
    print(
        f"  the {int(loaded['running'])} plugin processes together:     {loaded['plugins_mb']:7.1f} MB RSS"
        f"  ({loaded['plugins_mb'] / max(loaded['running'], 1):.1f} MB each)"
    )


if __name__ == "__main__":
    main()
