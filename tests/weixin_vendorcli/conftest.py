"""The bundled plugin's package is importable by these tests, as the host makes it for the plugin."""

from __future__ import annotations

import sys

from tests.support import REPO

PLUGIN_DIR = REPO / "plugins" / "weixin_vendorcli"
if str(PLUGIN_DIR) not in sys.path:
    sys.path.insert(0, str(PLUGIN_DIR))
