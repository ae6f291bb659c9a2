"""A transparent tap: runs the plugin behind it and relays stdio both ways, recording every line.

Used as a `command` runtime plugin so that the real host talks to a real plugin
through it. Environment (listed in the manifest's `env`):
- TAP_LOG: the record file, one JSON line per message,
  `{"dir": "host_to_plugin"|"plugin_to_host", "line": ...}`;
- TAP_TARGET: the argv (a JSON list) of the plugin behind the tap;
- TAP_TARGET_DIR: that plugin's folder (its PLUGIN_DIR, and first on PYTHONPATH).
"""

import json
import os
import subprocess
import sys
import threading

TARGET_DIR = os.environ["TAP_TARGET_DIR"]
log = open(os.environ["TAP_LOG"], "a", buffering=1)
lock = threading.Lock()
env = dict(os.environ, PYTHONPATH=TARGET_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""), PLUGIN_DIR=TARGET_DIR)
child = subprocess.Popen(json.loads(os.environ["TAP_TARGET"]), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)


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
