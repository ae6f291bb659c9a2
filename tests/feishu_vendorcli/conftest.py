"""The plugin's package is importable for the unit tests of its pure modules (crypto, mapping, split)."""

from __future__ import annotations

import sys

from tests.support import REPO

PLUGIN_DIR = REPO / "plugins" / "feishu_vendorcli"
if str(PLUGIN_DIR) not in sys.path:
    sys.path.insert(0, str(PLUGIN_DIR))
