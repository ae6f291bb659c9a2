"""Zip bombs and malformed packages (issue 14, findings 1 and 7): refused before they cost the host.

The bomb test runs a real `serve` and reads its peak memory (VmHWM) from /proc while
the upload is refused.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import httpx
import pytest

from channel_runtime_cli.main import main
from plugin_host.package import PackageError, inspect_package, install_package
from tests.support import ServeProcess, zips
from tests.support.zips import Entry

MiB = 2**20


def _refused(data: bytes, tmp_path: Path) -> PackageError:
    plugins = tmp_path / "refused"
    plugins.mkdir(exist_ok=True)
    with pytest.raises(PackageError) as info:
        install_package(data, plugins)
    assert list(plugins.iterdir()) == []  # nothing left behind
    return info.value


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_bzip2_and_lzma_entries_are_refused_before_decompression(tmp_path: Path, method: int) -> None:
    err = _refused(zips.bomb_zip(16 * MiB, method), tmp_path)
    assert (err.code, err.status) == ("unsupported_compression", 400)
    assert err.details["entry"] == "bomb.bin"
    assert "stored or deflate" in err.message


def test_plugin_validate_applies_the_same_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(zips.bomb_zip(16 * MiB))
    assert main(["plugin", "validate", str(bomb)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("INVALID") and "unsupported_compression" in out

    long_name = tmp_path / "long.zip"
    long_name.write_bytes(zips.with_extra(Entry("data/" + "n" * 256 + ".txt", b"x")))
    assert main(["plugin", "validate", str(long_name)]) == 1
    out = capsys.readouterr().out
    assert "name_too_long" in out and "255" in out


def test_overlapping_entries_are_refused(tmp_path: Path) -> None:
    data = zips.overlapping_zip(copies=180)
    # every record reads back on its own: only the overlap makes it a bomb
    with zipfile.ZipFile(__import__("io").BytesIO(data)) as zf:
        assert zf.testzip() is None
    err = _refused(data, tmp_path)
    assert (err.code, err.status) == ("overlapping_entries", 400)
    with pytest.raises(PackageError) as info:
        inspect_package(data)
    assert info.value.code == "overlapping_entries"


@pytest.mark.parametrize(
    "name",
    ["x" * 256 + ".py", "a/" + "b" * 300 + "/c.py", "/".join(["d" * 200] * 6) + "/e.py"],
)
def test_names_the_file_system_cannot_hold_are_refused_up_front(tmp_path: Path, name: str) -> None:
    err = _refused(zips.with_extra(Entry(name, b"print()\n")), tmp_path)
    assert (err.code, err.status) == ("name_too_long", 400)


def test_a_name_of_255_bytes_installs(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    installed = install_package(zips.with_extra(Entry("data/" + "é" * 125 + "x.txt", b"x")), plugins)
    assert (installed.path / "data" / ("é" * 125 + "x.txt")).read_bytes() == b"x"


def test_small_files_that_compress_well_are_no_bomb(tmp_path: Path) -> None:
    # 900 spaces deflate to a handful of bytes (a ratio far over 100:1) but cannot hurt anyone
    installed = install_package(zips.with_extra(Entry("blank.txt", b" " * 900)), tmp_path / "plugins")
    assert (installed.path / "blank.txt").stat().st_size == 900
    # the rule still holds beyond the floor
    err = _refused(zips.with_extra(Entry("big.txt", b" " * (2 * MiB))), tmp_path)
    assert err.code == "compression_ratio"


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


@pytest.mark.slow
def test_a_bzip2_bomb_upload_does_not_grow_the_servers_memory(tmp_path: Path) -> None:
    """256 MiB of zeros in a 1 KiB zip: refused by a real `serve` with its peak memory unchanged."""
    bomb = zips.bomb_zip(256 * MiB)
    assert len(bomb) < 4096
    home = tmp_path / "home"
    server = ServeProcess(home, cwd=tmp_path, env={"CHANNEL_RUNTIME_ADMIN_TOKEN": "adm1n-" + "t" * 40})
    try:
        server.wait_ready()
        auth = {"Authorization": "Bearer adm1n-" + "t" * 40, "Content-Type": "application/zip"}
        # a normal install first: the memory an ordinary upload costs is in the baseline
        ok = httpx.post(server.base + "/api/plugins", content=zips.valid_zip(), headers=auth, timeout=30)
        assert ok.status_code == 201, ok.text
        before = _vm_hwm_kib(server.proc.pid)
        answer = httpx.post(server.base + "/api/plugins", content=bomb, headers=auth, timeout=60)
        after = _vm_hwm_kib(server.proc.pid)
        # zipfile inflates a BZIP2 stream whole in one read: that alone would be 256 MiB
        assert after - before < 32 * 1024, f"peak memory grew by {(after - before) // 1024} MiB"
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "unsupported_compression"
    finally:
        server.stop()
