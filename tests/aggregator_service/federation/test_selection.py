"""Tests of aggregator_service/federation/selection.py: reproducible client selection."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator_service.federation.selection import num_fit_clients, select_clients
from shared.errors import ConfigError


def _ids(n: int) -> list[str]:
    return [f"client-{i:03d}" for i in range(n)]


@pytest.mark.parametrize(
    ("n", "fraction_fit", "min_fit_clients", "expected"),
    [
        (10, 1.0, 2, 10),  # everyone
        (10, 0.5, 2, 5),  # ceil(5.0)
        (10, 0.25, 2, 3),  # ceil(2.5)
        (10, 0.1, 2, 2),  # ceil(1.0) = 1, raised to the minimum 2
        (10, 0.7, 1, 7),  # 0.7 * 10 == 7.000000000000001 in floats; still 7
        (3, 0.1, 1, 1),  # ceil(0.3)
        (3, 0.5, 5, 3),  # minimum 5 capped at the 3 available
        (100, 0.33, 2, 33),
        (100, 0.333, 2, 34),  # ceil(33.3)
        (0, 1.0, 2, 0),  # nobody to select
    ],
)
def test_number_of_selected_clients(
    n: int, fraction_fit: float, min_fit_clients: int, expected: int
) -> None:
    assert num_fit_clients(n, fraction_fit=fraction_fit, min_fit_clients=min_fit_clients) == (
        expected
    )
    selected = select_clients(
        _ids(n), server_round=1, fraction_fit=fraction_fit, min_fit_clients=min_fit_clients, seed=0
    )
    assert len(selected) == expected


def test_same_inputs_give_same_selection_regardless_of_order() -> None:
    def pick(available: list[str] | set[str]) -> list[str]:
        return select_clients(
            available, server_round=3, fraction_fit=0.3, min_fit_clients=2, seed=42
        )

    ids = _ids(20)
    first, again, as_set = pick(ids), pick(list(reversed(ids))), pick(set(ids))
    assert first == again == as_set
    assert first == sorted(first)
    assert len(first) == 6


def test_rounds_and_seeds_change_the_selection() -> None:
    ids = _ids(30)
    by_round = {
        tuple(select_clients(ids, server_round=r, fraction_fit=0.2, min_fit_clients=1, seed=0))
        for r in range(1, 11)
    }
    # 10 draws of 6 out of 30 (593,775 subsets): all equal would mean the round is ignored.
    assert len(by_round) > 1
    by_seed = {
        tuple(select_clients(ids, server_round=1, fraction_fit=0.2, min_fit_clients=1, seed=s))
        for s in range(10)
    }
    assert len(by_seed) > 1


def test_duplicate_ids_count_once() -> None:
    selected = select_clients(
        ["a", "b", "a", "b"], server_round=1, fraction_fit=1.0, min_fit_clients=1, seed=0
    )
    assert selected == ["a", "b"]


@pytest.mark.parametrize(
    ("fraction_fit", "min_fit_clients", "match"),
    [(0.0, 1, "fraction_fit"), (1.5, 1, "fraction_fit"), (0.5, 0, "min_fit_clients")],
)
def test_invalid_parameters_raise(fraction_fit: float, min_fit_clients: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        select_clients(
            _ids(5),
            server_round=1,
            fraction_fit=fraction_fit,
            min_fit_clients=min_fit_clients,
            seed=0,
        )


@settings(max_examples=100, deadline=None)
@given(
    ids=st.sets(st.text(min_size=1, max_size=8), max_size=40),
    fraction_fit=st.floats(0.01, 1.0),
    min_fit_clients=st.integers(1, 50),
    server_round=st.integers(0, 1000),
    seed=st.integers(0, 2**32),
)
def test_selection_is_a_sorted_subset_of_size_k(
    ids: set[str], fraction_fit: float, min_fit_clients: int, server_round: int, seed: int
) -> None:
    selected = select_clients(
        ids,
        server_round=server_round,
        fraction_fit=fraction_fit,
        min_fit_clients=min_fit_clients,
        seed=seed,
    )
    n = len(ids)
    # k computed independently: the smallest count covering the fraction, at least the minimum.
    covering = next(c for c in range(n + 1) if c >= fraction_fit * n - 1e-9)
    assert len(selected) == min(n, max(min_fit_clients, covering))
    assert len(set(selected)) == len(selected)
    assert set(selected) <= ids
    assert selected == sorted(selected)
