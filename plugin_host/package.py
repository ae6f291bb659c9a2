"""Plugin packages: validate a zip and install it atomically (SPEC 5.1).

    install_package(source, plugins_dir, *, max_upload=..., max_total=..., max_entries=...,
                    max_ratio=...) -> InstalledPackage
    inspect_package(source, **limits) -> PackageInfo     # every rule, nothing written (`plugin validate`)
    pack_directory(src_dir, out_zip) -> Path              # deterministic zip of a plugin folder
    installed_sha256(version_dir) -> str | None           # digest recorded at install
    sweep_temporary(plugins_dir) -> int                   # at host start: drop leftovers of a crash
    PackageError(code, message, details, status)          # every refusal

`source` is a binary stream, a path to a zip, or bytes (`inspect_package` also
takes a plugin folder). Layout of `plugins_dir`:

    <id>/<version>/                 the extracted package (`plugin.json` at its root)
    <id>/<version>/.package.json    {"id", "version", "sha256", "size", "installedAt"}
    .tmp-*                          spooled uploads and extractions in progress

The sha256 of the archive bytes is computed while the upload is spooled to a
temporary file (cut at `max_upload` + 1 bytes, never held in memory). Every rule
is checked on the central directory first; then the entries are decompressed
into `.tmp-*`, counting the real bytes (headers are never trusted), and the
folder is published with one `os.rename` under an exclusive `flock` on
`plugins_dir`. Re-installing an id+version with the same sha256 changes nothing
(`created=False`); different bytes are a `version_conflict` (409). On any
failure nothing is left behind. Files keep their executable bits (mode 0o644 or
0o755 at most), folders are 0o755.

Decompression is bounded per read: only stored and deflate entries are accepted
(what `pack_directory` writes; zipfile inflates BZIP2 and LZMA reads whole, so a
1 KiB entry could take gigabytes before any check ran). The ratio check counts
an entry's compressed size as at least `RATIO_FLOOR_BYTES` (a 3 KiB file of
spaces is no bomb). Entries whose data overlap another entry's (or the central
directory) are refused: shared data would let 30 KiB expand to hundreds of MB.
A name component over 255 bytes or a name over 1,024 bytes is refused up front
(the file system would refuse it mid-extraction).

Refusal codes (`PackageError.code`, HTTP status in `.status`):
`upload_too_large` 413; `invalid_zip`, `unsupported_compression`, `overlapping_entries`,
`too_many_entries`, `uncompressed_too_large`, `unsafe_path`, `name_too_long`,
`not_regular_file`, `duplicate_entry`, `reserved_name`, `compression_ratio`,
`size_mismatch`, `manifest_missing`, `manifest_too_large`, `manifest_invalid_json`,
`manifest_schema` 400; `version_conflict` 409.
A runtime that cannot start (SPEC 4, checked on the extracted files by
`plugin_host.launch.runtime_argv`; `details.field` names the manifest field):
`runtime_unsafe_path`, `runtime_program_missing`, `runtime_not_executable`,
`runtime_module_missing` 400.
"""

from __future__ import annotations

import copy
import datetime
import fcntl
import hashlib
import io
import json
import os
import shutil
import stat
import struct
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from .errors import Refusal
from .launch import LaunchError, runtime_argv
from .manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, ManifestError, load_manifest

MAX_UPLOAD_BYTES = 50 * 2**20
MAX_TOTAL_BYTES = 200 * 2**20
MAX_ENTRIES = 5000
MAX_RATIO = 100
# the ratio of an entry counts its compressed size as at least this much: small files that
# compress well (a page of spaces) are no bomb, and the total limit bounds them anyway
RATIO_FLOOR_BYTES = 1024
# NAME_MAX of Linux file systems, and a bound on the whole name (PATH_MAX is 4,096 with the home)
MAX_NAME_COMPONENT_BYTES = 255
MAX_NAME_BYTES = 1024
# bounded reads: zipfile inflates a deflate entry at most `n` bytes per read(n); BZIP2 and
# LZMA entries decompress a whole compressed block per read, whatever n is
ALLOWED_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
PACKAGE_INFO_NAME = ".package.json"

