"""Channel configuration (SPEC 6.2)."""

from __future__ import annotations

from typing import Any

import msgspec

# the keys of `ChannelConfig.config` that bind a `plugin` channel to its connection
_PLUGIN_ID, _CONNECTION_ID, _CONNECTOR_KIND = "pluginId", "connectionId", "connectorKind"


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

    @classmethod
    def for_connection(
        cls,
        *,
        plugin_id: str,
        connection_id: str,
        connector_kind: str,
        account_id: str = "",
        display_name: str = "",
    ) -> ChannelConfig:
        """The `plugin` channel of a connection served by `plugin_id` (SPEC 6.5)."""
        return cls(
            kind="plugin",
            account_id=account_id,
            display_name=display_name,
            config={_PLUGIN_ID: plugin_id, _CONNECTION_ID: connection_id, _CONNECTOR_KIND: connector_kind},
        )

    @classmethod
    def for_sidecar_connection(
        cls,
        *,
        url: str,
        token: str,
        connection_id: str,
        connector_kind: str,
        account_id: str = "",
        display_name: str = "",
    ) -> ChannelConfig:
        """The `external_connector` channel of a connection a remote sidecar serves (SPEC 7.4)."""
        return cls(
            kind="external_connector",
            account_id=account_id,
            display_name=display_name,
            config={"url": url, _CONNECTOR_KIND: connector_kind, _CONNECTION_ID: connection_id},
            secrets={"token": token},
        )

    @property
    def connector_kind(self) -> str:
        """The platform kind of the channel's messages (`weixin`, `feishu`...): the connector's, else `kind`."""
        return str(self.config.get(_CONNECTOR_KIND) or self.kind)

    @property
    def connection_id(self) -> str | None:
        value = self.config.get(_CONNECTION_ID)
        return str(value) if value else None

    @property
    def plugin_id(self) -> str | None:
        value = self.config.get(_PLUGIN_ID)
        return str(value) if value else None

    def __repr__(self) -> str:
        masked = {name: "***" for name in self.secrets}
        return (
            f"ChannelConfig(enabled={self.enabled!r}, kind={self.kind!r}, mode={self.mode!r}, "
            f"account_id={self.account_id!r}, display_name={self.display_name!r}, "
            f"config={self.config!r}, secrets={masked!r})"
        )

    __str__ = __repr__
