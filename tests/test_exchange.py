"""What crosses an exchange (operators/exchange.py): a list per key and batch, same order per key."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nextclick.operators.exchange import flatten, grouped

pairs = st.lists(st.tuples(st.sampled_from(["0", "1", "customer/3", "email/0"]), st.integers()), max_size=60)


@given(pairs)
def test_each_key_receives_its_items_in_the_order_they_were_routed(routed: list[tuple[str, int]]) -> None:
    out = grouped(routed)
    assert len({key for key, _ in out}) == len(out)  # one list per key
    for key, items in out:
        assert items == [item for k, item in routed if k == key]
    assert sorted(item for _, items in out for item in items) == sorted(item for _, item in routed)


@given(st.lists(st.one_of(st.integers(), st.lists(st.integers(), min_size=1)), max_size=30))
def test_a_step_reads_lists_and_lone_items_in_arrival_order(received: list[int | list[int]]) -> None:
    expected: list[int] = []
    for value in received:
        expected += value if isinstance(value, list) else [value]
    assert flatten(received) == expected
