"""Request bodies through HTTP: malicious plugin zips, the 50 MiB upload limit, the 1 MiB JSON limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from admin_api.body import JSON_LIMIT, UPLOAD_LIMIT
from tests.support import zips
from tests.support.admin import assert_error_shape, running

pytestmark = pytest.mark.anyio

ZIP = {"Content-Type": "application/zip"}
CHUNK = 1024 * 1024

MALICIOUS = {
    "traversal": (zips.with_extra(zips.Entry("../evil.py", b"x")), "unsafe_path"),
    "absolute": (zips.with_extra(zips.Entry("/etc/evil", b"x")), "unsafe_path"),
    "backslash": (zips.with_extra(zips.Entry("demo_plugin\\evil.py", b"x")), "unsafe_path"),
    "symlink": (zips.with_extra(zips.Entry("link", b"/etc/passwd", mode=0o120777)), "not_regular_file"),
    "duplicate": (zips.with_extra(zips.Entry("Plugin.JSON", b"{}")), "duplicate_entry"),
    "ratio bomb": (zips.with_extra(zips.Entry("zeros.bin", b"\0" * (4 * CHUNK))), "compression_ratio"),
    "no manifest": (zips.build([zips.Entry("demo_plugin/__init__.py", b"")]), "manifest_missing"),
    "bad manifest": (zips.build([zips.Entry("plugin.json", b'{"id": "X"}')]), "manifest_schema"),
    "not a zip": (b"PK\x03\x04 but not really a zip" * 10, "invalid_zip"),
}


@pytest.mark.parametrize("name", sorted(MALICIOUS))
async def test_malicious_zip_is_refused_with_its_rule(tmp_path: Path, name: str) -> None:
    data, code = MALICIOUS[name]
    async with running(tmp_path / "home") as (app, http):
        r = await http.post("/api/plugins", content=data, headers=ZIP)
        assert r.status_code == 400, r.text
        assert assert_error_shape(r)["code"] == code
        assert (await http.get("/api/plugins")).json() == []
    plugins_dir = tmp_path / "home" / "plugins"
    assert not plugins_dir.exists() or not any(plugins_dir.iterdir())


async def test_upload_over_50_mib_is_cut_off_while_streaming(tmp_path: Path) -> None:
    sent = 0

    async def two_gib() -> AsyncIterator[bytes]:
        nonlocal sent
        block = b"\0" * CHUNK
        for _ in range(2048):
            sent += len(block)
            yield block

    async with running(tmp_path / "home") as (app, http):
        r = await http.post("/api/plugins", content=two_gib(), headers=ZIP)
        assert r.status_code == 413
        assert assert_error_shape(r)["code"] == "payload_too_large"
        # read until just past the limit, never the whole body
        assert UPLOAD_LIMIT < sent <= UPLOAD_LIMIT + 2 * CHUNK

        sent = 0
        r = await http.post(
            "/api/plugins", content=two_gib(), headers={"Content-Type": "multipart/form-data; boundary=xyz"}
        )
        assert r.status_code in (400, 413)
        assert sent <= UPLOAD_LIMIT + 2 * CHUNK


async def test_declared_length_over_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    read = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal read
        read += 1
        yield b"x"

    async with running(tmp_path / "home") as (app, http):
        request = http.build_request(
            "POST", "/api/plugins", content=body(), headers={**ZIP, "Content-Length": str(3 * 2**30)}
        )
        r = await http.send(request)
        assert r.status_code == 413
        assert read == 0


async def test_multipart_upload_without_file_field_and_wrong_media_type(tmp_path: Path) -> None:
    async with running(tmp_path / "home") as (app, http):
        r = await http.post("/api/plugins", files={"other": ("x.zip", b"abc", "application/zip")})
        assert r.status_code == 400 and assert_error_shape(r)["code"] == "missing_file"
        r = await http.post("/api/plugins", content=b"{}", headers={"Content-Type": "application/json"})
        assert r.status_code == 415 and assert_error_shape(r)["code"] == "unsupported_media_type"
        r = await http.post("/api/plugins", content=b"", headers=ZIP)
        assert r.status_code == 400 and assert_error_shape(r)["code"] == "empty_upload"


async def test_json_body_over_1_mib_is_refused(tmp_path: Path) -> None:
    big = b'{"version": "' + b"1" * (JSON_LIMIT + 10) + b'"}'
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for i in range(0, len(big), 64 * 1024):
            sent += 64 * 1024
            yield big[i : i + 64 * 1024]

    async with running(tmp_path / "home") as (app, http):
        r = await http.post("/api/plugins/echo/activate", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and assert_error_shape(r)["code"] == "payload_too_large"
        r = await http.put("/api/plugins/echo/config", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert sent <= JSON_LIMIT + 64 * 1024
