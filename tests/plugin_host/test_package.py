from __future__ import annotations

import inspect
import io
import json
import os
import stat
import threading
import zipfile
from pathlib import Path

import pytest

from plugin_host import package
from plugin_host.manifest import MAX_MANIFEST_BYTES
from plugin_host.package import (
    PackageError,
    inspect_package,
    install_package,
    installed_sha256,
    pack_directory,
)
from tests.support import zips
from tests.support.zips import DIR, REG, Entry

MiB = 2**20


@pytest.fixture
def plugins_dir(tmp_path: Path) -> Path:
    d = tmp_path / "home" / "plugins"
    d.mkdir(parents=True)
    return d


def refused(source, plugins_dir: Path, **limits) -> PackageError:
    """Install must fail and leave the whole home folder exactly as it was."""
    home = plugins_dir.parent
    before = zips.snapshot(home)
    with pytest.raises(PackageError) as info:
        install_package(source, plugins_dir, **limits)
    assert zips.snapshot(home) == before
    return info.value


# ---------------------------------------------------------------- the limits are SPEC's


def test_default_limits_are_the_spec_values():
    assert package.MAX_UPLOAD_BYTES == 50 * MiB
    assert package.MAX_TOTAL_BYTES == 200 * MiB
    assert package.MAX_ENTRIES == 5000
    assert package.MAX_RATIO == 100
    assert MAX_MANIFEST_BYTES == 64 * 1024
    params = inspect.signature(install_package).parameters
    assert params["max_upload"].default == 50 * MiB
    assert params["max_total"].default == 200 * MiB
    assert params["max_entries"].default == 5000
    assert params["max_ratio"].default == 100


# ---------------------------------------------------------------- refusals


PATH_CASES = {
    "zip_slip": "../evil.txt",
    "zip_slip_nested": "demo_plugin/../../evil.txt",
    "absolute": "/etc/evil",
    "backslash": "demo_plugin\\evil.py",
    "drive_letter": "C:/evil.txt",
    "drive_letter_relative": "c:evil.txt",
    "dot_component": "./evil.txt",
    "empty_component": "demo_plugin//evil.py",
    "nul_byte": "evil.txt\x00.py",
}


@pytest.mark.parametrize("name", PATH_CASES.values(), ids=PATH_CASES.keys())
def test_unsafe_paths_are_refused(plugins_dir, name):
    # zipfile cuts names at NUL when writing: write a placeholder, then patch the bytes
    placeholder = name.replace("\x00", "#")
    data = zips.with_extra(Entry(placeholder, b"x")).replace(placeholder.encode(), name.encode())
    err = refused(data, plugins_dir)
    assert (err.code, err.status) == ("unsafe_path", 400)
    assert err.details["entry"] == name


TYPE_CASES = {
    "symlink": stat.S_IFLNK | 0o777,
    "fifo": stat.S_IFIFO | 0o644,
    "char_device": stat.S_IFCHR | 0o644,
    "block_device": stat.S_IFBLK | 0o644,
    "socket": stat.S_IFSOCK | 0o644,
}


@pytest.mark.parametrize("mode", TYPE_CASES.values(), ids=TYPE_CASES.keys())
def test_non_regular_entries_are_refused(plugins_dir, mode):
    err = refused(zips.with_extra(Entry("link", b"/etc/passwd", mode=mode, compress=zipfile.ZIP_STORED)), plugins_dir)
    assert (err.code, err.status) == ("not_regular_file", 400)


def test_folder_entry_with_a_file_type_is_refused(plugins_dir):
    err = refused(zips.with_extra(Entry("odd/", mode=stat.S_IFLNK | 0o777)), plugins_dir)
    assert err.code == "not_regular_file"