_CHUNK = 1 << 20
_TMP_PREFIX = ".tmp-"
_SKIP_NAMES = frozenset({"__pycache__", ".git", ".DS_Store"})
_SKIP_SUFFIXES = (".pyc", ".pyo")
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)

Source = BinaryIO | IO[bytes] | Path | bytes


class PackageError(Refusal):
    """A package refused by a rule of SPEC 5.1."""


@dataclass(frozen=True)
class PackageInfo:
    """A package that passed every rule."""

    manifest: Manifest
    sha256: str
    size: int  # bytes of the archive


@dataclass(frozen=True)
class InstalledPackage:
    id: str
    version: str
    sha256: str
    path: Path  # the version folder
    manifest: Manifest
    created: bool  # False: the same bytes were already installed


@dataclass(frozen=True)
class Limits:
    max_upload: int = MAX_UPLOAD_BYTES
    max_total: int = MAX_TOTAL_BYTES
    max_entries: int = MAX_ENTRIES
    max_ratio: int = MAX_RATIO


# ---------------------------------------------------------------- public API


def install_package(
    source: Source,
    plugins_dir: Path,
    *,
    max_upload: int = MAX_UPLOAD_BYTES,
    max_total: int = MAX_TOTAL_BYTES,
    max_entries: int = MAX_ENTRIES,
    max_ratio: int = MAX_RATIO,
) -> InstalledPackage:
    """Validate the zip and publish it as `plugins_dir/<id>/<version>/` (blocking; run in a thread)."""
    limits = Limits(max_upload, max_total, max_entries, max_ratio)
    plugins_dir = Path(plugins_dir)
    plugins_dir.mkdir(parents=True, exist_ok=True)
    with _spool(source, limits.max_upload, plugins_dir) as (spool, sha256, size):
        with _open_zip(spool, limits.max_entries) as archive:
            entries, manifest = _check(archive, spool, limits)
            target = plugins_dir / manifest.id / manifest.version
            if _installed_sha256(target) == sha256:  # cheap early answer; re-checked under the lock
                return InstalledPackage(manifest.id, manifest.version, sha256, target, manifest, False)
            staging = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=plugins_dir))
            try:
                _extract(archive, entries, staging, limits)
                _check_runtime(manifest, staging)
                _write_json(
                    staging / PACKAGE_INFO_NAME,
                    {
                        "id": manifest.id,
                        "version": manifest.version,
                        "sha256": sha256,
                        "size": size,
                        "installedAt": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    },
                )
                os.chmod(staging, 0o755)
                created = _publish(staging, plugins_dir, manifest, sha256)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return InstalledPackage(manifest.id, manifest.version, sha256, target, manifest, created)


def inspect_package(
    source: Source,
    *,
    max_upload: int = MAX_UPLOAD_BYTES,
    max_total: int = MAX_TOTAL_BYTES,
    max_entries: int = MAX_ENTRIES,
    max_ratio: int = MAX_RATIO,
) -> PackageInfo:
    """Check every rule of `install_package` (extracting into a temporary folder) without installing.

    `source` may also be a plugin folder: it is packed first, as `pack_directory` would.
    """
    limits = Limits(max_upload, max_total, max_entries, max_ratio)
    if isinstance(source, Path) and source.is_dir():
        with tempfile.TemporaryDirectory(prefix=_TMP_PREFIX) as tmp:
            return inspect_package(pack_directory(source, Path(tmp) / "package.zip"), **vars(limits))
    with _spool(source, limits.max_upload, None) as (spool, sha256, size):
        with _open_zip(spool, limits.max_entries) as archive:
            entries, manifest = _check(archive, spool, limits)
            # extracted for real: the runtime checks look at the files as install will publish them
            with tempfile.TemporaryDirectory(prefix=_TMP_PREFIX) as tmp:
                _extract(archive, entries, Path(tmp), limits)
                _check_runtime(manifest, Path(tmp))
    return PackageInfo(manifest, sha256, size)


