"""Dies as soon as it reads `initialize`."""

import sys

import _wire

sys.stdin.buffer.readline()
_wire.log("fatal: cannot start, password=hunter2hunter2")
sys.exit(3)
