"""Keeping secrets out of API answers: secret config values and known tokens.

A config value is secret when its `configSchema` property says so
(`"writeOnly": true`, `"format": "password"`, `"secret": true` or
`"x-secret": true`) or when its key names a secret (token, secret, password, ...).
Text (logs, errors) goes through `plugin_host.redact` with those values as known secrets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from plugin_host.redact import MASK, is_secret_name, redact

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_secret(key: str, schema: Any) -> bool:
    if isinstance(schema, dict) and (
        schema.get("writeOnly") is True
        or schema.get("format") == "password"
        or schema.get("secret") is True
        or schema.get("x-secret") is True
    ):
        return True
    return is_secret_name(key)


def _properties(schema: Any) -> dict[str, Any]:
    if isinstance(schema, dict) and isinstance(schema.get("properties"), dict):
        return schema["properties"]
    return {}


def mask_config(config: Any, schema: Any) -> Any:
    """`config` with every secret value replaced by the mask."""
    if not isinstance(config, dict):
        return config
    props = _properties(schema)
    out: dict[str, Any] = {}
    for key, value in config.items():
        sub = props.get(key, {})
        if _is_secret(key, sub) and value not in (None, ""):
            out[key] = MASK
        elif isinstance(value, dict):
            out[key] = mask_config(value, sub)
        else:
            out[key] = value
    return out


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


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


def secret_values(config: Any, schema: Any) -> list[str]:
    """The secret values in `config` (as text), for `redact(..., secrets=...)`."""
    if not isinstance(config, dict):
        return []
    props = _properties(schema)
    found: list[str] = []
    for key, value in config.items():
        sub = props.get(key, {})
        if _is_secret(key, sub):
            found.extend(_strings(value))
        elif isinstance(value, dict):
            found.extend(secret_values(value, sub))
    return found


def redact_all(value: Any, secrets: Iterable[str]) -> Any:
    """Every string inside `value` through `redact` with the known `secrets`."""
    known = sorted({s for s in secrets if s}, key=len, reverse=True)
    return _walk(value, known)


def _walk(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        # a sha256 digest (of a plugin archive) is public, though shaped like a token
        if _SHA256.fullmatch(value) and value not in secrets:
            return value
        return redact(value, secrets)
    if isinstance(value, dict):
        return {k: _walk(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, secrets) for v in value]
    return value
