"""DP-FedAvg's clipping client: the delta clipped to the round's C, the bit, the registry."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from client_worker.algorithms import ClientAlgorithm, FedProx, RoundContext, algorithm_class
from client_worker.algorithms.dp_clipping import ClientClipping, clip_delta
from client_worker.train import TrainResult
from shared.errors import ConfigError
from shared.privacy.clipping import CLIP_BITS, UNCLIPPED

_RESULT = TrainResult(1, 0.0, 1, 0.0, 0.0, 0.0)


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    return model


def _round(model: nn.Module, **config: Any) -> tuple[RoundContext, dict[str, np.ndarray]]:
    state = {n: t.detach().numpy().copy() for n, t in model.state_dict().items()}
    context = RoundContext(1, {"strategy": "dpfedavg", **config}, state)
    return context, state


def test_clip_delta_scales_the_whole_delta_to_c() -> None:
    x = {"a": np.array([1.0], np.float32), "b": np.array([0.0], np.float32)}
    y = {"a": np.array([4.0], np.float32), "b": np.array([4.0], np.float32)}  # delta (3, 4)
    clipped, norm = clip_delta(y, x, ["a", "b"], 2.5)
    assert norm == 5.0
    np.testing.assert_allclose([clipped["a"][0], clipped["b"][0]], [2.5, 2.0])
    assert clipped["a"].dtype == np.float32
    same, _ = clip_delta(y, x, ["a", "b"], 10.0)
    np.testing.assert_array_equal(same["b"], y["b"])


def test_the_client_clips_every_floating_tensor_and_leaves_counters_alone() -> None:
    model = _model()
    context, x = _round(model, clip_norm=0.5, update_groups=[CLIP_BITS])
    algorithm = ClientClipping()
    algorithm.before_training(model, context)
    trained = {n: (a + 1).astype(a.dtype) for n, a in x.items()}  # every tensor moved by 1
    sent = algorithm.after_training(trained, _RESULT)
    floating = [n for n, a in x.items() if a.dtype.kind == "f"]
    delta = np.concatenate([(sent[n] - x[n]).ravel() for n in floating]).astype(np.float64)
    assert np.linalg.norm(delta) == pytest.approx(0.5, rel=1e-6)
    assert int(sent["1.num_batches_tracked"]) == int(x["1.num_batches_tracked"]) + 1
    bits = algorithm.groups_to_send()
    assert float(bits[CLIP_BITS][UNCLIPPED]) == 0.0  # the norm was above C
    assert bits[CLIP_BITS][UNCLIPPED].dtype == np.float32


def test_an_unclipped_delta_reports_bit_1_and_no_group_unless_asked() -> None:
    model = _model()
    context, x = _round(model, clip_norm=100.0, update_groups=[CLIP_BITS])
    algorithm = ClientClipping()
    algorithm.before_training(model, context)
    algorithm.after_training({n: a + 0 for n, a in x.items()}, _RESULT)
    assert float(algorithm.groups_to_send()[CLIP_BITS][UNCLIPPED]) == 1.0
    context, _ = _round(model, clip_norm=100.0)
    algorithm.before_training(model, context)
    algorithm.after_training(dict(x), _RESULT)
    assert algorithm.groups_to_send() == {}


@pytest.mark.parametrize("value", [None, "x", 0, -1.0, float("inf"), float("nan")])
def test_a_bad_clip_norm_is_refused(value: Any) -> None:
    model = _model()
    context, x = _round(model, clip_norm=value)
    algorithm = ClientClipping()
    algorithm.before_training(model, context)
    with pytest.raises(ConfigError, match="clip_norm"):
        algorithm.after_training(dict(x), _RESULT)


def test_the_registry_clips_only_when_the_round_sends_a_clip_norm() -> None:
    assert algorithm_class({"strategy": "dpfedavg", "clip_norm": 1.0}) is ClientClipping
    assert algorithm_class({"strategy": "dpfedavg"}) is ClientAlgorithm
    assert algorithm_class({"strategy": "dpfedavg", "mu": 0.1}) is FedProx
