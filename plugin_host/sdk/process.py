"""Child processes for plugins: the host's own spawn helper, so a plugin never imports host internals.

```python
from plugin_host.sdk import LaunchPlan, spawn

child = await spawn(LaunchPlan((sys.executable, "-m", "my_client"), env, cwd))   # own process group
await child.stdin.send(b"...")
await child.kill_group()   # SIGTERM -> wait -> SIGKILL -> reap, shielded
await child.aclose()
```
The vendor command runner (`VendorRunner`) is built on the same helper.
"""

from __future__ import annotations

from ..process_group import GroupProcess, LaunchPlan, spawn

__all__ = ["GroupProcess", "LaunchPlan", "spawn"]
