"""`flood` writes `mb` MiB to stderr from a thread (lines with secrets, one endless line)."""

import sys
import threading

import _wire

done = threading.Event()


def writer(mb: int) -> None:
    err = sys.stderr.buffer
    # one very long line without a newline for 1 MiB
    err.write(b"x" * (1 << 20) + b"\n")
    line = b"flood line with api_key=sk-live-0123456789abcdefABCDEF and more text " * 8 + b"\n"
    total = 0
    while total < mb << 20:
        err.write(line * 64)
        total += len(line) * 64
    err.write(b"flood finished\n")
    err.flush()
    done.set()


def flood(request_id, params):
    threading.Thread(target=writer, args=(params.get("mb", 20),), daemon=True).start()
    _wire.result(request_id, {})


_wire.serve("stderr_flood", {"flood": flood, "flood_done": lambda i, p: _wire.result(i, done.is_set())})
