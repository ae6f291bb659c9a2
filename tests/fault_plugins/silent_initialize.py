"""Reads everything, answers nothing (never answers initialize); exits at stdin EOF."""

import _wire

for _ in _wire.messages():
    pass
