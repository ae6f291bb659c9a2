"""`big` answers with a line larger than any sane limit; `big_partial` sends a huge line in pieces."""

import sys
import time

import _wire


def big(request_id, params):
    _wire.result(request_id, {"blob": "A" * params.get("size", 100_000)})


def big_partial(request_id, params):
    # an over-limit line arriving in several writes, then a valid answer
    out = sys.stdout.buffer
    for _ in range(5):
        out.write(b"B" * 40_000)
        out.flush()
        time.sleep(0.01)
    out.write(b"\n")
    out.flush()
    _wire.result(request_id, {"ok": True})


_wire.serve("oversized", {"big": big, "big_partial": big_partial})