def sweep_temporary(plugins_dir: Path) -> int:
    """Remove `.tmp-*` leftovers of installs killed mid-way; call only while no install runs (host start)."""
    removed = 0
    for path in Path(plugins_dir).glob(_TMP_PREFIX + "*"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


def installed_sha256(version_dir: Path) -> str | None:
    """sha256 recorded for an installed version folder, or None."""
    return _installed_sha256(version_dir)


def pack_directory(src_dir: Path, out_zip: Path) -> Path:
    """Zip a plugin source folder deterministically (same files, same bytes).

    Skips `__pycache__`, `*.pyc`, `.git`; keeps executable bits; refuses symlinks and
    other non-regular files. Entries that would compress beyond the install ratio
    limit are stored instead. The manifest is validated first.
    """
    src_dir = Path(src_dir).resolve()
    out_zip = Path(out_zip).resolve()
    manifest_path = src_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise PackageError("manifest_missing", f"{src_dir} has no {MANIFEST_NAME} at its root")
    try:
        load_manifest(manifest_path.read_bytes())
    except ManifestError as exc:
        raise _manifest_refusal(exc) from None
    files = sorted(_walk(src_dir, out_zip), key=lambda p: p.relative_to(src_dir).as_posix())
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".zip", dir=out_zip.parent)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w") as zf:
            for path in files:
                mode = path.stat().st_mode
                info = zipfile.ZipInfo(path.relative_to(src_dir).as_posix(), date_time=_FIXED_DATE)
                info.create_system = 3
                info.external_attr = (stat.S_IFREG | (0o755 if mode & 0o111 else 0o644)) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                if _deflate_ratio(path) > MAX_RATIO:
                    info.compress_type = zipfile.ZIP_STORED
                with path.open("rb") as src, zf.open(info, "w", force_zip64=False) as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, out_zip)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out_zip


# ---------------------------------------------------------------- spooling


@contextmanager
def _spool(source: Source, max_upload: int, directory: Path | None) -> Iterator[tuple[IO[bytes], str, int]]:
    """Copy `source` to an anonymous temp file, hashing and counting; yields (file, sha256, size)."""
    digest = hashlib.sha256()
    size = 0
    # TemporaryFile is unlinked at once on POSIX: nothing is left behind even on a crash.
    with tempfile.TemporaryFile(prefix=_TMP_PREFIX, dir=directory) as spool:
        with _reader(source) as stream:
            while True:
                chunk = stream.read(min(_CHUNK, max_upload + 1 - size))
                if not chunk:
                    break
                size += len(chunk)
                if size > max_upload:
                    raise PackageError(
                        "upload_too_large",
                        f"the package is over the {max_upload} byte upload limit",
                        {"limit": max_upload},
                        status=413,
                    )
                digest.update(chunk)
                spool.write(chunk)
        spool.flush()
        spool.seek(0)
        yield spool, digest.hexdigest(), size


@contextmanager
def _reader(source: Source) -> Iterator[IO[bytes]]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(source)
    elif isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            yield f
    else:
        yield source


# ---------------------------------------------------------------- checks


@contextmanager
def _open_zip(spool: IO[bytes], max_entries: int) -> Iterator[zipfile.ZipFile]:
    try:
        _count_entries(spool, max_entries)
        spool.seek(0)
        archive = zipfile.ZipFile(spool)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        raise PackageError("invalid_zip", f"the package is not a readable zip archive: {exc}") from None
    with archive:
        yield archive


_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_CENTRAL_HEADER = b"PK\x01\x02"


