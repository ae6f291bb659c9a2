"""A hostile plugin for the sandbox tests: tries each escape and reports which ones it reached.

Raw JSON-RPC (no SDK), standard library only. After `initialize` it writes one stderr
line `PROBE-REPORT {json}`; the `probe` method answers the same report, and `exhaust`
tries to go past its process, memory and open-file limits.
"""

import json
import os
import resource
import socket
import subprocess
import sys

PLUGIN_DIR = os.environ.get("PLUGIN_DIR", "")
# <home>/plugins/<id>/<version> -> <home>
HOME = os.path.dirname(os.path.dirname(os.path.dirname(PLUGIN_DIR)))
config: dict = {}


def _reads(path):
    with open(path, "rb") as f:
        return len(f.read(64)) > 0


def _writes(path, keep=False):
    with open(path, "wb") as f:
        f.write(b"escaped")
    if not keep:  # reached is reached; an unsandboxed run must not leave files in the host's folders
        os.unlink(path)
    return True


def _lists(path):
    return len(os.listdir(path)) > 0


def _sees_other_processes():
    # in its own PID namespace a plugin sees only bubblewrap's init, itself and its children
    return sum(entry.isdigit() for entry in os.listdir("/proc")) > 10


def _connects(port):
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return True


def _capabilities():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16) != 0
    return False


def attempts():
    other = config.get("otherPlugin") or "echo"
    host_pid = config.get("hostPid") or 1
    tries = {
        "read_state_db": lambda: _reads(os.path.join(HOME, "state.db")),
        "read_state_db_wal": lambda: _reads(os.path.join(HOME, "state.db-wal")),
        "read_secret_key": lambda: _reads(os.path.join(HOME, "secret-key")),
        "read_admin_token": lambda: _reads(os.path.join(HOME, "admin-token")),
        "write_host_home": lambda: _writes(os.path.join(HOME, "planted")),
        "list_other_plugin_code": lambda: _lists(os.path.join(HOME, "plugins", other)),
        "write_other_plugin_code": lambda: _writes(os.path.join(HOME, "plugins", other, "planted.py")),
        "list_other_plugin_data": lambda: _lists(os.path.join(HOME, "plugin-data", other)),
        "write_own_code": lambda: _writes(os.path.join(PLUGIN_DIR, "planted.py")),
        "write_sdk": lambda: _writes(os.path.join(os.environ["PYTHONPATH"].split(os.pathsep)[-1], "planted.py")),
        "write_system": lambda: _writes("/usr/planted"),
        "write_etc": lambda: _writes("/etc/planted"),
        "read_host_environ": lambda: _reads(f"/proc/{host_pid}/environ"),
        "read_host_cmdline": lambda: _reads(f"/proc/{host_pid}/cmdline"),
        "see_other_processes": _sees_other_processes,
        "signal_host": lambda: os.kill(host_pid, 0) is None,
        "read_shadow": lambda: _reads("/etc/shadow"),
        "list_root_home": lambda: bool({".bashrc", ".profile", ".ssh", ".bash_history"} & set(os.listdir("/root"))),
        "network_to_host": lambda: _connects(config.get("hostPort") or 8080),
        "capabilities": _capabilities,
        "root_uid": lambda: os.getuid() == 0,
    }
    reached = []
    for name, attempt in tries.items():
        try:
            if attempt():
                reached.append(name)
        except (OSError, ValueError):
            pass
    own_data_writable = False
    try:
        own_data_writable = _writes(os.path.join(os.environ["HOME"], "mine.txt"), keep=True)
    except OSError:
        pass
    return {
        "reached": reached,
        "tried": sorted(tries),
        "uid": os.getuid(),
        "ownDataWritable": own_data_writable,
        "limits": {
            "memoryBytes": resource.getrlimit(resource.RLIMIT_AS)[1],
            "openFiles": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
            "processes": resource.getrlimit(resource.RLIMIT_NPROC)[1],
        },
    }


def exhaust(params):
    """Go past each limit; how far it got."""
    children, started = [], 0
    for _ in range(params.get("processes", 64)):
        try:
            children.append(subprocess.Popen(["sleep", "30"]))
            started += 1
        except OSError:
            break
    for child in children:
        child.kill()
        child.wait()
    files, opened = [], 0
    for _ in range(params.get("files", 256)):
        try:
            files.append(open(os.devnull, "rb"))
            opened += 1
        except OSError:
            break
    for f in files:
        f.close()
    allocated = True
    try:
        blob = bytearray(params.get("memoryBytes", 1 << 30))
        blob[-1] = 1
    except MemoryError:
        allocated = False
    return {"processesStarted": started, "filesOpened": opened, "memoryAllocated": allocated}


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        method, request_id = msg.get("method"), msg.get("id")
        params = msg.get("params") or {}
        if method == "initialize":
            config.update(params.get("config") or {})
            send(
                {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "result": {
                        "protocolVersion": 1,
                        "plugin": {"name": "sandbox_probe", "version": "1.0.0"},
                        "connectors": [],
                        "capabilities": {},
                    },
                }
            )
        elif method == "initialized":
            sys.stderr.write("PROBE-REPORT " + json.dumps(attempts()) + "\n")
            sys.stderr.flush()
        elif method == "health":
            send({"jsonrpc": "2.0", "id": request_id, "result": {"status": "ok", "detail": None, "connections": None}})
        elif method == "probe":
            send({"jsonrpc": "2.0", "id": request_id, "result": attempts()})
        elif method == "exhaust":
            send({"jsonrpc": "2.0", "id": request_id, "result": exhaust(params)})
        elif request_id is not None:
            result = {} if method == "shutdown" else None
            if result is None:
                send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": f"no {method}"}})
            else:
                send({"jsonrpc": "2.0", "id": request_id, "result": result})


if __name__ == "__main__":
    main()