@pytest.mark.parametrize(
    "names",
    [
        ("extra.txt", "extra.txt"),
        ("A.txt", "a.txt"),
        ("Demo_Plugin/x.py", "demo_plugin/X.PY"),
        ("caf\u00e9.txt", "cafe\u0301.txt"),
        ("bin", "bin/other"),
    ],
    ids=["exact", "case", "case_in_folder", "unicode_normalisation", "file_and_folder"],
)
def test_duplicate_names_are_refused(plugins_dir, names):
    err = refused(zips.with_extra(*(Entry(n, b"x") for n in names)), plugins_dir)
    assert (err.code, err.status) == ("duplicate_entry", 400)


def test_duplicate_manifest_is_refused(plugins_dir):
    err = refused(zips.with_extra(Entry("plugin.json", zips.manifest_bytes(version="6.6.6"))), plugins_dir)
    assert err.code == "duplicate_entry"


def test_compression_bomb_is_refused(plugins_dir):
    bomb = zips.with_extra(Entry("bomb.bin", bytes(20 * 10**6)))
    err = refused(bomb, plugins_dir)
    assert (err.code, err.status) == ("compression_ratio", 400)
    assert err.details["entry"] == "bomb.bin"


def test_bomb_with_a_lying_header_is_cut_while_streaming(plugins_dir):
    # Header claims 1 KiB (ratio looks fine); the data really expands to 20 MB.
    data = zips.patch_entry(zips.with_extra(Entry("bomb.bin", bytes(20 * 10**6))), "bomb.bin", file_size=1024)
    err = refused(data, plugins_dir)
    assert (err.code, err.status) == ("size_mismatch", 400)


def test_entry_larger_than_its_header_is_refused(plugins_dir):
    payload = zips.noise(10_240)
    data = zips.patch_entry(zips.with_extra(Entry("data.bin", payload)), "data.bin", file_size=len(payload) - 1)
    err = refused(data, plugins_dir)
    assert err.code == "size_mismatch"
    assert err.details["entry"] == "data.bin"


def test_stored_entry_larger_than_its_header_is_refused(plugins_dir):
    data = zips.with_extra(Entry("data.bin", b"y" * 500, compress=zipfile.ZIP_STORED))
    err = refused(zips.patch_entry(data, "data.bin", file_size=100), plugins_dir)
    assert err.code == "size_mismatch"


def test_entry_smaller_than_its_header_is_refused(plugins_dir):
    payload = zips.noise(1024)
    data = zips.patch_entry(zips.with_extra(Entry("data.bin", payload)), "data.bin", file_size=len(payload) + 10)
    assert refused(data, plugins_dir).code == "size_mismatch"


def test_too_many_entries_default_limit(plugins_dir):
    extra = [Entry(f"f/{i}.txt", b"", compress=zipfile.ZIP_STORED) for i in range(5000 - len(zips.plugin_files()) + 1)]
    err = refused(zips.with_extra(*extra), plugins_dir)
    assert (err.code, err.status) == ("too_many_entries", 400)
    assert err.details["limit"] == 5000


def test_exactly_the_entry_limit_is_accepted(plugins_dir):
    extra = [Entry(f"f/{i}.txt", b"", compress=zipfile.ZIP_STORED) for i in range(50 - len(zips.plugin_files()))]
    install_package(zips.with_extra(*extra), plugins_dir, max_entries=50)


def test_entry_count_lie_in_end_record_does_not_help(plugins_dir):
    # The end-of-central-directory record claims 3 entries; the directory holds 60.
    data = bytearray(zips.with_extra(*(Entry(f"f/{i}", b"") for i in range(55))))
    eocd = data.rfind(b"PK\x05\x06")
    data[eocd + 8 : eocd + 12] = (3).to_bytes(2, "little") * 2
    err = refused(bytes(data), plugins_dir, max_entries=50)
    assert err.code == "too_many_entries"


def test_uncompressed_total_over_the_limit_is_refused(plugins_dir):
    chunk = zips.noise(MiB)
    err = refused(zips.with_extra(*(Entry(f"blob{i}", chunk) for i in range(3))), plugins_dir, max_total=2 * MiB)
    assert (err.code, err.status) == ("uncompressed_too_large", 400)


