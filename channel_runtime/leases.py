"""Several hosts on one store (SPEC 10): this host's node, its heartbeat, and the connection leases it holds.

Every `renew_every` seconds (sooner when another host releases leases or joins:
the store's `leases` notice) the `LeaseKeeper` of each host:

1. refreshes its heartbeat row and renews the leases it still holds, and its
   queue claims (so a long handler keeps its entry while the host lives);
2. reads the live nodes, the connected connections and every lease, and asks
   `plan_leases` (a pure function) what to give up and what to take: each live
   node's fair share is `n // k`, one more for the first `n % k` nodes by id, so
   the leases spread evenly and converge without talk between hosts;
3. releases, acquires, and tells its owner (`on_change`, every tick) which
   connections it gained (their new epoch) and which it lost.

A host that dies stops renewing: its leases run out after `ttl` and the others
take them at their next look. A host that stops cleanly `hand_over()`s: its
plugins release their connections, then its leases and node row go at once.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus

from plugin_host.clock import Clock

from .store import ConnectionRecord, Lease, LeaseFence, NodeRecord, Store
from .store.base import error_text

log = logging.getLogger(__name__)

NODE_ID_ENV = "CHANNEL_RUNTIME_NODE_ID"
LEASE_TTL = 10.0  # SPEC 10
LEASE_RENEW = 3.0  # SPEC 10
DEAD_NODE_RETENTION = 3600.0  # a dead node's row stays visible in /api/nodes this long


def default_node_id(env: Mapping[str, str] | None = None) -> str:
    """`CHANNEL_RUNTIME_NODE_ID`, else host name + pid (SPEC 10)."""
    env = os.environ if env is None else env
    return (env.get(NODE_ID_ENV) or "").strip() or f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class NodeSettings:
    """Who this host is among several, and how long its leases last."""

    node_id: str = field(default_factory=default_node_id)
    lease_ttl: float = LEASE_TTL
    renew_every: float = LEASE_RENEW
    info: dict[str, Any] = field(default_factory=dict)  # shown in /api/nodes (e.g. the host's URL)

    def __post_init__(self) -> None:
        if not 0 < self.renew_every < self.lease_ttl:
            raise ValueError(f"leases must be renewed (every {self.renew_every} s) well within their TTL")


# ---------------------------------------------------------------- the pure decision


@dataclass(frozen=True)
class LeasePlan:
    acquire: list[str]
    release: list[str]


def plan_leases(
    node_id: str, live_nodes: Sequence[str], connected: Sequence[str], leases: Sequence[Lease], now: float
) -> LeasePlan:
    """What `node_id` gives up and takes so that every connected connection has one live owner, spread evenly.

    With `n` connections on `k` live nodes each node ends with `n // k` or one
    more. Leases move only to even out more than that: a node above the ceiling
    gives up its surplus; one at the floor takes free leases only when nobody
    below the floor needs them; and when no lease is free but a node is below the
    floor, the busiest node (the first by id among equals) gives one up.
    """
    live = sorted(set(live_nodes) | {node_id})
    wanted = set(connected)
    mine = sorted(lease.connection_id for lease in leases if lease.node_id == node_id)
    release = [cid for cid in mine if cid not in wanted]  # revoked or disconnected: nobody serves it
    serving = [cid for cid in mine if cid in wanted]
    counts = {node: 0 for node in live}
    taken: set[str] = set()
    for lease in leases:
        if lease.node_id is not None and lease.node_id != node_id and lease.expires_at > now:
            taken.add(lease.connection_id)
            if lease.node_id in counts and lease.connection_id in wanted:
                counts[lease.node_id] += 1
    counts[node_id] = len(serving)
    free = [cid for cid in sorted(wanted) if cid not in taken and cid not in serving]
    low = len(wanted) // len(live)
    high = low + (1 if len(wanted) % len(live) else 0)
    have = len(serving)
    others_short = sum(max(0, low - c) for node, c in counts.items() if node != node_id)
    acquire: list[str] = []
    if have > high:
        release += serving[high:]
    elif have < low:
        acquire = free[: low - have]
    elif have < high and len(free) > others_short:
        acquire = free[: min(len(free) - others_short, high - have)]
    elif have > low and not free and others_short:
        busiest = max(live, key=lambda node: (counts[node], -live.index(node)))
        if busiest == node_id:
            release += serving[-1:]
    return LeasePlan(acquire=acquire, release=release)


# ---------------------------------------------------------------- the keeper

ChangeHook = Callable[[list[Lease], list[str]], Awaitable[None]]


class LeaseKeeper:
    def __init__(
        self,
        store: Store,
        settings: NodeSettings,
        clock: Clock,
        *,
        connections: Callable[[], Awaitable[list[ConnectionRecord]]],
        on_change: ChangeHook | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        # leases, claims and the heartbeat row belong to this process, not to its node id: a host restarted
        # under the same CHANNEL_RUNTIME_NODE_ID must not renew what its dead predecessor held but never finished
        self.node_id = f"{settings.node_id}/{secrets.token_hex(4)}"
        self.clock = clock
        self._connections = connections
        self._on_change = on_change
        self._owned: dict[str, Lease] = {}
        self._lock = anyio.Lock()  # one tick (or hand-over) at a time
        self._leaving = False
        self._ticks = 0
        self._renewed_at = clock.monotonic()

    @property
    def owned(self) -> Mapping[str, Lease]:
        return dict(self._owned)

    @property
    def leaving(self) -> bool:
        """Handed over (a clean stop in progress): nothing is taken any more."""
        return self._leaving

    def owns(self, connection_id: str) -> bool:
        return connection_id in self._owned

    def fence(self, connection_id: str, epoch: int | None = None) -> LeaseFence:
        """What a per-connection write from this host claims: this node, at `epoch` (None: as it holds it now)."""
        return LeaseFence(self.node_id, epoch)

    def epoch(self, connection_id: str) -> int | None:
        lease = self._owned.get(connection_id)
        return None if lease is None else lease.epoch

    def set_on_change(self, hook: ChangeHook) -> None:
        self._on_change = hook

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Tick until cancelled or handed over; the first tick happens before `started`."""
        await self._tick_logged()
        task_status.started()
        async with self.store.listen("leases") as notices:
            while not self._leaving:
                # another host released leases or joined: look now rather than at the next renewal
                await notices.wait(self.settings.renew_every)
                if not self._leaving:
                    await self._tick_logged()

    async def _tick_logged(self) -> None:
        try:
            await self.tick()
        except Exception as exc:
            # the store may be unreachable for a moment: leases run out only after `ttl`
            log.warning("lease renewal of node %s failed: %s", self.node_id, error_text(exc))
            if self._owned and self.clock.monotonic() - self._renewed_at > self.settings.lease_ttl * 0.8:
                # before they run out and another host takes them, this one stops serving them
                log.warning("node %s could not renew its leases in time: letting its connections go", self.node_id)
                async with self._lock:
                    await self._apply({})

    async def tick(self) -> None:
        async with self._lock:
            if self._leaving:
                return
            store, ttl = self.store, self.settings.lease_ttl
            await store.leases.heartbeat(self.node_id, ttl, {**self.settings.info, "nodeId": self.settings.node_id})
            renewed_at = self.clock.monotonic()
            renewed = {lease.connection_id: lease for lease in await store.leases.renew(self.node_id, ttl)}
            self._renewed_at = renewed_at
            await store.inbox.renew_claims(self.node_id, ttl)
            await store.outbox.renew_claims(self.node_id, ttl)
            now = self.clock.time()
            live = [n.node_id for n in await store.leases.nodes() if n.expires_at > now]
            connected = [r.connection_id for r in await self._connections() if r.status == "connected"]
            plan = plan_leases(self.node_id, live, connected, await store.leases.leases(), now)
            held = {cid: lease for cid, lease in renewed.items() if cid not in plan.release}
            if plan.release:
                # the plugins let go first, then the leases: the next owner never overlaps this one
                await self._apply(held)
                await store.leases.release(self.node_id, plan.release)
            gained = await store.leases.acquire(self.node_id, plan.acquire, ttl) if plan.acquire else []
            held.update({lease.connection_id: lease for lease in gained})
            await self._apply(held)
            self._ticks += 1
            if self._ticks % 200 == 1:  # now and then: forget long-dead nodes
                await store.leases.prune_nodes(DEAD_NODE_RETENTION)

    async def take(self, connection_id: str) -> Lease:
        """This host serves `connection_id` from now on, whoever held it (a login that just happened here)."""
        async with self._lock:
            lease = await self.store.leases.take(self.node_id, connection_id, self.settings.lease_ttl)
            held = dict(self._owned)
            held[connection_id] = lease
            await self._apply(held, announce=False)  # the caller hands it to its plugin itself
            return lease

    async def hand_over(self) -> None:
        """A clean stop: the plugins let go first, then every lease and the node row go at once."""
        async with self._lock:
            if self._leaving:
                return
            self._leaving = True
            try:
                await self._apply({})
            finally:
                with anyio.CancelScope(shield=True):
                    try:
                        await self.store.leases.leave(self.node_id)
                        await self.store.inbox.release_claims(self.node_id)
                        await self.store.outbox.release_claims(self.node_id)
                    except Exception as exc:
                        log.warning("node %s could not hand its leases over: %s", self.node_id, error_text(exc))

    async def _apply(self, held: dict[str, Lease], *, announce: bool = True) -> None:
        before = self._owned
        self._owned = held
        gained = [
            lease for cid, lease in held.items() if before.get(cid, None) is None or before[cid].epoch != lease.epoch
        ]
        lost = [cid for cid in before if cid not in held]
        if gained or lost:
            log.info(
                "node %s leases: +%s -%s",
                self.node_id,
                ",".join(lease.connection_id for lease in gained) or "0",
                ",".join(lost) or "0",
            )
        # every tick, also with nothing new: the owner retries hand-overs a starting plugin missed
        if announce and self._on_change is not None:
            try:
                await self._on_change(gained, lost)
            except Exception:
                log.exception("handing lease changes to the plugins failed")


# ---------------------------------------------------------------- GET /api/nodes


async def describe_nodes(store: Store, me: str, now: float) -> list[dict[str, Any]]:
    """Every node row with its live leases, and whether it is this host (SPEC 10).

    `nodeId` is the host's node id; `instance` the process that holds the leases (a restart is a new one).
    """
    nodes: list[NodeRecord] = await store.leases.nodes()
    leases = [lease for lease in await store.leases.leases() if lease.node_id is not None]
    views = []
    for node in nodes:
        views.append(
            {
                "nodeId": str(node.info.get("nodeId") or node.node_id),
                "instance": node.node_id,
                "self": node.node_id == me,
                "live": node.expires_at > now,
                "startedAt": node.started_at,
                "heartbeatAt": node.heartbeat_at,
                "expiresAt": node.expires_at,
                "info": node.info,
                "leases": [
                    {"connectionId": lease.connection_id, "epoch": lease.epoch, "expiresAt": lease.expires_at}
                    for lease in leases
                    if lease.node_id == node.node_id
                ],
            }
        )
    return views
