"""Spawns a grandchild in its process group (holding stdout), ignores SIGTERM and stdin EOF.

`pids` reports both pids; `die` makes the plugin exit while the grandchild lives on.
"""

import os
import signal
import subprocess
import sys
import time

import _wire

signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(
    [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
    stdin=subprocess.DEVNULL,  # keeps our stdout and stderr: a dead plugin's pipes stay open
)


def die(request_id, params):
    os._exit(1)


_wire.serve(
    "grandchild",
    {
        "pids": lambda i, p: _wire.result(i, {"pid": os.getpid(), "child": child.pid}),
        "die": die,
    },
)
while True:  # deaf to stdin EOF: only signals end it
    time.sleep(1)