def _count_entries(spool: IO[bytes], limit: int) -> None:
    """Refuse more than `limit` central-directory records before zipfile builds an object per record.

    Finds the central directory the way zipfile does; anything it cannot find is left
    for zipfile to report as a bad zip.
    """
    size = spool.seek(0, os.SEEK_END)
    tail_len = min(size, 22 + 0xFFFF)
    spool.seek(size - tail_len)
    tail = spool.read(tail_len)
    pos = len(tail) - 22 if tail[-22:-18] == _EOCD and tail[-2:] == b"\0\0" else tail.rfind(_EOCD)
    if pos < 0 or pos + 22 > len(tail):
        return
    _, _, _, _, total, cd_size, _, _ = struct.unpack("<4s4H2LH", tail[pos : pos + 22])
    cd_end = size - tail_len + pos
    if cd_end >= 20 + 56:
        spool.seek(cd_end - 20)
        if spool.read(4) == _EOCD64_LOCATOR:
            spool.seek(cd_end - 20 - 56)
            record = spool.read(56)
            if len(record) == 56:
                _, _, _, _, _, _, _, total, cd_size, _ = struct.unpack("<4sQ2H2L4Q", record)
                cd_end -= 20 + 56
    if total > limit or cd_size > cd_end:
        if total > limit:
            raise _entries_refusal(total, limit)
        return
    spool.seek(cd_end - cd_size)
    directory = spool.read(cd_size)
    count = offset = 0
    while offset + 46 <= len(directory) and directory[offset : offset + 4] == _CENTRAL_HEADER:
        name_len, extra_len, comment_len = struct.unpack_from("<3H", directory, offset + 28)
        offset += 46 + name_len + extra_len + comment_len
        count += 1
        if count > limit:
            raise _entries_refusal(count, limit)


def _entries_refusal(count: int, limit: int) -> PackageError:
    return PackageError(
        "too_many_entries",
        f"the package has more than {limit} entries ({count} found)",
        {"entries": count, "limit": limit},
    )


@dataclass(frozen=True)
class _Entry:
    info: zipfile.ZipInfo
    dest: str  # path inside the version folder, top-level folder stripped; "" for that folder
    is_dir: bool
    mode: int  # permission bits to apply


def _check(archive: zipfile.ZipFile, spool: IO[bytes], limits: Limits) -> tuple[list[_Entry], Manifest]:
    """Every rule decidable from the central directory (and the local headers), then the manifest."""
    infos = archive.infolist()
    if len(infos) > limits.max_entries:  # _count_entries caught it unless the directory is odd
        raise _entries_refusal(len(infos), limits.max_entries)
    declared_total = 0
    for info in infos:
        _check_name(info)
        if info.flag_bits & 0x1:
            raise PackageError("invalid_zip", f"{info.orig_filename!r} is encrypted; packages cannot be encrypted")
        if info.compress_type not in ALLOWED_COMPRESSION:
            raise PackageError(
                "unsupported_compression",
                f"entry {info.orig_filename!r} uses compression method {info.compress_type}; "
                "packages use stored or deflate entries (as `channel-runtime plugin pack` writes them)",
                {"entry": info.orig_filename, "method": info.compress_type},
            )
        _check_type(info)
        declared_total += info.file_size
        if not info.is_dir() and _ratio(info.file_size, info.compress_size, RATIO_FLOOR_BYTES) > limits.max_ratio:
            raise _ratio_refusal(info, info.file_size, limits)
    if declared_total > limits.max_total:
        raise _total_refusal(declared_total, limits)
    _check_duplicates(infos)
    _check_overlaps(infos, spool, archive.start_dir)
    prefix = _package_root(infos)
    entries = []
    for info in infos:
        dest = info.filename[len(prefix) :].rstrip("/")
        if dest == PACKAGE_INFO_NAME:
            raise PackageError(
                "reserved_name",
                f"{PACKAGE_INFO_NAME} at the package root is reserved for the host",
                {"entry": info.orig_filename},
            )
        perm = (info.external_attr >> 16) & 0o777
        mode = 0o755 if info.is_dir() else 0o644 | (perm & 0o111)
        entries.append(_Entry(info, dest, info.is_dir(), mode))
    manifest = _read_manifest(archive, archive.getinfo(prefix + MANIFEST_NAME), limits)
    return entries, manifest