def test_upload_over_the_limit_is_cut_off_early(plugins_dir):
    stream = zips.ZeroStream(2 * 2**30)  # would be 2 GiB
    err = refused(stream, plugins_dir)
    assert (err.code, err.status) == ("upload_too_large", 413)
    assert stream.produced <= 50 * MiB + 1


def test_upload_exactly_at_a_lowered_limit_passes_the_size_rule(plugins_dir):
    data = zips.valid_zip()
    install_package(io.BytesIO(data), plugins_dir, max_upload=len(data))
    err = refused(io.BytesIO(zips.valid_zip(version="1.0.1")), plugins_dir, max_upload=len(data) - 200)
    assert err.code == "upload_too_large"


def test_missing_manifest_is_refused(plugins_dir):
    files = [e for e in zips.plugin_files() if e.name != "plugin.json"]
    err = refused(zips.build(files), plugins_dir)
    assert (err.code, err.status) == ("manifest_missing", 400)


def test_manifest_in_a_top_folder_with_siblings_is_missing(plugins_dir):
    data = zips.build([Entry("top/plugin.json", zips.manifest_bytes()), Entry("README", b"hi")])
    assert refused(data, plugins_dir).code == "manifest_missing"


def test_manifest_two_folders_deep_is_missing(plugins_dir):
    data = zips.build([Entry("a/b/plugin.json", zips.manifest_bytes())])
    assert refused(data, plugins_dir).code == "manifest_missing"


def test_manifest_over_64_kib_is_refused(plugins_dir):
    big = zips.manifest_bytes() + b" " * (64 * 1024)
    files = [Entry("plugin.json", big, compress=zipfile.ZIP_STORED)] + zips.plugin_files()[1:]
    err = refused(zips.build(files), plugins_dir)
    assert (err.code, err.status) == ("manifest_too_large", 400)


def test_manifest_over_64_kib_behind_a_small_header_is_refused(plugins_dir):
    big = zips.manifest_bytes() + b" " * (64 * 1024)
    files = [Entry("plugin.json", big, compress=zipfile.ZIP_STORED)] + zips.plugin_files()[1:]
    data = zips.patch_entry(zips.build(files), "plugin.json", file_size=1000)
    assert refused(data, plugins_dir).code == "size_mismatch"


def test_manifest_invalid_json_is_refused(plugins_dir):
    files = [Entry("plugin.json", b"{not json")] + zips.plugin_files()[1:]
    err = refused(zips.build(files), plugins_dir)
    assert (err.code, err.status) == ("manifest_invalid_json", 400)


@pytest.mark.parametrize(
    "overrides, path",
    [
        ({"connectors": None}, ""),
        ({"id": "Bad-Id"}, "/id"),
        ({"version": "1.0"}, "/version"),
        ({"protocolVersion": 2}, "/protocolVersion"),
        ({"env": ["CHANNEL_RUNTIME_ADMIN_TOKEN"]}, "/env/0"),
        ({"connectors": [{"kind": "x", "displayName": "X", "authType": "password"}]}, "/connectors/0/authType"),
        ({"configSchema": {"type": "whatever"}}, "/configSchema/type"),
    ],
)
def test_manifest_schema_failures_are_refused(plugins_dir, overrides, path):
    files = [Entry("plugin.json", zips.manifest_bytes(**overrides))] + zips.plugin_files()[1:]
    err = refused(zips.build(files), plugins_dir)
    assert (err.code, err.status) == ("manifest_schema", 400)
    assert path in [e["path"] for e in err.details["errors"]]


