"""Bundled plugins: on the first start with an empty home, pack, install and enable each of them."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from plugin_host.host import PluginHost
from plugin_host.manifest import MANIFEST_NAME
from plugin_host.package import pack_directory

log = logging.getLogger(__name__)


def bundled_plugins_dir() -> Path:
    import channel_runtime

    return Path(channel_runtime.__file__).resolve().parents[1] / "plugins"


def bundled_sources(root: Path | None = None) -> list[Path]:
    """Every folder under `plugins/` that has a plugin.json, by name."""
    root = bundled_plugins_dir() if root is None else root
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / MANIFEST_NAME).is_file())


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
                archive = pack_directory(source, Path(tmp) / f"{source.name}.zip")
                outcome = await host.install(archive, source_label=f"bundled:{source.name}")
                await host.enable(outcome.plugin_id)
            except Exception as exc:
                log.warning("bundled plugin %s was not installed: %s", source.name, exc)
                continue
            installed.append(outcome.plugin_id)
            log.info("installed bundled plugin %s %s", outcome.plugin_id, outcome.version)
    return installed
