"""A transparent tap: runs the echo plugin and relays stdio both ways, recording every line.

Used as a `command` runtime plugin so the real host talks to the real SDK plugin
through it; TAP_LOG (listed in the manifest's env) names the record file:
one JSON line per message, `{"dir": "host_to_plugin"|"plugin_to_host", "line": ...}`.
"""

import json
import os
import subprocess
import sys  # noqa: F401 (stdout.buffer)
import threading

ECHO_DIR = os.environ["TAP_ECHO_DIR"]
log = open(os.environ["TAP_LOG"], "a", buffering=1)
lock = threading.Lock()
env = dict(os.environ, PYTHONPATH=ECHO_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""), PLUGIN_DIR=ECHO_DIR)
child = subprocess.Popen(
    [os.environ["TAP_PYTHON"], "-m", "echo_plugin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
)


def record(direction, line):
    with lock:
        log.write(json.dumps({"dir": direction, "line": line.decode()}) + "\n")


def pump(src, dst, direction):
    for line in iter(src.readline, b""):
        record(direction, line.rstrip(b"\n"))
        dst.write(line)
        dst.flush()
    dst.close()


threading.Thread(target=pump, args=(child.stdout, sys.stdout.buffer, "plugin_to_host"), daemon=True).start()
pump(sys.stdin.buffer, child.stdin, "host_to_plugin")
sys.exit(child.wait())
