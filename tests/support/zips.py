"""Builders of plugin zips for tests, malicious ones included (SPEC 5.1).

Everything is made in memory with zipfile, and patched at the byte level where
zipfile refuses to write the lie (sizes, flags).
"""

from __future__ import annotations

import io
import json
import random
import stat
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REG = stat.S_IFREG
DIR = stat.S_IFDIR


def noise(n: int, seed: int = 7) -> bytes:
    """`n` reproducible bytes that do not compress."""
    return random.Random(seed).randbytes(n)


def manifest(**overrides: Any) -> dict[str, Any]:
    """A valid plugin.json as a dict; keyword arguments replace fields (None removes one)."""
    m: dict[str, Any] = {
        "manifestVersion": 1,
        "id": "demo_plugin",
        "name": "Demo",
        "version": "1.0.0",
        "protocolVersion": 1,
        "runtime": {"type": "python", "module": "demo_plugin"},
        "connectors": [{"kind": "demo", "displayName": "Demo", "authType": "qr", "capabilities": ["send_text"]}],
    }
    for key, value in overrides.items():
        if value is None:
            m.pop(key, None)
        else:
            m[key] = value
    return m


def manifest_bytes(**overrides: Any) -> bytes:
    return json.dumps(manifest(**overrides), indent=2).encode()


@dataclass
class Entry:
    name: str
    data: bytes = b""
    mode: int = REG | 0o644  # unix st_mode stored in external_attr >> 16
    compress: int = zipfile.ZIP_DEFLATED


def build(entries: list[Entry]) -> bytes:
    """A zip holding exactly `entries`, in order, duplicates and odd names included."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on duplicate names; we want them
        with zipfile.ZipFile(buf, "w") as zf:
            for e in entries:
                info = zipfile.ZipInfo(e.name, date_time=(2024, 1, 1, 0, 0, 0))
                info.create_system = 3
                info.external_attr = (e.mode & 0xFFFF) << 16
                if stat.S_ISDIR(e.mode):
                    info.external_attr |= 0x10  # MS-DOS directory flag, as zip tools write it
                info.compress_type = e.compress
                zf.writestr(info, e.data)
    return buf.getvalue()


def plugin_files(plugin_id: str = "demo_plugin", version: str = "1.0.0", **overrides: Any) -> list[Entry]:
    """A small valid package: manifest, a python package and an executable script."""
    return [
        Entry(
            "plugin.json",
            manifest_bytes(id=plugin_id, version=version, runtime={"type": "python", "module": plugin_id}, **overrides),
        ),
        Entry(f"{plugin_id}/", mode=DIR | 0o755),
        Entry(f"{plugin_id}/__init__.py", b""),
        Entry(f"{plugin_id}/__main__.py", b"print('hello from the plugin')\n"),
        Entry("bin/run", b"#!/bin/sh\nexec python -m demo_plugin\n", mode=REG | 0o755),
    ]


def valid_zip(**kwargs: Any) -> bytes:
    return build(plugin_files(**kwargs))


def with_extra(*extra: Entry, files: list[Entry] | None = None) -> bytes:
    """A valid package plus `extra` entries (the thing under test)."""
    return build((files if files is not None else plugin_files()) + list(extra))


def wrapped(top: str = "demo_plugin-1.0.0") -> bytes:
    """The valid package inside a single top-level folder."""
    entries = [Entry(f"{top}/", mode=DIR | 0o755)]
    for e in plugin_files():
        entries.append(Entry(f"{top}/{e.name}", e.data, e.mode, e.compress))
    return build(entries)


# ---------------------------------------------------------------- byte-level patches

_LOCAL = b"PK\x03\x04"
_CENTRAL = b"PK\x01\x02"


def _central_records(data: bytes) -> list[tuple[int, str]]:
    """(offset, name) of each central-directory record."""
    eocd = data.rfind(b"PK\x05\x06")
    _, _, _, _, total, size, offset, _ = struct.unpack("<4s4H2LH", data[eocd : eocd + 22])
    records = []
    pos = offset
    for _ in range(total):
        assert data[pos : pos + 4] == _CENTRAL
        n, m, k = struct.unpack_from("<3H", data, pos + 28)
        records.append((pos, data[pos + 46 : pos + 46 + n].decode("utf-8")))
        pos += 46 + n + m + k
    return records


def patch_entry(
    data: bytes,
    name: str,
    *,
    file_size: int | None = None,
    compress_size: int | None = None,
    flag_bits: int | None = None,
) -> bytes:
    """Rewrite header fields of entry `name` in both its local header and its central record."""
    out = bytearray(data)
    for pos, entry_name in _central_records(data):
        if entry_name != name:
            continue
        local = struct.unpack_from("<L", data, pos + 42)[0]
        assert data[local : local + 4] == _LOCAL
        if flag_bits is not None:
            struct.pack_into("<H", out, pos + 8, flag_bits)
            struct.pack_into("<H", out, local + 6, flag_bits)
        if compress_size is not None:
            struct.pack_into("<L", out, pos + 20, compress_size)
            struct.pack_into("<L", out, local + 18, compress_size)
        if file_size is not None:
            struct.pack_into("<L", out, pos + 24, file_size)
            struct.pack_into("<L", out, local + 22, file_size)
        return bytes(out)
    raise KeyError(name)


def corrupt_data(data: bytes, name: str) -> bytes:
    """Flip bytes in the middle of the stored data of entry `name`."""
    out = bytearray(data)
    for pos, entry_name in _central_records(data):
        if entry_name == name:
            local = struct.unpack_from("<L", data, pos + 42)[0]
            csize = struct.unpack_from("<L", data, pos + 20)[0]
            n, m = struct.unpack_from("<2H", data, local + 26)
            start = local + 30 + n + m
            for i in range(start + csize // 3, start + csize // 3 + max(4, csize // 3)):
                out[i] ^= 0xFF
            return bytes(out)
    raise KeyError(name)


# ---------------------------------------------------------------- streams and trees


class ZeroStream(io.RawIOBase):
    """A stream of `total` zero bytes that counts what was read from it."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.produced = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        left = self.total - self.produced
        n = left if n is None or n < 0 else min(n, left)
        self.produced += n
        return bytes(n)


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under `root` with its mode and (for files) content."""
    tree: dict[str, tuple[int, bytes | None]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = path.relative_to(root).as_posix()
        tree[rel] = (st.st_mode, path.read_bytes() if stat.S_ISREG(st.st_mode) else None)
    return tree


# ---------------------------------------------------------------- bombs


def bomb_zip(size: int, method: int = zipfile.ZIP_BZIP2, declared_ratio: int = 50) -> bytes:
    """A valid package plus `bomb.bin`: `size` zeros compressed with `method`, streamed (never held whole).

    Its headers declare `declared_ratio`:1 (so a check of the declared sizes lets it through),
    as the red team's 1,353-byte BZIP2 zip did.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for e in plugin_files():
            info = zipfile.ZipInfo(e.name, date_time=(2024, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = (e.mode & 0xFFFF) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, e.data)
        info = zipfile.ZipInfo("bomb.bin", date_time=(2024, 1, 1, 0, 0, 0))
        info.compress_type = method
        with zf.open(info, "w", force_zip64=False) as f:
            zeros = bytes(1 << 20)
            for _ in range(size >> 20):
                f.write(zeros)
    data = buf.getvalue()
    compressed = zipfile.ZipFile(io.BytesIO(data)).getinfo("bomb.bin").compress_size
    return patch_entry(data, "bomb.bin", file_size=compressed * declared_ratio)


def _stored_local(name: bytes, data: bytes) -> bytes:
    import zlib

    return (
        struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0x21, zlib.crc32(data), len(data), len(data), len(name), 0)
        + name
        + data
    )


