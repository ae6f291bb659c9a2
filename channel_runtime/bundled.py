"""Bundled plugins: on the first start with an empty home, pack, install and enable each of them.

Every folder of the repository's `plugins/` with a `plugin.json` is a bundled
plugin. A wheel ships them as the resource package `channel_runtime.bundled_plugins`
(see pyproject.toml), read here with `importlib.resources`; an editable install or
a checkout reads `plugins/` itself.
"""

from __future__ import annotations

import importlib.resources
import logging
import tempfile
from importlib.resources.abc import Traversable
from pathlib import Path

import anyio

from plugin_host.host import PluginHost
from plugin_host.manifest import MANIFEST_NAME
from plugin_host.package import pack_directory

RESOURCE_PACKAGE = "channel_runtime.bundled_plugins"

log = logging.getLogger(__name__)


def bundled_plugins_dir() -> Traversable:
    """Where the bundled plugins are: the wheel's resource package, else the repository's `plugins/`."""
    try:
        return importlib.resources.files(RESOURCE_PACKAGE)
    except ModuleNotFoundError:
        # an editable install cannot import plugins/ (no __init__.py) as a subpackage: read the folder
        return Path(__file__).resolve().parents[1] / "plugins"


def bundled_sources(root: Traversable | None = None) -> list[Path]:
    """Every folder with a plugin.json, by name."""
    root = bundled_plugins_dir() if root is None else root
    if not root.is_dir():
        return []
    sources = []
    for child in root.iterdir():
        if not (child.is_dir() and child.joinpath(MANIFEST_NAME).is_file()):
            continue
        if not isinstance(child, Path):  # a zipped install: nothing to pack from
            log.warning("bundled plugin %s is not on the file system; skipped", child.name)
            continue
        sources.append(child)
    return sorted(sources, key=lambda p: p.name)


async def install_bundled(host: PluginHost, *, root: Path | None = None) -> list[str]:
    """Install and enable the bundled plugins when no plugin is installed yet; their ids.

    A plugin that cannot be installed or enabled is logged and skipped: the
    service still starts, and the admin API shows what is there.
    """
    if host.registry.list():
        return []
    installed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bundled-") as tmp:
        for source in bundled_sources(root):
            try:
                # zipping is disk and CPU work: off the event loop, which serves requests meanwhile
                archive = await anyio.to_thread.run_sync(pack_directory, source, Path(tmp) / f"{source.name}.zip")
                outcome = await host.install(archive, source_label=f"bundled:{source.name}")
                await host.enable(outcome.plugin_id)
            except Exception as exc:
                log.warning("bundled plugin %s was not installed: %s", source.name, exc)
                continue
            installed.append(outcome.plugin_id)
            log.info("installed bundled plugin %s %s", outcome.plugin_id, outcome.version)
    return installed