@pytest.mark.parametrize(
    "data",
    [b"", b"this is not a zip", zips.valid_zip()[:-30], zips.valid_zip()[: len(zips.valid_zip()) // 2]],
    ids=["empty", "text", "truncated_end", "half"],
)
def test_not_a_zip_is_refused(plugins_dir, data):
    err = refused(data, plugins_dir)
    assert (err.code, err.status) == ("invalid_zip", 400)


def test_corrupt_entry_is_refused(plugins_dir):
    payload = zips.noise(10_000).hex().encode()
    data = zips.corrupt_data(zips.with_extra(Entry("data.txt", payload)), "data.txt")
    assert refused(data, plugins_dir).code in ("invalid_zip", "size_mismatch")


def test_encrypted_entry_is_refused(plugins_dir):
    data = zips.patch_entry(zips.with_extra(Entry("secret.txt", b"x" * 50)), "secret.txt", flag_bits=0x1)
    err = refused(data, plugins_dir)
    assert err.code == "invalid_zip"
    assert "encrypted" in err.message


def test_reserved_package_info_name_is_refused(plugins_dir):
    assert refused(zips.with_extra(Entry(".package.json", b"{}")), plugins_dir).code == "reserved_name"


def test_failure_leaves_an_existing_plugin_untouched(plugins_dir):
    install_package(zips.valid_zip(), plugins_dir)
    bad = zips.with_extra(Entry("../x", b"x"), files=zips.plugin_files(version="2.0.0"))
    refused(bad, plugins_dir)
    assert sorted(p.name for p in (plugins_dir / "demo_plugin").iterdir()) == ["1.0.0"]


def test_failure_during_extraction_leaves_nothing(plugins_dir):
    # Passes every central-directory rule; fails only once the bytes are counted.
    payload = zips.noise(10_240)
    data = zips.patch_entry(zips.with_extra(Entry("z/data.bin", payload)), "z/data.bin", file_size=len(payload) - 1)
    refused(data, plugins_dir)
    assert list(plugins_dir.iterdir()) == []


# ---------------------------------------------------------------- installs


def test_install_publishes_the_version_folder(plugins_dir):
    data = zips.valid_zip()
    pkg = install_package(io.BytesIO(data), plugins_dir)
    assert (pkg.id, pkg.version, pkg.created) == ("demo_plugin", "1.0.0", True)
    assert pkg.path == plugins_dir / "demo_plugin" / "1.0.0"
    assert pkg.manifest.runtime.module == "demo_plugin"
    assert (pkg.path / "plugin.json").read_bytes() == zips.manifest_bytes()
    assert (pkg.path / "demo_plugin" / "__main__.py").is_file()
    import hashlib

    assert pkg.sha256 == hashlib.sha256(data).hexdigest() == installed_sha256(pkg.path)
    info = json.loads((pkg.path / ".package.json").read_text())
    assert info["sha256"] == pkg.sha256 and info["size"] == len(data)
    assert sorted(p.name for p in plugins_dir.iterdir()) == ["demo_plugin"]  # no temp files left


def test_install_from_a_path(plugins_dir, tmp_path):
    zip_path = tmp_path / "demo.zip"
    zip_path.write_bytes(zips.valid_zip())
    assert install_package(zip_path, plugins_dir).created


def test_executable_bits_are_kept_and_dangerous_bits_dropped(plugins_dir):
    data = zips.with_extra(
        Entry("bin/suid", b"x", mode=REG | stat.S_ISUID | stat.S_ISGID | 0o777),
        Entry("private.txt", b"x", mode=REG | 0o600),
        Entry("sticky/", mode=DIR | stat.S_ISVTX | 0o777),
        Entry("plain.txt", b"x", mode=0),  # no unix mode at all (e.g. made on Windows)
    )
    root = install_package(data, plugins_dir).path
    mode = lambda p: stat.S_IMODE((root / p).stat().st_mode)  # noqa: E731
    assert mode("bin/run") == 0o755
    assert mode("bin/suid") == 0o755
    assert mode("demo_plugin/__main__.py") == 0o644
    assert mode("private.txt") == 0o644
    assert mode("plain.txt") == 0o644
    assert mode("sticky") == 0o755
    assert mode("demo_plugin") == 0o755
    assert mode(".") == 0o755


def test_wrapped_top_level_folder_is_stripped(plugins_dir):
    pkg = install_package(zips.wrapped(), plugins_dir)
    assert (pkg.path / "plugin.json").is_file()
    assert (pkg.path / "bin" / "run").is_file()
    assert not (pkg.path / "demo_plugin-1.0.0").exists()


def test_same_bytes_again_is_idempotent(plugins_dir):
    data = zips.valid_zip()
    first = install_package(data, plugins_dir)
    before = zips.snapshot(plugins_dir)
    again = install_package(io.BytesIO(data), plugins_dir)
    assert again.created is False
    assert (again.sha256, again.path) == (first.sha256, first.path)
    assert zips.snapshot(plugins_dir) == before


def test_different_bytes_same_version_is_a_conflict(plugins_dir):
    install_package(zips.valid_zip(), plugins_dir)
    other = zips.with_extra(Entry("README.md", b"changed"))
    err = refused(other, plugins_dir)
    assert (err.code, err.status) == ("version_conflict", 409)
    assert err.details["id"] == "demo_plugin" and err.details["version"] == "1.0.0"


def test_second_version_sits_beside_the_first(plugins_dir):
    install_package(zips.valid_zip(), plugins_dir)
    pkg = install_package(zips.valid_zip(version="1.1.0"), plugins_dir)
    assert pkg.created
    assert sorted(p.name for p in (plugins_dir / "demo_plugin").iterdir()) == ["1.0.0", "1.1.0"]


def test_concurrent_installs_of_the_same_package(plugins_dir):
    data = zips.valid_zip()
    results: list[object] = []
    barrier = threading.Barrier(6)

    def run() -> None:
        barrier.wait()
        try:
            results.append(install_package(data, plugins_dir).created)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=str) == [False] * 5 + [True]
    assert sorted(p.name for p in plugins_dir.iterdir()) == ["demo_plugin"]


def test_concurrent_installs_of_different_bytes_one_wins(plugins_dir):
    variants = [zips.with_extra(Entry("README.md", str(i).encode())) for i in range(4)]
    results: list[object] = []
    barrier = threading.Barrier(len(variants))

    def run(data: bytes) -> None:
        barrier.wait()
        try:
            results.append(install_package(data, plugins_dir).created)
        except PackageError as exc:
            results.append(exc.code)

    threads = [threading.Thread(target=run, args=(v,)) for v in variants]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=str) == [True] + ["version_conflict"] * 3
    readme = (plugins_dir / "demo_plugin" / "1.0.0" / "README.md").read_bytes()
    winner = variants[int(readme)]
    assert install_package(winner, plugins_dir).created is False