def _stored_central(name: bytes, data: bytes, offset: int, mode: int = REG | 0o644) -> bytes:
    import zlib

    return (
        struct.pack(
            "<4s6H3L5H2L",
            b"PK\x01\x02",
            0x0314,
            20,
            0,
            0,
            0,
            0x21,
            zlib.crc32(data),
            len(data),
            len(data),
            len(name),
            0,
            0,
            0,
            0,
            (mode & 0xFFFF) << 16,
            offset,
        )
        + name
    )


def overlapping_zip(copies: int = 3) -> bytes:
    """A valid package whose `outer{i}.bin` entries each hold (as stored data) the next entry whole.

    Every record is well formed and zipfile reads each one, but their bytes are shared: the
    data of `outer0.bin` contains `outer1.bin`'s header and data, and so on (Fifield's
    overlap bomb, stored instead of deflated). Each entry repeats all that follow it.
    """
    files = [(e.name.encode(), e.data, e.mode) for e in plugin_files() if not e.name.endswith("/")]
    out = bytearray()
    central = bytearray()
    for name, data, mode in files:
        central += _stored_central(name, data, len(out), mode)
        out += _stored_local(name, data)
    # the chain, built from the innermost entry outwards
    inner = b"payload " * 64
    chain = [(f"outer{copies}.bin".encode(), inner)]
    blob = _stored_local(chain[0][0], inner)
    for i in range(copies - 1, -1, -1):
        name = f"outer{i}.bin".encode()
        chain.insert(0, (name, blob))
        blob = _stored_local(name, blob)
    base = len(out)
    out += blob
    offset = base
    for name, data in chain:
        central += _stored_central(name, data, offset)
        offset += 30 + len(name)  # the next entry starts where this one's data starts
    end = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(files) + len(chain), len(files) + len(chain), len(central), len(out), 0
    )
    return bytes(out + central + end)
