"""Async mode's bookkeeping: slots, eligibility, refusals, duplicates and persistence."""

from __future__ import annotations

import time

import pytest

from aggregator_service.federation.async_book import AsyncBook
from shared.config import AsyncConfig
from shared.errors import Conflict, InvalidUpdate


def book(**section: object) -> AsyncBook:
    return AsyncBook(AsyncConfig.model_validate(section), seed=0, timeout_s=60.0)


def test_fill_gives_at_most_concurrency_slots_and_never_twice_in_a_round() -> None:
    desk = book(concurrency=2)
    first = desk.fill(1, ["a", "b", "c", "d"], (), registered=4)
    assert len(first) == 2
    assert desk.selected_in(1) == frozenset(first)
    assert desk.fill(1, ["a", "b", "c", "d"], (), registered=4) == []  # capacity reached
    desk.accept(first[0], 1)
    again = desk.fill(1, ["a", "b", "c", "d"], (), registered=4)
    assert len(again) == 1
    assert again[0] not in first
    desk.accept(first[1], 1)
    desk.accept(again[0], 1)
    assert len(desk.fill(2, [first[0]], (), registered=4)) == 1  # round 2: its turn again


def test_busy_clients_and_inactive_ones_are_not_selected() -> None:
    desk = book()
    assert desk.fill(3, ["a", "b"], busy={"a"}, registered=5) == ["b"]
    assert desk.capacity(5) == 5


def test_check_orders_refusals() -> None:
    desk = book(max_staleness=2)
    desk.fill(1, ["a", "b"], (), registered=2)
    with pytest.raises(InvalidUpdate, match="no client can have trained"):
        desk.check("a", 5, current_round=4)
    assert desk.check("a", 1, current_round=3) is False  # staleness 2: taken
    with pytest.raises(Conflict) as too_old:
        desk.check("b", 1, current_round=4)  # staleness 3
    assert too_old.value.code == "too_stale"
    assert desk.stale_refused == 1
    desk.accept("a", 1)
    assert desk.check("a", 1, current_round=4) is True  # a duplicate, however old
    with pytest.raises(Conflict) as never:
        desk.check("c", 4, current_round=4)
    assert never.value.code == "not_selected"


def test_an_older_update_than_an_accepted_one_is_stale() -> None:
    desk = book()
    desk.fill(1, ["a"], (), registered=1)
    desk.accept("a", 1)
    desk.fill(2, ["a"], (), registered=1)
    desk.accept("a", 2)
    with pytest.raises(Conflict) as stale:
        desk.check("a", 1, current_round=3)
    assert stale.value.code == "stale_round"


def test_expired_and_released_slots_go_back() -> None:
    desk = AsyncBook(AsyncConfig(), seed=0, timeout_s=0.0)
    desk.fill(1, ["a", "b"], (), registered=2)
    assert desk.expire(time.monotonic() + 1) == ["a", "b"]
    assert desk.slots == {}
    assert desk.given == {"a": 1, "b": 1}
    long = book()
    long.fill(1, ["a"], (), registered=1)
    assert long.release("a", 1) is False  # asking for its own round: still training
    assert long.release("a", 2) is True
    assert "a" not in long.slots


def test_meta_round_trip_restores_open_slots_only() -> None:
    desk = book()
    desk.fill(1, ["a", "b"], (), registered=2)
    desk.accept("a", 1)
    restored = book()
    restored.load_meta(desk.to_meta())
    assert restored.given == {"a": 1, "b": 1}
    assert restored.accepted == {"a": 1}
    assert set(restored.slots) == {"b"}
    assert restored.check("a", 1, current_round=2) is True
