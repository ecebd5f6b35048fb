"""Secure-aggregation rounds in-process: exact sums with and without dropouts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shared.secagg.vector import masked_names, vector_length
from shared.wire import spec_of
from tests.aggregator_service.federation.secagg_clients import (
    ClientPlan,
    expected_model,
    quantized_delta,
    run_clients,
)
from tests.aggregator_service.helpers import (
    AppFactory,
    experiment,
    global_model,
    register,
    wait_for,
)

IDS = [f"c{i}" for i in range(10)]


def secagg_experiment(**overrides: Any) -> Any:
    """Ten clients, secagg on, short stage deadlines so dropouts close stages quickly."""
    base: dict[str, Any] = {
        "num_rounds": 1,
        "min_fit_clients": 5,
        "min_available_clients": 10,
        "num_partitions": 10,
        "round_timeout_s": 2.0,
        "secagg": {"enabled": True, "stage_timeout_s": 2.0},
    }
    merged = {**base, **overrides}
    merged["secagg"] = {**base["secagg"], **overrides.get("secagg", {})}
    return experiment(**merged)


SECAGG_PLUS = {"num_neighbours": 6, "threshold": 4}  # 7 holders: any 3 may drop


@pytest.mark.parametrize(
    ("options", "drop"),
    [
        ({}, "before_masked"),
        ({}, "before_unmask"),
        (SECAGG_PLUS, "before_masked"),
        ({}, "none"),
        ({"modulus": 1 << 26, "quantization_range": 1 << 20}, "before_masked"),
    ],
)
def test_the_sum_is_exact_when_three_of_ten_drop(
    start_app: AppFactory, options: dict[str, Any], drop: str
) -> None:
    config = secagg_experiment(secagg=options)
    client = start_app(config)
    register(client, *IDS)
    wait_for(client, lambda s: s["phase"] == "training")
    message, current = global_model(client)
    spec = spec_of(current)
    length = vector_length(spec)
    dropped = set(IDS[2:5]) if drop != "none" else set()
    plans = [
        ClientPlan(
            c,
            drop_before_masked=c in dropped and drop == "before_masked",
            drop_before_unmask=c in dropped and drop == "before_unmask",
        )
        for c in IDS
    ]
    run_clients(client, plans, 1, message["config"], length)
    assert not [p.errors for p in plans if p.errors]
    status = wait_for(client, lambda s: s["phase"] == "finished")
    summed_in = [c for c in IDS if not (c in dropped and drop == "before_masked")]
    (row,) = client.get("/history").json()
    assert row["participants"] == summed_in, status

    quantizer = config.secagg.quantizer()
    plain = np.zeros(length, np.uint64)
    for c in summed_in:
        plain += quantized_delta(c, length, 1.0, quantizer)
    assert plain.max() < config.secagg.modulus
    expected = expected_model(
        current, masked_names(spec), plain, float(len(summed_in)), len(summed_in), quantizer
    )
    _, new = global_model(client)
    for name, array in expected.items():
        assert np.array_equal(new[name], array), name


def test_clients_weighted_by_examples_give_the_weighted_mean(start_app: AppFactory) -> None:
    options = {"weighting": "num_examples", "max_num_examples": 100}
    config = secagg_experiment(secagg=options)
    client = start_app(config)
    register(client, *IDS)
    wait_for(client, lambda s: s["phase"] == "training")
    message, current = global_model(client)
    spec = spec_of(current)
    length = vector_length(spec)
    examples = {c: 10 + 9 * i for i, c in enumerate(IDS)}
    plans = [ClientPlan(c, num_examples=examples[c]) for c in IDS]
    run_clients(client, plans, 1, message["config"], length)
    assert not [p.errors for p in plans if p.errors]
    wait_for(client, lambda s: s["phase"] == "finished")

    quantizer = config.secagg.quantizer()
    plain = np.zeros(length, np.uint64)
    for c in IDS:
        plain += quantized_delta(c, length, examples[c] / 100, quantizer)
    total_weight = sum(examples[c] / 100 for c in sorted(IDS))  # as the aggregator adds them
    expected = expected_model(current, masked_names(spec), plain, total_weight, 10, quantizer)
    _, new = global_model(client)
    for name, array in expected.items():
        assert np.array_equal(new[name], array), name
