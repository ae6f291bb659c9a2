"""Weixin personal-account bots over the iLink bot API (bundled plugin `weixin_vendorcli`).

See `plugin.py` for the wiring and the README section "Connect a Weixin account".
"""

from __future__ import annotations

import sys

# httpx imports its command-line tool (click, rich, pygments: ~5 MB of RSS per plugin
# process) whenever those happen to be installed; the plugin never runs it
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
