"""Every shipped scenario config in configs/, run for 1-2 rounds with real processes.

Each run keeps what defines its scenario (the model, the partitioner, the selection and
closing rules, the simulated network, server-side evaluation) and shrinks only what costs
time: fewer rounds, one local epoch, tiny synthetic or fake CIFAR-10 data. One aggregator
process and one worker process hosting every client virtually.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fault.procs import Processes
from tests.shared.runs.scenario_helpers import (
    CONFIGS,
    MD5_FREE_LAUNCHER,
    PLAIN_LAUNCHER,
    ScenarioRun,
    model_payload_bytes,
    run_scenario,
    write_tiny_cifar10,
)

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 150.0  # a bound, not the expected time (tens of seconds)
MNIST5K_PER_CLIENT = 400  # 4000 training digits split IID over ten clients
CIFAR_PER_CLASS = 4  # fake CIFAR-10 training images per label
SYNTHETIC_PER_CLASS = 6  # synthetic.train_size 60 over ten classes
# uvicorn (0.29+) re-raises SIGTERM after its graceful shutdown, so a stopped aggregator
# ends "killed by SIGTERM" rather than with exit code 0.
STOPPED_CLEANLY = (0, -signal.SIGTERM)
MSGPACK_SLACK = 0.01  # names, dtype/shape headers and metrics around the raw tensor bytes
HEADER_BYTES = 1024  # ... at least this much of them per update (a head-only update is 8 KB)


@dataclass(frozen=True)
class Scenario:
    """One config, its shrinking overrides, and what its rounds must look like."""

    config: str
    overrides: tuple[str, ...]
    rounds: int
    min_participants: int
    max_participants: int
    examples_per_client: int
    plain_updates: bool = True  # updates posted whole to /receive (not masked vectors)


FAST = ("local_epochs=1",)
SCENARIOS = [
    # fraction_fit 1.0, no early close: all ten clients report every round.
    Scenario("demo", (*FAST, "num_rounds=2"), 2, 10, 10, MNIST5K_PER_CLIENT),
    # ceil(0.4 * 10) = 4 invited; the round closes once min_fit_clients = 3 arrived.
    Scenario("mnist-mlp128-threshold", (*FAST, "num_rounds=2"), 2, 3, 4, MNIST5K_PER_CLIENT),
    Scenario("mnist-2nn-threshold", (*FAST, "num_rounds=2"), 2, 3, 4, MNIST5K_PER_CLIENT),
    # k = max(min_fit_clients 3, ceil(0.5 * 10)) = 5 invited, all awaited.
    Scenario("flower-knobs", (*FAST, "num_rounds=2"), 2, 5, 5, MNIST5K_PER_CLIENT),
    # Three clients with two classes each.
    Scenario(
        "synthetic-resnet18-classes",
        ("num_rounds=1", "synthetic.train_size=60", "synthetic.test_size=20"),
        1,
        3,
        3,
        2 * SYNTHETIC_PER_CLASS,
    ),
    Scenario("cifar10-resnet18-classes", ("num_rounds=1",), 1, 3, 3, 2 * CIFAR_PER_CLASS),
    # 50 of the 100 clients each round (fraction_fit 0.5), 40 digits each; two rounds stay
    # well under the budget (tests/shared/runs/test_dp_e2e.py runs into it)
    Scenario("dp-fedavg", ("num_rounds=2",), 2, 50, 50, MNIST5K_PER_CLIENT // 10),
    # The head alone trains; the pretrained file is made by `make transfer` (its own
    # end-to-end test, tests/shared/runs/test_e2e.py, makes one), so not loaded here.
    Scenario(
        "transfer-mlp", (*FAST, "num_rounds=2", "pretrained=null"), 2, 8, 10, MNIST5K_PER_CLIENT
    ),
    # Every round masked: the updates come as masked vectors, not /receive bodies.
    Scenario("secagg", (*FAST, "num_rounds=2"), 2, 10, 10, MNIST5K_PER_CLIENT, False),
]
# Shipped configs that an end-to-end test of their own runs as shipped (their bytes, or
# their privacy budgets, are what those tests check).
OWN_TESTS = {
    "async": "test_e2e_async.py",
    "compression": "test_e2e_compression.py",
    "dp-sgd": "test_e2e_dp_sgd.py",
}


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Processes logging to tmp_path; every survivor is stopped at teardown."""
    group = Processes(tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


def run(scenario: Scenario, procs: Processes, tmp_path: Path) -> ScenarioRun:
    """Run the scenario; the CIFAR-10 one reads tiny fake files from tmp_path."""
    overrides = list(scenario.overrides)
    launcher = PLAIN_LAUNCHER
    if scenario.config.startswith("cifar10"):
        write_tiny_cifar10(tmp_path / "data", per_class=CIFAR_PER_CLASS, test_size=20)
        overrides.append(f"data_dir={tmp_path / 'data'}")
        launcher = MD5_FREE_LAUNCHER  # the fake files cannot have the real md5 sums
    return run_scenario(
        procs,
        CONFIGS / f"{scenario.config}.yaml",
        overrides,
        state_dir=tmp_path / "state",
        timeout_s=RUN_TIMEOUT_S,
        launcher=launcher,
    )


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.config)
def test_scenario_runs_its_rounds(scenario: Scenario, procs: Processes, tmp_path: Path) -> None:
    outcome = run(scenario, procs, tmp_path)
    config = outcome.config
    assert outcome.worker_code == 0, outcome.logs
    assert outcome.aggregator_code in STOPPED_CLEANLY, outcome.logs
    assert "Application shutdown complete" in outcome.logs
    assert outcome.stored_history == outcome.history
    assert [row["round"] for row in outcome.history] == list(range(1, scenario.rounds + 1))

    client_ids = {str(k) for k in range(config.num_partitions)}
    payload = model_payload_bytes(config)
    update = model_payload_bytes(config, sent=True)  # frozen tensors do not travel
    for row in outcome.history:
        participants = row["participants"]
        assert len(set(participants)) == len(participants), row
        assert set(participants) <= client_ids, row
        count = len(participants)
        assert scenario.min_participants <= count <= scenario.max_participants, row
        assert count >= config.min_fit_clients, row
        assert row["num_examples"] == count * scenario.examples_per_client, row
        assert config.server_eval
        assert 0.0 <= row["eval_accuracy"] <= 1.0, row
        most = count * (update * (1 + MSGPACK_SLACK) + HEADER_BYTES)
        if scenario.plain_updates:
            assert count * update <= row["bytes_in"] <= most, row
        assert row["bytes_out"] >= payload, row
        if row["round"] > 1:
            # One worker process: its virtual clients share each model's download (ModelFeed),
            # where each would fetch its own without it. A client whose poll spans the round's
            # change may still fetch the new model itself (the server moved on while it asked
            # for the old one), so a few downloads per round, never one per client. Before
            # round 1, each registration may publish a new waiting model.
            shared = max(count, config.num_partitions // 2) * payload
            assert row["bytes_out"] < shared, row


def test_scenarios_cover_every_shipped_config() -> None:
    shipped = sorted(path.stem for path in CONFIGS.glob("*.yaml"))
    assert sorted([s.config for s in SCENARIOS] + list(OWN_TESTS)) == shipped
    for config, test in OWN_TESTS.items():
        assert f"configs/{config}.yaml" in (Path(__file__).parent / test).read_text()


def test_classes_scenarios_use_three_clients_of_two_classes() -> None:
    from shared.config import load_config

    for name in ["synthetic-resnet18-classes", "cifar10-resnet18-classes"]:
        config = load_config(CONFIGS / f"{name}.yaml")
        assert config.num_partitions == 3
        assert config.partition.name == "classes"
        assert config.model == "resnet18"


def test_resnet18_payload_is_about_45_mb() -> None:
    from shared.config import load_config

    config = load_config(
        CONFIGS / "synthetic-resnet18-classes.yaml", {"synthetic": {"train_size": 60}}
    )
    # 11,173,962 parameters (3x3 stem, 10 classes) + 2 x 4,800 BatchNorm running statistics
    # + 20 num_batches_tracked counters = 11,183,582 values, about 4 bytes each.
    assert math.isclose(model_payload_bytes(config), 4 * 11_183_582, rel_tol=0.001)
