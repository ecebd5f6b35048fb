"""Workers under secure aggregation: a served aggregator and virtual clients over real HTTP.

Four clients of a tiny synthetic federation train two rounds with their updates masked;
the model they reach is FedAvg's, up to the quantization step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np

from aggregator_service.api.app import create_app
from aggregator_service.settings import AggregatorSettings
from client_worker.settings import WorkerSettings
from client_worker.virtual import run_virtual_clients
from shared.config import ExperimentConfig
from shared.wire import decode_message, decode_weights
from tests.aggregator_service.helpers import experiment
from tests.aggregator_service.serving import serve

CLIENTS = [0, 1, 2, 3]


def _experiment(**overrides: Any) -> ExperimentConfig:
    synthetic = {"channels": 1, "image_size": 4, "num_classes": 3, "train_size": 80}
    return experiment(
        dataset="synthetic",
        synthetic={**synthetic, "test_size": 10},
        model="mlp",
        num_partitions=len(CLIENTS),
        min_fit_clients=len(CLIENTS),
        min_available_clients=len(CLIENTS),
        local_epochs=1,
        batch_size=8,
        **overrides,
    )


def _federate(tmp_path: Path, config: ExperimentConfig) -> tuple[dict[str, np.ndarray], Any]:
    """Run two rounds; return the final global weights and the /history rows."""
    settings = AggregatorSettings(state_dir=tmp_path / "state")
    with serve(create_app(settings, config)) as (url, _):
        worker = WorkerSettings(
            server_url=url,
            long_poll_wait_s=2,
            backoff_max_time_s=10,
            state_dir=tmp_path / "worker-state",
        )
        summaries = run_virtual_clients(CLIENTS, worker, config)
        final = decode_message(httpx.get(f"{url}/get_weights", timeout=10).content)
        history = httpx.get(f"{url}/history", timeout=10).json()
    assert [(s.outcome, s.rounds_trained) for s in summaries] == [("finished", 2)] * 4
    return decode_weights(final["weights"]), history


def test_masked_rounds_reach_fedavgs_model(tmp_path: Path) -> None:
    secagg = _experiment(secagg={"enabled": True, "stage_timeout_s": 10.0})
    masked, history = _federate(tmp_path / "masked", secagg)
    plain, _ = _federate(tmp_path / "plain", _experiment())
    assert [row["participants"] for row in history] == [["0", "1", "2", "3"]] * 2
    assert all(row["metrics"]["secagg_seconds"]["mean"] > 0 for row in history), history[0]
    for name, array in plain.items():
        np.testing.assert_allclose(masked[name], array, atol=5e-5, err_msg=name)


def test_dp_fedavg_with_adaptive_clipping_steps_alike_on_masked_sums(tmp_path: Path) -> None:
    """Client clipping with adaptive C: the clip bits travel masked too (an update group)."""
    strategy = {
        "name": "dpfedavg",
        "clipping": "client",
        "clip_norm": 0.05,
        "noise_multiplier": 0.3,
        "target_quantile": 0.5,
        "noise_seed": 7,  # the same noise in both runs (a known seed voids the guarantee)
    }
    secagg = {"enabled": True, "stage_timeout_s": 10.0}
    masked, history = _federate(tmp_path / "masked", _experiment(strategy=strategy, secagg=secagg))
    plain, plain_history = _federate(tmp_path / "plain", _experiment(strategy=strategy))
    assert [row["participants"] for row in history] == [["0", "1", "2", "3"]] * 2
    assert [row["epsilon"] for row in history] == [row["epsilon"] for row in plain_history]
    for name, array in plain.items():
        np.testing.assert_allclose(masked[name], array, atol=5e-5, err_msg=name)
