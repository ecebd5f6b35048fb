"""FedProx and SCAFFOLD end to end: a served aggregator and two workers, over real HTTP.

Two of the three clients of a tiny synthetic federation train two rounds; the aggregator
runs in a uvicorn thread and the workers as virtual clients of this process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import load_file
from torch import nn

from aggregator_service.api.app import create_app
from aggregator_service.settings import AggregatorSettings
from client_worker.algorithms import RoundContext
from client_worker.algorithms.fedprox import FedProx
from client_worker.settings import WorkerSettings
from client_worker.virtual import run_virtual_clients
from shared.config import ExperimentConfig
from shared.wire import decode_groups, decode_message
from tests.aggregator_service.helpers import experiment
from tests.aggregator_service.serving import serve

CONTROL = "server_state/control/"  # SCAFFOLD's c in the checkpoints


def _experiment(strategy: dict[str, Any]) -> ExperimentConfig:
    synthetic = {"channels": 1, "image_size": 4, "num_classes": 3, "train_size": 60}
    return experiment(
        dataset="synthetic",
        synthetic={**synthetic, "test_size": 10},
        model="mlp",
        num_partitions=3,  # N = 3; clients 0 and 1 take part: |S| = 2
        local_epochs=2,
        batch_size=8,
        strategy=strategy,
    )


def _federate(tmp_path: Path, config: ExperimentConfig) -> tuple[dict[str, Any], list[Any]]:
    """Run two rounds; return the final /get_weights message and the /history rows."""
    settings = AggregatorSettings(state_dir=tmp_path / "state")
    with serve(create_app(settings, config)) as (url, _):
        worker = WorkerSettings(
            server_url=url,
            long_poll_wait_s=2,
            backoff_max_time_s=10,
            state_dir=tmp_path / "worker-state",
        )
        summaries = run_virtual_clients([0, 1], worker, config)
        final = decode_message(httpx.get(f"{url}/get_weights", timeout=10).content)
        history = httpx.get(f"{url}/history", timeout=10).json()
    assert [(s.outcome, s.rounds_trained) for s in summaries] == [("finished", 2)] * 2
    assert [row["round"] for row in history] == [1, 2]
    assert all(row["participants"] == ["0", "1"] for row in history)
    return final, history


def test_fedprox_as_a_named_strategy_sends_its_mu_to_the_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[float] = []
    original = FedProx.before_training

    def recording(self: FedProx, model: nn.Module, context: RoundContext) -> None:
        original(self, model, context)
        seen.append(self.mu)

    monkeypatch.setattr(FedProx, "before_training", recording)
    final, _ = _federate(tmp_path, _experiment({"name": "fedprox", "mu": 0.5}))
    assert final["protocol"] == 1
    assert (final["config"]["strategy"], final["config"]["mu"]) == ("fedprox", 0.5)
    assert seen == [0.5] * 4  # two clients, two rounds


def test_scaffold_moves_c_and_keeps_each_clients_c_i_in_its_state_file(tmp_path: Path) -> None:
    final, _ = _federate(tmp_path, _experiment({"name": "scaffold"}))
    assert final["protocol"] == 2
    assert final["config"]["update_groups"] == ["control_delta"]

    checkpoints = tmp_path / "state" / "checkpoints"
    first, second = (load_file(checkpoints / f"round-{r:06d}.safetensors") for r in (1, 2))
    c_1 = {k.removeprefix(CONTROL): v for k, v in first.items() if k.startswith(CONTROL)}
    c_2 = {k.removeprefix(CONTROL): v for k, v in second.items() if k.startswith(CONTROL)}
    assert sorted(c_2) == sorted(name for name in second if not name.startswith("server_"))
    assert all(np.any(c_1[name] != 0) for name in c_1)
    assert any(np.any(c_1[name] != c_2[name]) for name in c_2)  # round 2 moved c again
    published = decode_groups(final["groups"])["server_control"]
    for name, c in c_2.items():
        np.testing.assert_array_equal(published[name], c.astype(np.float32))

    # c = c + |S|/N * mean(dc_i) keeps c the mean of all N clients' c_i (the third's is 0)
    files = [tmp_path / "worker-state" / client / "scaffold.npz" for client in ("0", "1")]
    assert all(path.is_file() for path in files)
    own = [dict(np.load(path, allow_pickle=False)) for path in files]
    for name, c in c_2.items():
        mean = (own[0][name].astype(np.float64) + own[1][name]) / 3
        np.testing.assert_allclose(c, mean, rtol=1e-5, atol=1e-6)
