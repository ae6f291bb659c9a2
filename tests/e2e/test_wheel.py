"""The wheel: built from the sources, installed into a fresh venv, `channel-runtime serve` serves every bundled plugin.

Slow (seconds to tens of seconds): one wheel build, one install (dependencies from
pip's cache), one server start. Everything runs from the fresh venv, outside the
repository, so nothing of the checkout can stand in for what the wheel lacks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.support import REPO, ServeProcess, wait_for

pytestmark = pytest.mark.slow

# what a wheel is built from: the sources, not the local state of a checkout
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache", ".hypothesis",
    ".channel-runtime", "node_modules", "results",
)  # fmt: skip


def bundled_ids() -> set[str]:
    """Every folder of plugins/ with a plugin.json: the plugins a wheel must ship."""
    return {
        json.loads((folder / "plugin.json").read_text())["id"]
        for folder in (REPO / "plugins").iterdir()
        if (folder / "plugin.json").is_file()
    }


def run(*argv: str | Path, cwd: Path) -> str:
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{argv}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _clean_env() -> dict[str, str]:
    # nothing may point the fresh venv back at the checkout
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHANNEL_RUNTIME_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, "PYTHONNOUSERSITE": "1"}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) with the project's wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=_NOT_SOURCES)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run(*pip, "wheel", "--no-deps", "--quiet", "-w", root / "dist", src, cwd=root)
    [wheel] = (root / "dist").glob("channel_runtime-*.whl")
    venv = root / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=root)
    # the project's pip installs into the fresh venv: no pip bootstrap; dependencies come from pip's cache
    run(*pip, "--python", venv / "bin" / "python", "install", "--quiet", "--prefer-binary", wheel, cwd=root)
    return venv


def test_the_wheel_holds_every_bundled_plugin_read_through_importlib_resources(venv: Path, tmp_path: Path) -> None:
    probe = "import json, channel_runtime.bundled as b; print(json.dumps([str(p) for p in b.bundled_sources()]))"
    sources = json.loads(run(venv / "bin" / "python", "-c", probe, cwd=tmp_path))
    site = next((venv / "lib").glob("python3.*/site-packages")).resolve()
    assert all(Path(s).resolve().parent == site / "channel_runtime" / "bundled_plugins" for s in sources), sources
    assert {json.loads((Path(s) / "plugin.json").read_text())["id"] for s in sources} == bundled_ids()
    # only sources: no byte code or other local state of the checkout
    [wheel] = (venv.parent / "dist").glob("channel_runtime-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = [n for n in zf.namelist() if n.startswith("channel_runtime/bundled_plugins/")]
    assert shipped and not [n for n in shipped if "__pycache__" in n or n.endswith(".pyc")]


def test_serve_from_the_wheel_installs_and_runs_every_bundled_plugin(venv: Path, tmp_path: Path) -> None:
    expected = bundled_ids()
    assert "echo" in expected
    home = tmp_path / "home"
    server = ServeProcess(
        home,
        cwd=tmp_path,
        command=[str(venv / "bin" / "channel-runtime")],
        env={"PYTHONPATH": "", "PYTHONNOUSERSITE": "1"},
    )
    try:
        server.wait_ready()
        auth = {"Authorization": f"Bearer {(home / 'admin-token').read_text().strip()}"}

        def all_running() -> dict[str, dict] | None:
            plugins = httpx.get(server.base + "/api/plugins", headers=auth, timeout=10).json()
            by_id = {p["id"]: p for p in plugins}
            states = {
                pid: httpx.get(f"{server.base}/api/plugins/{pid}", headers=auth, timeout=10).json() for pid in by_id
            }
            return states if set(states) == expected and all(s["state"] == "running" for s in states.values()) else None

        states = wait_for(all_running, 60, "every bundled plugin to be running")
        assert all(p["enabled"] for p in states.values())
        # the plugins run from the host's home, installed from the wheel's copies
        for plugin_id in expected:
            assert (home / "plugins" / plugin_id).is_dir()
        # the admin page and its own script and style ship in the wheel
        for path in ("/admin", "/admin/static/admin.js", "/admin/static/admin.css"):
            assert httpx.get(server.base + path, timeout=10).status_code == 200, path
    finally:
        code, _out, err = server.stop()
    assert code == 0, err
