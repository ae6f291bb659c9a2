"""Fault-injection plugins: raw scripts speaking newline JSON-RPC without the SDK.

`make_spec(tmp_path, "garbage")` lays out a version folder (plugin.json, the
script and the tiny `_wire` helper it imports) and returns its `LaunchSpec`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from plugin_host.manifest import Manifest
from plugin_host.package import pack_directory
from plugin_host.process import LaunchSpec

FAULT_DIR = Path(__file__).resolve().parent
SCRIPTS = (
    "well_behaved",
    "exit_in_handshake",
    "silent_initialize",
    "health_errors",
    "health_stops",
    "garbage",
    "stderr_flood",
    "oversized",
    "grandchild",
    "crash_loop",
)


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def default_host_env() -> dict[str, str]:
    # LANG keeps Python from coercing the C locale (which would add LC_CTYPE to the child's environ)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}


def make_spec(
    tmp_path: Path,
    script: str,
    *,
    plugin_id: str | None = None,
    manifest: Mapping[str, Any] | None = None,
    host_env: Mapping[str, str] | None = None,
    version: str = "1.0.0",
) -> LaunchSpec:
    assert script in SCRIPTS, script
    plugin_id = plugin_id or script
    version_dir = tmp_path / "plugins" / plugin_id / version
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(FAULT_DIR / f"{script}.py", version_dir / f"{script}.py")
    shutil.copy(FAULT_DIR / "_wire.py", version_dir / "_wire.py")
    document = _merge(
        {
            "manifestVersion": 1,
            "id": plugin_id,
            "name": script.replace("_", " "),
            "version": version,
            "protocolVersion": 1,
            "runtime": {"type": "python", "module": script},
            "connectors": [],
            "timeouts": {"handshakeMs": 5000, "healthMs": 2000, "callMs": 5000},
        },
        manifest or {},
    )
    raw = msgspec.json.encode(document)
    (version_dir / "plugin.json").write_bytes(raw)
    return LaunchSpec(
        plugin_id=plugin_id,
        version=version,
        version_dir=version_dir,
        data_dir=tmp_path / "plugin-data" / plugin_id,
        manifest=msgspec.json.decode(raw, type=Manifest),
        host_env=default_host_env() if host_env is None else host_env,
    )


def proc_alive(pid: int) -> bool:
    """Alive and not a zombie (the container's init may never reap orphans)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X")


def live_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid` (a plugin's pid)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def raw_plugin_zip(
    tmp_path: Path, plugin_id: str, script: str = "well_behaved", version: str = "1.0.0", **manifest: object
) -> Path:
    """A packed fault plugin (raw JSON-RPC, no SDK) under `plugin_id`."""
    src = tmp_path / f"src-{plugin_id}-{version}"
    src.mkdir()
    shutil.copy(FAULT_DIR / f"{script}.py", src / f"{script}.py")
    shutil.copy(FAULT_DIR / "_wire.py", src / "_wire.py")
    document = {
        "manifestVersion": 1,
        "id": plugin_id,
        "name": plugin_id,
        "version": version,
        "protocolVersion": 1,
        "runtime": {"type": "python", "module": script},
        "connectors": [
            {
                "kind": plugin_id.replace("-", "_"),
                "displayName": plugin_id,
                "authType": "credentials",
                "capabilities": ["send_text"],
            }
        ],
        "timeouts": {"handshakeMs": 5000, "healthMs": 2000, "callMs": 5000},
        **manifest,
    }
    (src / "plugin.json").write_text(json.dumps(document))
    return pack_directory(src, tmp_path / f"{plugin_id}-{version}.zip")
