"""Prints garbage between valid messages; `spew` floods stdout with garbage lines."""

import sys

import _wire

GARBAGE = [
    b"this is not json",
    b'{"hello": "world"}',
    b"[1, 2, 3]",
    b'{"jsonrpc": "1.0", "id": 7}',
    b'{"jsonrpc": "2.0"}',
]


def echo(request_id, params):
    for line in GARBAGE:
        _wire.write_line(line)
    _wire.result(request_id, params)


def spew(request_id, params):
    line = b"garbage garbage garbage token=abcdef123456 garbage" * 4
    for _ in range(params.get("lines", 10000)):
        sys.stdout.buffer.write(line + b"\n")
    sys.stdout.buffer.flush()
    _wire.result(request_id, {"spewed": params.get("lines", 10000)})


for line in GARBAGE:
    _wire.write_line(line)
_wire.serve("garbage", {"echo": echo, "spew": spew})
