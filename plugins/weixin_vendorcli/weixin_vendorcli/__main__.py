"""Entry point: `python -m weixin_vendorcli` (the manifest's runtime)."""

from __future__ import annotations

from .plugin import plugin

if __name__ == "__main__":
    plugin.run()