def _check_name(info: zipfile.ZipInfo) -> None:
    name = info.orig_filename
    reason = None
    if not name or "\x00" in name or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        reason = "an empty name or a control character"
    elif "\\" in name:
        reason = "a backslash"
    elif name.startswith("/"):
        reason = "an absolute path"
    elif len(name) >= 2 and name[1] == ":" and name[0].isascii() and name[0].isalpha():
        reason = "a drive letter"
    else:
        parts = name.rstrip("/").split("/")
        if ".." in parts:
            reason = "a '..' component"
        elif any(p in ("", ".") for p in parts):
            reason = "an empty or '.' component"
    if reason:
        raise PackageError("unsafe_path", f"entry {name!r} has {reason}", {"entry": name})
    encoded = name.encode("utf-8", "surrogateescape")
    longest = max(len(part.encode("utf-8", "surrogateescape")) for part in name.rstrip("/").split("/"))
    if longest > MAX_NAME_COMPONENT_BYTES or len(encoded) > MAX_NAME_BYTES:
        raise PackageError(
            "name_too_long",
            f"entry {name[:80]!r}... has a name of {len(encoded)} bytes with a component of {longest}; "
            f"the limits are {MAX_NAME_BYTES} bytes per name and {MAX_NAME_COMPONENT_BYTES} per component",
            {"entry": name, "limit": MAX_NAME_COMPONENT_BYTES},
        )


_LOCAL_HEADER = b"PK\x03\x04"
_LOCAL_HEADER_SIZE = 30


def _check_overlaps(infos: list[zipfile.ZipInfo], spool: IO[bytes], directory_start: int) -> None:
    """Each entry's local header and data lie before the next entry and the central directory.

    Zip allows no sharing, but readers follow offsets blindly: 180 records pointing at one
    deflated stream would each expand it again (a quoted-overlap bomb).
    """
    spans = []
    for info in infos:
        spool.seek(info.header_offset)
        header = spool.read(_LOCAL_HEADER_SIZE)
        if len(header) < _LOCAL_HEADER_SIZE or header[:4] != _LOCAL_HEADER:
            raise PackageError("invalid_zip", f"entry {info.orig_filename!r} has no local header at its offset")
        name_len, extra_len = struct.unpack_from("<2H", header, 26)
        end = info.header_offset + _LOCAL_HEADER_SIZE + name_len + extra_len + info.compress_size
        spans.append((info.header_offset, end, info.orig_filename))
    spans.sort()
    previous_end, previous_name = 0, ""
    for start, end, name in spans:
        if start < previous_end:
            raise PackageError(
                "overlapping_entries",
                f"entries {previous_name!r} and {name!r} share bytes of the archive; every entry needs its own data",
                {"entry": name},
            )
        previous_end, previous_name = end, name
    if previous_end > directory_start:
        raise PackageError(
            "overlapping_entries",
            f"entry {previous_name!r} runs into the central directory",
            {"entry": previous_name},
        )


def _check_type(info: zipfile.ZipInfo) -> None:
    fmt = stat.S_IFMT(info.external_attr >> 16)
    # 0: no unix file type recorded (e.g. made on Windows): the name decides.
    allowed = (0, stat.S_IFDIR) if info.is_dir() else (0, stat.S_IFREG)
    if fmt not in allowed:
        kind = {
            stat.S_IFLNK: "a symbolic link",
            stat.S_IFIFO: "a FIFO",
            stat.S_IFCHR: "a character device",
            stat.S_IFBLK: "a block device",
            stat.S_IFSOCK: "a socket",
        }.get(fmt, "not a regular file")
        raise PackageError(
            "not_regular_file",
            f"entry {info.orig_filename!r} is {kind}; only regular files and folders are allowed",
            {"entry": info.orig_filename},
        )


def _name_key(name: str) -> str:
    return unicodedata.normalize("NFC", name.rstrip("/")).casefold()


