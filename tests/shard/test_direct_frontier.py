"""Without identity stitching (`identity.stitching = false`): what the sources send each shard, and the
frontier a shard keeps from their reports (operators/identity/direct.py, operators/shard/logic.py)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from nextclick.operators.identity.direct import STITCHING_OFF, DirectRoutes
from nextclick.operators.infra import metrics
from nextclick.operators.infra.clock import ManualClock
from nextclick.operators.records import EraseRequest, Progress, SavepointRequest, ShardProgress, SourcePosition
from nextclick.operators.shard.logic import ShardLogic
from nextclick.operators.shard.shard_state import ShardContext
from nextclick.operators.state.keys import shard_of
from nextclick.operators.state.placement import BALANCED
from tests.helpers import MIN, T0, default_rules, make_event

SRC = SourcePosition("shop.control", 0, 0)


def _shard(path: Path) -> ShardLogic:
    ctx = ShardContext(state_dir=path, shards=1, ruleset=default_rules(), clock=ManualClock(T0 + 600 * MIN),
                       await_frontier=True, direct=True)
    return ShardLogic(ctx, None)


def test_a_shard_fires_by_the_lowest_floor_once_every_partition_has_reported(tmp_path: Path) -> None:
    """An abandoned cart (60 minutes, plus lateness) is due only when both partitions are past it: the
    one still behind may yet deliver the purchase."""
    shard = _shard(tmp_path)
    shard.on_batch([make_event("consent", T0 - MIN, customer="c1", event_id="e0", channel="email",
                               purpose="marketing", granted=True),
                    make_event("add_to_cart", T0, customer="c1", event_id="e1", sku="s", amount=50.0, quantity=1,
                               category="shoes"),
                    ShardProgress(0, "web#0", T0 + 200 * MIN, 2)])
    assert shard.state is not None and shard.state.frontier.now() is None  # web#1 has not reported
    shard.on_batch([ShardProgress(0, "web#1", T0 + 30 * MIN, 2)])
    assert shard.state.frontier.now() == T0 + 30 * MIN  # the lowest floor
    assert not shard.state.due_now()
    shard.on_batch([ShardProgress(0, "web#1", T0 + 120 * MIN, 2)])
    assert shard.state.frontier.now() == T0 + 120 * MIN and shard.state.due_now()
    fired = shard.on_notify()[0]
    assert [d.rule_id for d in fired] == ["cart_abandonment_email"]  # type: ignore[union-attr]
    shard.on_batch([ShardProgress(0, "web#0", None, 2), ShardProgress(0, "web#1", None, 2)])
    assert shard.state.frontier.live  # every partition caught up: the clock


def test_a_shard_without_state_remembers_the_reports_and_opens_nothing(tmp_path: Path) -> None:
    shard = _shard(tmp_path)
    assert shard.on_batch([ShardProgress(0, "web#0", T0, 2)])[0] == []
    assert shard.state is None and not list(tmp_path.iterdir())
    shard.on_batch([ShardProgress(0, "web#1", T0 + MIN, 2)])
    assert shard.state is None and shard.frontier.now() == T0


def test_events_go_to_their_shard_reports_to_every_shard_and_links_are_counted_not_made() -> None:
    routes = DirectRoutes(4, BALANCED)
    out: list[tuple[str, object]] = []
    plain = make_event("page_view", T0, customer="c1", event_id="e1", page_type="home")
    login = msgspec.structs.replace(make_event("login", T0, customer="ck", event_id="e2", method="password"),
                                    id_type="cookie", links=(("customer", "C1"), ("email", "E1")))
    before = metrics.counter_values(metrics.LINKS_REFUSED)
    routes.event(plain, out)
    routes.event(login, out)
    assert out == [(routes.routes[shard_of("c1", 4)], plain), (routes.routes[shard_of("ck", 4)], login)]
    after = metrics.counter_values(metrics.LINKS_REFUSED)
    for id_type in ("customer", "email"):
        assert after.get((STITCHING_OFF, id_type), 0) == before.get((STITCHING_OFF, id_type), 0) + 1
    out.clear()
    routes.progress(Progress("web#0", T0, 2), out)
    assert out == [(route, ShardProgress(n, "web#0", T0, 2)) for n, route in enumerate(routes.routes)]
    out.clear()
    routes.command(EraseRequest("c1", "r1", SRC), out)
    assert out == [(routes.routes[shard_of("c1", 4)], EraseRequest("c1", "r1", SRC))]
    out.clear()
    request = SavepointRequest(0, "r2", "/sp", "t", SRC)
    routes.command(request, out)
    assert [(route, item.shard, item.store) for route, item in out] == [  # type: ignore[attr-defined]
        (route, n, "") for n, route in enumerate(routes.routes)]
