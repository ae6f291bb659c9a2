"""Keeping secrets out of API answers, with the one rule of `plugin_host.redact`.

`redact_all` walks an answer and passes every string through `redact` with the
secrets the host knows (its tokens, the plugin's secret config values);
`mask_config` shows a config with its secret fields masked, and `unmask_config`
reads a submitted config where a masked value sent back as read keeps the stored one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from plugin_host.redact import MASK, mask_secret_fields, redact_value, secret_values

__all__ = ["mask_config", "redact_all", "secret_values", "unmask_config"]

mask_config = mask_secret_fields


def unmask_config(config: Any, current: Any) -> Any:
    """`config` as submitted, where a masked value (sent back as read) keeps the current value."""
    if not isinstance(config, dict) or not isinstance(current, dict):
        return config
    out: dict[str, Any] = {}
    for key, value in config.items():
        if value == MASK and key in current:
            out[key] = current[key]
        elif isinstance(value, dict):
            out[key] = unmask_config(value, current.get(key))
        else:
            out[key] = value
    return out


def redact_all(value: Any, secrets: Iterable[str]) -> Any:
    """Every string inside `value` through `redact` with the known `secrets`."""
    return redact_value(value, secrets)
