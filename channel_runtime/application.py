"""What the connection manager, the plugin services and the webhook route need from their owner.

Two applications own a plugin host: `ChannelRuntime` (`serve`: inbound events go to its
inbox and handler) and `Sidecar` (`sidecar`: inbound events are forwarded to a remote
application, SPEC 11). Both give `ConnectionManager`, `RuntimeServices` and the
webhook route the same face, so those are written once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

    from plugin_host.clock import Clock
    from plugin_host.host import PluginHost
    from plugin_host.protocol import BridgeEvent

    from .channels import Channel
    from .config import ChannelConfig
    from .leases import LeaseKeeper
    from .runtime import IngestResult
    from .store import Store


class Application(Protocol):
    clock: Clock

    @property
    def plugin_host(self) -> PluginHost | None: ...

    @property
    def store(self) -> Store:
        """The open store (RuntimeError before the start)."""

    @property
    def started(self) -> bool: ...

    async def ingest(self, event: BridgeEvent, *, plugin_id: str | None = None) -> IngestResult:
        """Take one inbound event (IngestError for an unknown or revoked connection)."""

    async def add_channel(self, channel_id: str, config: ChannelConfig) -> None:
        """A connection reached `connected`: run its channel (a sidecar has none to run)."""

    async def remove_channel(self, channel_id: str) -> None: ...

    @property
    def channels(self) -> Mapping[str, Channel]:
        """The channels running here (by id)."""

    # several hosts on one store (SPEC 10); a single-host application has no leases

    @property
    def leases(self) -> LeaseKeeper | None: ...

    def wake(self) -> None:
        """Look for due work now (a connection just became deliverable here)."""

    async def hand_over(self) -> None:
        """Let other hosts serve this host's connections now (before the plugins stop)."""

    async def serving_host(self, connection_id: str) -> str | None:
        """The base URL of the other host serving `connection_id` (None: this one, or nobody)."""
