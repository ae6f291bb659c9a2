"""channel_runtime.bundled: which folders are bundled plugins (the wheel side is tests/e2e/test_wheel.py)."""

from __future__ import annotations

from pathlib import Path

from channel_runtime.bundled import bundled_plugins_dir, bundled_sources
from tests.support import REPO


def test_an_editable_install_reads_the_repository_plugins_folder() -> None:
    assert Path(str(bundled_plugins_dir())) == REPO / "plugins"
    expected = sorted(p for p in (REPO / "plugins").iterdir() if (p / "plugin.json").is_file())
    assert bundled_sources() == expected and REPO / "plugins" / "echo" in expected


def test_every_folder_with_a_manifest_is_a_bundled_plugin(tmp_path: Path) -> None:
    for name in ("zeta", "alpha"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "plugin.json").write_text("{}")
    (tmp_path / "no_manifest").mkdir()
    (tmp_path / "plugin.json").write_text("{}")  # a file, not a folder
    assert bundled_sources(tmp_path) == [tmp_path / "alpha", tmp_path / "zeta"]
    assert bundled_sources(tmp_path / "missing") == []