def _check_duplicates(infos: list[zipfile.ZipInfo]) -> None:
    seen: dict[str, str] = {}
    files: dict[str, str] = {}
    for info in infos:
        key = _name_key(info.filename)
        if key in seen:
            raise PackageError(
                "duplicate_entry",
                f"entries {seen[key]!r} and {info.orig_filename!r} have the same name "
                "(names are compared case-insensitively)",
                {"entry": info.orig_filename},
            )
        seen[key] = info.orig_filename
        if not info.is_dir():
            files[key] = info.orig_filename
    for key, name in seen.items():  # a name used as a file and as a folder: "a" and "a/b"
        parts = key.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in files:
                raise PackageError(
                    "duplicate_entry", f"{files[parent]!r} is a file but {name!r} uses it as a folder", {"entry": name}
                )


def _package_root(infos: list[zipfile.ZipInfo]) -> str:
    """'' if plugin.json is at the root, 'top/' if everything is inside one folder holding it."""
    names = [i.filename for i in infos]
    if MANIFEST_NAME in names:
        return ""
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1:
        prefix = tops.pop() + "/"
        if prefix + MANIFEST_NAME in names and all(n.startswith(prefix) for n in names):
            return prefix
    raise PackageError(
        "manifest_missing", f"no {MANIFEST_NAME} at the root of the package or inside its single top-level folder"
    )


def _read_manifest(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: Limits) -> Manifest:
    if info.file_size > MAX_MANIFEST_BYTES:
        raise PackageError(
            "manifest_too_large", f"{MANIFEST_NAME} is {info.file_size} bytes; the limit is {MAX_MANIFEST_BYTES}"
        )
    data = b"".join(_stream_entry(archive, info, MAX_MANIFEST_BYTES, limits))
    try:
        return load_manifest(data)
    except ManifestError as exc:
        raise _manifest_refusal(exc) from None


def _manifest_refusal(exc: ManifestError) -> PackageError:
    return PackageError(exc.code, exc.message, {"errors": exc.errors} if exc.errors else {})


def _ratio(size: int, compressed: int, floor: int = 0) -> float:
    if size == 0:
        return 0.0
    compressed = max(compressed, floor)
    return size / compressed if compressed > 0 else float("inf")


def _ratio_refusal(info: zipfile.ZipInfo, size: int, limits: Limits) -> PackageError:
    return PackageError(
        "compression_ratio",
        f"entry {info.orig_filename!r} expands more than {limits.max_ratio}:1 ({size} bytes from {info.compress_size})",
        {"entry": info.orig_filename, "limit": limits.max_ratio},
    )


def _total_refusal(total: int, limits: Limits) -> PackageError:
    return PackageError(
        "uncompressed_too_large",
        f"the package expands to more than {limits.max_total} bytes",
        {"bytes": total, "limit": limits.max_total},
    )


# ---------------------------------------------------------------- extraction


def _stream_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int, limits: Limits) -> Iterator[bytes]:
    """Decompressed chunks of one entry, checked against its header and the limits while reading.

    `budget` is what is left of the total uncompressed allowance.
    """
    # Read one byte past the declared size (zipfile would silently stop at it) and check the
    # CRC ourselves, since zipfile's check would fire before we could count the excess.
    probe = copy.copy(info)
    probe.file_size = info.file_size + 1
    probe.CRC = None  # type: ignore[assignment]  # None: zipfile skips its own CRC check
    crc = 0
    count = 0
    try:
        with archive.open(probe) as f:
            while chunk := f.read(min(_CHUNK, probe.file_size - count)):
                count += len(chunk)
                if count > info.file_size:
                    raise PackageError(
                        "size_mismatch",
                        f"entry {info.orig_filename!r} holds more than the {info.file_size} bytes its header declares",
                        {"entry": info.orig_filename},
                    )
                if count > budget:
                    raise _total_refusal(count, limits)
                if _ratio(count, info.compress_size, RATIO_FLOOR_BYTES) > limits.max_ratio:
                    raise _ratio_refusal(info, count, limits)
                crc = zlib.crc32(chunk, crc)
                yield chunk
    except PackageError:
        raise
    except Exception as exc:  # BadZipFile, zlib.error, EOFError...: all mean corrupt data
        raise PackageError("invalid_zip", f"entry {info.orig_filename!r} cannot be read: {exc}") from None
    if count != info.file_size:
        raise PackageError(
            "size_mismatch",
            f"entry {info.orig_filename!r} holds {count} bytes; its header declares {info.file_size}",
            {"entry": info.orig_filename},
        )
    if crc != info.CRC:
        raise PackageError("invalid_zip", f"entry {info.orig_filename!r} is corrupt (CRC mismatch)")