# ---------------------------------------------------------------- inspect and pack


def test_inspect_checks_without_writing(plugins_dir, tmp_path):
    before = zips.snapshot(tmp_path)
    info = inspect_package(zips.valid_zip())
    assert info.manifest.id == "demo_plugin" and len(info.sha256) == 64
    with pytest.raises(PackageError) as err:
        inspect_package(zips.patch_entry(zips.with_extra(Entry("d", zips.noise(2048))), "d", file_size=10))
    assert err.value.code == "size_mismatch"
    assert zips.snapshot(tmp_path) == before


def make_source(root: Path) -> Path:
    src = root / "src"
    (src / "demo_plugin" / "__pycache__").mkdir(parents=True)
    (src / ".git").mkdir()
    (src / "bin").mkdir()
    (src / "plugin.json").write_bytes(zips.manifest_bytes())
    (src / "demo_plugin" / "__init__.py").write_text("")
    (src / "demo_plugin" / "__main__.py").write_text("print('hi')\n")
    (src / "demo_plugin" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (src / "demo_plugin" / "stale.pyc").write_bytes(b"\0")
    (src / ".git" / "config").write_text("[core]\n")
    (src / "bin" / "run").write_text("#!/bin/sh\n")
    (src / "bin" / "run").chmod(0o755)
    (src / "padding.txt").write_bytes(b" " * 200_000)  # deflates far beyond 100:1: must be stored
    return src


def test_pack_then_install_round_trip(plugins_dir, tmp_path):
    src = make_source(tmp_path)
    out = pack_directory(src, tmp_path / "out" / "demo.zip")
    with zipfile.ZipFile(out) as zf:
        names = sorted(zf.namelist())
    assert names == ["bin/run", "demo_plugin/__init__.py", "demo_plugin/__main__.py", "padding.txt", "plugin.json"]
    pkg = install_package(out, plugins_dir)
    assert stat.S_IMODE((pkg.path / "bin" / "run").stat().st_mode) == 0o755
    assert (pkg.path / "demo_plugin" / "__main__.py").read_text() == "print('hi')\n"
    assert inspect_package(src).sha256 == pkg.sha256


def test_pack_is_deterministic(tmp_path):
    src = make_source(tmp_path)
    first = pack_directory(src, tmp_path / "a.zip").read_bytes()
    os.utime(src / "plugin.json", (1_000_000_000, 1_000_000_000))
    second = pack_directory(src, tmp_path / "b.zip").read_bytes()
    assert first == second


def test_pack_into_the_source_folder_skips_its_own_output(tmp_path):
    src = make_source(tmp_path)
    pack_directory(src, src / "demo.zip")
    out = pack_directory(src, src / "demo.zip")
    with zipfile.ZipFile(out) as zf:
        assert "demo.zip" not in zf.namelist()


def test_pack_refuses_symlinks_and_bad_manifests(tmp_path):
    src = make_source(tmp_path)
    (src / "link").symlink_to("/etc/passwd")
    with pytest.raises(PackageError) as err:
        pack_directory(src, tmp_path / "x.zip")
    assert err.value.code == "not_regular_file"
    (src / "link").unlink()
    (src / "plugin.json").write_bytes(zips.manifest_bytes(id="Nope"))
    with pytest.raises(PackageError) as err:
        pack_directory(src, tmp_path / "x.zip")
    assert err.value.code == "manifest_schema"
    (src / "plugin.json").unlink()
    with pytest.raises(PackageError) as err:
        pack_directory(src, tmp_path / "x.zip")
    assert err.value.code == "manifest_missing"
    assert not (tmp_path / "x.zip").exists()


def test_entry_count_is_checked_before_zipfile_reads_the_directory():
    data = zips.with_extra(*(Entry(f"f/{i}", b"") for i in range(60)))
    with pytest.raises(PackageError) as err:
        package._count_entries(io.BytesIO(data), 50)
    assert err.value.code == "too_many_entries"
    package._count_entries(io.BytesIO(data), 100)


def test_sweep_temporary_removes_leftovers_only(plugins_dir):
    install_package(zips.valid_zip(), plugins_dir)
    (plugins_dir / ".tmp-abc" / "x").mkdir(parents=True)
    (plugins_dir / ".tmp-upload").write_bytes(b"partial")
    assert package.sweep_temporary(plugins_dir) == 2
    assert sorted(p.name for p in plugins_dir.iterdir()) == ["demo_plugin"]


# ---------------------------------------------------------------- the runtime must be able to start (SPEC 4)


def _command_package(command: list[str], *extra: Entry) -> bytes:
    files = [
        Entry("plugin.json", zips.manifest_bytes(runtime={"type": "command", "command": command})),
        Entry("bin/", mode=DIR | 0o755),
        Entry("bin/run", b"#!/bin/sh\nexec python3 -m demo_plugin\n", mode=REG | 0o755),
        Entry("bin/notes.txt", b"not a program"),
        *extra,
    ]
    return zips.build(files)


def _python_package(module: str, *files: Entry) -> bytes:
    return zips.build([Entry("plugin.json", zips.manifest_bytes(runtime={"type": "python", "module": module})), *files])


RUNTIME_REFUSALS = {
    "program missing": (_command_package(["bin/start"]), "runtime_program_missing", "runtime.command[0]"),
    "program not executable": (_command_package(["bin/notes.txt"]), "runtime_not_executable", "runtime.command[0]"),
    "windows zip, no exec bit": (
        zips.build(
            [
                Entry("plugin.json", zips.manifest_bytes(runtime={"type": "command", "command": ["./run"]})),
                Entry("run", b"#!/bin/sh\n", mode=0),
            ]
        ),
        "runtime_not_executable",
        "runtime.command[0]",
    ),
    "program is a folder": (_command_package(["bin"]), "runtime_program_missing", "runtime.command[0]"),
    "program not on PATH": (_command_package(["no-such-program-xyz"]), "runtime_program_missing", "runtime.command[0]"),
    "absolute program": (_command_package(["/bin/sh", "-c", "x"]), "runtime_unsafe_path", "runtime.command[0]"),
    "argument escapes": (_command_package(["bin/run", "conf/../../x"]), "runtime_unsafe_path", "runtime.command[1]"),
    "module missing": (
        _python_package("absent", Entry("demo_plugin/__main__.py", b"")),
        "runtime_module_missing",
        "runtime.module",
    ),
    "package without __main__": (
        _python_package("demo_plugin", Entry("demo_plugin/__init__.py", b"")),
        "runtime_module_missing",
        "runtime.module",
    ),
}


@pytest.mark.parametrize("case", RUNTIME_REFUSALS)
def test_install_refuses_a_runtime_that_cannot_start(plugins_dir, case):
    data, code, field = RUNTIME_REFUSALS[case]
    err = refused(data, plugins_dir)
    assert err.code == code and err.status == 400
    assert err.details == {"field": field}
    assert err.message.startswith(f"{field}: ")


@pytest.mark.parametrize("case", RUNTIME_REFUSALS)
def test_inspect_refuses_a_runtime_that_cannot_start(case):
    data, code, field = RUNTIME_REFUSALS[case]
    with pytest.raises(PackageError) as err:
        inspect_package(data)
    assert err.value.code == code and err.value.details == {"field": field}


@pytest.mark.parametrize(
    "runtime",
    [
        {"type": "command", "command": ["bin/run"]},
        {"type": "command", "command": ["./bin/run", "bin/notes.txt"]},
        {"type": "command", "command": ["sh", "./bin/run"]},
        {"type": "python", "module": "demo_plugin"},
        {"type": "python", "module": "vendored"},
    ],
)
def test_runtimes_that_can_start_install(plugins_dir, runtime):
    data = zips.build(
        [
            Entry("plugin.json", zips.manifest_bytes(runtime=runtime)),
            Entry("bin/run", b"#!/bin/sh\n", mode=REG | 0o755),
            Entry("bin/notes.txt", b"data"),
            Entry("demo_plugin/__main__.py", b""),
            Entry("lib/vendored/__main__.py", b""),
        ]
    )
    assert inspect_package(data).manifest.runtime.type == runtime["type"]
    assert install_package(data, plugins_dir).created


def test_plugin_validate_names_the_field(tmp_path):
    """`channel-runtime plugin validate` (the console script) on a folder whose bin/run lost its exec bit."""
    import subprocess
    import sys

    src = tmp_path / "plugin"
    (src / "bin").mkdir(parents=True)
    (src / "plugin.json").write_bytes(zips.manifest_bytes(runtime={"type": "command", "command": ["bin/run"]}))
    (src / "bin" / "run").write_text("#!/bin/sh\n")
    (src / "bin" / "run").chmod(0o644)
    script = Path(sys.executable).with_name("channel-runtime")

    def validate() -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(script), "plugin", "validate", str(src)], capture_output=True, text=True, timeout=60)

    result = validate()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "runtime_not_executable: runtime.command[0]: 'bin/run' is not executable" in result.stdout
    (src / "bin" / "run").chmod(0o755)
    result = validate()
    assert result.returncode == 0 and result.stdout.startswith("OK "), result.stdout + result.stderr
