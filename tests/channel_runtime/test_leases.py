"""The lease plan (SPEC 10) as a pure function: nodes that tick in any order converge, spread evenly, and stay."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from channel_runtime.leases import NodeSettings, plan_leases
from channel_runtime.store import Lease

TTL = 10.0


def tick(node: str, live: list[str], connected: list[str], table: dict[str, Lease], now: float) -> bool:
    """One node's look at the shared lease table, applied as the store would; True when it changed something."""
    plan = plan_leases(node, live, connected, list(table.values()), now)
    for cid in plan.release:
        lease = table[cid]
        table[cid] = Lease(connection_id=cid, node_id=None, epoch=lease.epoch, expires_at=0.0)
    for cid in plan.acquire:
        lease = table.get(cid)
        assert lease is None or lease.node_id in (None, node) or lease.expires_at <= now  # only free ones
        epoch = 1 if lease is None else lease.epoch + (lease.node_id != node)
        table[cid] = Lease(connection_id=cid, node_id=node, epoch=epoch, expires_at=now + TTL)
    return bool(plan.release or plan.acquire)


@settings(max_examples=300, deadline=None)
@given(
    nodes=st.integers(min_value=1, max_value=5),
    connections=st.integers(min_value=0, max_value=12),
    owners=st.lists(st.integers(min_value=-1, max_value=5), max_size=12),
    order=st.randoms(use_true_random=False),
)
def test_any_start_converges_to_an_even_stable_spread(nodes: int, connections: int, owners: list[int], order) -> None:
    live = [f"node-{i}" for i in range(nodes)]
    connected = [f"conn_{i:02d}" for i in range(connections)]
    table: dict[str, Lease] = {}
    for cid, owner in zip(connected, owners, strict=False):  # whatever the hosts held before (-1: nobody)
        if 0 <= owner < nodes:
            table[cid] = Lease(connection_id=cid, node_id=live[owner], epoch=1, expires_at=TTL)
    now = 1.0
    for _ in range(6 * (connections + 1)):
        changed = False
        for node in order.sample(live, len(live)):
            changed |= tick(node, live, connected, table, now)
        if not changed:
            break
    else:
        raise AssertionError(f"no convergence: {table}")
    held = [table[cid].node_id for cid in connected]
    assert None not in held  # every connected connection has an owner
    counts = [held.count(node) for node in live]
    assert max(counts, default=0) - min(counts, default=0) <= 1
    for node in live:  # and it stays: another look changes nothing
        assert not tick(node, live, connected, table, now)


def test_a_dead_nodes_leases_go_to_the_living_once_they_run_out() -> None:
    connected = ["conn_a", "conn_b", "conn_c"]
    table = {cid: Lease(connection_id=cid, node_id="dead", epoch=3, expires_at=TTL) for cid in connected}
    assert not tick("alive", ["alive"], connected, table, now=TTL - 0.5)  # still leased: nobody takes them
    assert tick("alive", ["alive"], connected, table, now=TTL)
    assert {lease.node_id for lease in table.values()} == {"alive"}
    assert {lease.epoch for lease in table.values()} == {4}  # a new owner: a new epoch


def test_a_revoked_connection_is_let_go() -> None:
    table = {"conn_a": Lease(connection_id="conn_a", node_id="n1", epoch=1, expires_at=TTL)}
    plan = plan_leases("n1", ["n1"], [], list(table.values()), 1.0)
    assert plan.release == ["conn_a"] and plan.acquire == []


def test_lease_times_must_leave_room_for_renewal() -> None:
    NodeSettings(node_id="n", lease_ttl=10, renew_every=3)
    for ttl, renew in ((3, 3), (2, 5), (10, 0)):
        try:
            NodeSettings(node_id="n", lease_ttl=ttl, renew_every=renew)
        except ValueError:
            continue
        raise AssertionError((ttl, renew))


async def _keeper_losing_its_store() -> tuple[list[str], dict]:
    from channel_runtime.leases import LeaseKeeper
    from channel_runtime.store import open_store
    from plugin_host.clock import FakeClock

    clock = FakeClock()
    lost: list[str] = []
    async with await open_store("memory://", clock=clock) as store:
        record = await store.connections.create(kind="k", plugin_id="p", status="connected")

        async def on_change(gained: list, gone: list[str]) -> None:
            lost.extend(gone)

        keeper = LeaseKeeper(
            store,
            NodeSettings(node_id="n", lease_ttl=10, renew_every=3),
            clock,
            connections=store.connections.list,
            on_change=on_change,
        )
        await keeper._tick_logged()
        held = dict(keeper.owned)

        async def unreachable(*args: object, **kwargs: object) -> None:
            raise OSError("the database is unreachable")

        store.leases.heartbeat = unreachable  # type: ignore[method-assign]
        clock.advance(3)
        await keeper._tick_logged()  # one failed renewal: still well within the lease
        still = keeper.owns(record.connection_id)
        clock.advance(6)  # 9 s without renewing: stop serving before another host may take it
        await keeper._tick_logged()
        return lost, {"held": list(held), "still": still, "after": dict(keeper.owned)}


def test_a_host_that_cannot_renew_lets_its_connections_go_before_they_run_out() -> None:
    import anyio

    lost, seen = anyio.run(_keeper_losing_its_store)
    assert len(seen["held"]) == 1 and seen["still"] is True
    assert seen["after"] == {} and lost == seen["held"]