def _extract(archive: zipfile.ZipFile, entries: list[_Entry], dest: Path, limits: Limits) -> None:
    """Decompress every entry into `dest`."""
    total = 0
    for entry in entries:
        if entry.is_dir:
            if entry.dest:
                (dest / entry.dest).mkdir(mode=0o755, parents=True, exist_ok=True)
            continue
        chunks = _stream_entry(archive, entry.info, limits.max_total - total, limits)
        path = dest / entry.dest
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        # O_EXCL|O_NOFOLLOW: the staging folder is fresh and holds no links, so this never follows one
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                total += len(chunk)
            os.fchmod(out.fileno(), entry.mode)
    for folder in (p for p in dest.rglob("*") if p.is_dir()):
        os.chmod(folder, 0o755)


def _check_runtime(manifest: Manifest, version_dir: Path) -> None:
    """SPEC 4: a plugin that cannot start is refused now, not found out by a crash loop."""
    try:
        runtime_argv(manifest.runtime, version_dir, search_path=os.environ.get("PATH"))
    except LaunchError as exc:
        raise PackageError(exc.code, exc.message, exc.details) from None


# ---------------------------------------------------------------- publishing


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Exclusive flock on the folder itself: serialises publishes, leaves no lock file behind."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _publish(staging: Path, plugins_dir: Path, manifest: Manifest, sha256: str) -> bool:
    """Rename `staging` to `<id>/<version>`; False if the same bytes are already there."""
    id_dir = plugins_dir / manifest.id
    target = id_dir / manifest.version
    with _locked(plugins_dir):
        if target.exists() or target.is_symlink():
            existing = _installed_sha256(target)
            if existing == sha256:
                return False
            raise PackageError(
                "version_conflict",
                f"{manifest.id} {manifest.version} is already installed from a different archive; "
                "bump the version or uninstall it first",
                {"id": manifest.id, "version": manifest.version, "installedSha256": existing, "sha256": sha256},
                status=409,
            )
        created_id_dir = not id_dir.exists()
        if created_id_dir:
            id_dir.mkdir(mode=0o755)
        try:
            os.rename(staging, target)
        except BaseException:
            if created_id_dir:
                os.rmdir(id_dir)
            raise
    return True


def _installed_sha256(version_dir: Path) -> str | None:
    try:
        data = json.loads((version_dir / PACKAGE_INFO_NAME).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    sha = data.get("sha256") if isinstance(data, dict) else None
    return sha if isinstance(sha, str) else None


def _write_json(path: Path, value: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------- packing


def _walk(src_dir: Path, exclude: Path) -> Iterator[Path]:
    for root, dirs, names in os.walk(src_dir):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_NAMES)
        for d in dirs:
            if (Path(root) / d).is_symlink():
                raise PackageError("not_regular_file", f"{Path(root) / d} is a symbolic link; packages hold files only")
        for name in names:
            path = Path(root) / name
            if name in _SKIP_NAMES or name.endswith(_SKIP_SUFFIXES) or path == exclude:
                continue
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):
                raise PackageError("not_regular_file", f"{path} is not a regular file; packages hold files only")
            yield path


def _deflate_ratio(path: Path) -> float:
    """Expansion ratio `path` would have as a deflated entry (zipfile's default level)."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    size = compressed = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            size += len(chunk)
            compressed += len(compressor.compress(chunk))
    compressed += len(compressor.flush())
    return _ratio(size, compressed, RATIO_FLOOR_BYTES)
