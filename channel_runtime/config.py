"""Channel configuration (SPEC 6.2)."""

from __future__ import annotations

from typing import Any

import msgspec


class ChannelConfig(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=False):
    """How to build one channel.

    Frozen and compared field by field, so `add_channel` can tell an equal config
    (no-op) from a changed one (replace). Treat `config` and `secrets` as
    read-only. `secrets` never appears in `repr()`/`str()`; encode the struct
    explicitly (msgspec) when the secrets themselves must be stored.
    """

    enabled: bool = True
    kind: str = ""
    mode: str = ""
    account_id: str = ""
    display_name: str = ""
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    secrets: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.kind:
            raise ValueError("ChannelConfig needs a kind (for example 'plugin', 'http' or 'memory')")

    def __repr__(self) -> str:
        masked = {name: "***" for name in self.secrets}
        return (
            f"ChannelConfig(enabled={self.enabled!r}, kind={self.kind!r}, mode={self.mode!r}, "
            f"account_id={self.account_id!r}, display_name={self.display_name!r}, "
            f"config={self.config!r}, secrets={masked!r})"
        )

    __str__ = __repr__
