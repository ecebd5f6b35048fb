"""An aggregator restarted mid-way through a secure-aggregation round starts a new attempt.

The keys, the sealed shares and the masked sum lived in the first aggregator's memory:
the restarted one re-opens the round from key advertisement as attempt 1, refuses the
old attempt's messages (409 stale_attempt), and the clients' new sessions sum exactly.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from client_worker.errors import UpdateRejected
from client_worker.secagg_session import SecAggSession
from shared.secagg.vector import masked_names, vector_length
from shared.wire import spec_of
from tests.aggregator_service.federation.secagg_clients import (
    ClientPlan,
    TestChannel,
    expected_model,
    known_delta,
    quantized_delta,
    run_clients,
)
from tests.aggregator_service.federation.test_secagg_rounds import IDS, secagg_experiment
from tests.aggregator_service.helpers import AppFactory, global_model, register, wait_for


def test_restart_mid_round_retries_it_as_a_new_attempt(
    start_app: AppFactory, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    config = secagg_experiment(secagg={"stage_timeout_s": 10.0})
    first = start_app(config, state_dir=state_dir)
    register(first, *IDS)
    wait_for(first, lambda s: s["phase"] == "training")
    message, current = global_model(first)
    assert message["config"]["secagg"]["attempt"] == 0
    length = vector_length(spec_of(current))
    old = [SecAggSession(TestChannel(first), c, 1, message["config"], wait_s=5) for c in IDS]
    threads = [threading.Thread(target=session.prepare) for session in old]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert first.get("/secagg/state", params={"client_id": "c0"}).json()["stage"] == "masked"
    first.__exit__(None, None, None)  # the aggregator goes away with the shares delivered

    second = start_app(config, state_dir=state_dir)
    status = second.get("/status").json()
    assert (status["round"], status["attempt"], status["phase"]) == (1, 1, "training")
    view = second.get("/secagg/state", params={"client_id": "c0"}).json()
    assert (view["round"], view["attempt"], view["stage"]) == (1, 1, "keys")
    stale = old[0]
    stale.channel = TestChannel(second)
    with pytest.raises(UpdateRejected, match="stale_attempt"):
        stale.submit(known_delta("c0", length), 10, {}, np.random.default_rng(0))

    message, current = global_model(second)
    assert message["config"]["secagg"]["attempt"] == 1
    plans = [ClientPlan(c) for c in IDS]
    run_clients(second, plans, 1, message["config"], length)
    assert not [p.errors for p in plans if p.errors]
    wait_for(second, lambda s: s["phase"] == "finished")
    (row,) = second.get("/history").json()
    assert (row["attempts"], row["participants"]) == (2, IDS)

    quantizer = config.secagg.quantizer()
    plain = np.zeros(length, np.uint64)
    for c in IDS:
        plain += quantized_delta(c, length, 1.0, quantizer)
    spec = spec_of(current)
    expected = expected_model(current, masked_names(spec), plain, 10.0, 10, quantizer)
    _, new = global_model(second)
    for name, array in expected.items():
        assert np.array_equal(new[name], array), name
