"""What a client is made of: the parts its process shares, and its own, built from its settings.

A worker process of virtual clients shares one activity, one set of training slots, one
model feed, one model pool, one GPU gate and one timeline file among all of them
(`client_worker.virtual`); a client alone gets its own. Each client then has its own data,
simulated network, attack (if byzantine), connection to the aggregator, model holder and
algorithm state.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import httpx

from client_worker.algorithms import AlgorithmSession
from client_worker.attack import select_attack
from client_worker.device import GpuGate
from client_worker.feed import ModelFeed
from client_worker.local_data import LocalData, load_local_data
from client_worker.local_model import LocalModel, ModelPool
from client_worker.network import NetworkSimulator, Sleep
from client_worker.retry import Backoff
from client_worker.settings import WorkerSettings
from client_worker.slots import TrainingSlots
from client_worker.summary import Activity
from client_worker.timeline import TimelineFile
from client_worker.train import derive_seed
from client_worker.transport import AggregatorClient
from shared.config import ByzantineProfile, ExperimentConfig
from shared.data import Dataset

__all__ = ["OwnParts", "SharedParts"]


@dataclass(frozen=True)
class SharedParts:
    """What the clients of a process share: activity, slots, feed, models, GPU, timeline."""

    activity: Activity
    slots: TrainingSlots
    feed: ModelFeed | None
    models: ModelPool
    gate: GpuGate
    timeline: TimelineFile | None  # where the clients' phases go; None: not recorded

    @classmethod
    def complete(
        cls,
        settings: WorkerSettings,
        dataset: Dataset,
        *,
        activity: Activity | None = None,
        slots: TrainingSlots | None = None,
        feed: ModelFeed | None = None,
        models: ModelPool | None = None,
        gate: GpuGate | None = None,
        timeline: TimelineFile | None = None,
    ) -> SharedParts:
        """Return the parts given, with a client's own (from `settings`) for those not given."""
        return cls(
            activity if activity is not None else Activity(),
            slots if slots is not None else TrainingSlots(settings.train_slots),
            feed,
            models if models is not None else ModelPool(dataset),
            gate if gate is not None else GpuGate(settings.device_plan(), settings.gpu_sharing),
            timeline if timeline is not None else settings.timeline_file(),
        )


@dataclass(frozen=True)
class OwnParts:
    """One client's own parts: data, simulated network, attack, connection, model, state."""

    data: LocalData
    network: NetworkSimulator
    attack: ByzantineProfile | None
    client: AggregatorClient
    model: LocalModel
    algorithms: AlgorithmSession

    @classmethod
    def build(
        cls,
        settings: WorkerSettings,
        config: ExperimentConfig,
        dataset: Dataset,
        models: ModelPool,
        *,
        stop: threading.Event,
        transport: httpx.BaseTransport | None,
        sleep: Sleep,
    ) -> OwnParts:
        """Build the parts of the client `settings` name, with `models` lending its module."""
        client_id, partition_id = settings.client_id, settings.resolved_partition_id()
        num_partitions = settings.resolved_num_partitions(config)
        data = load_local_data(
            dataset, config, partition_id=partition_id, num_partitions=num_partitions
        )
        seed = settings.resolved_seed(config)
        network = NetworkSimulator.from_config(
            config, client_index=partition_id, seed=seed, sleep=sleep
        )
        attack = select_attack(config.byzantine, partition_id)
        client = AggregatorClient(
            settings.server_url,
            client_id=client_id,
            timeout=settings.http_timeout(),
            backoff=Backoff(
                settings.backoff_base_s, settings.backoff_cap_s, settings.backoff_max_time_s
            ),
            network=network,
            transport=transport,
            stop=stop,
            sleep=sleep,
            seed=derive_seed(seed, partition_id),  # clients retry out of step
            token=settings.resolved_token(),
            verify=settings.ssl_verify(),
        )
        expected = {"dataset": config.dataset, "num_partitions": num_partitions}
        model = LocalModel(client_id, models, config.model, expected)
        algorithms = AlgorithmSession(client_id, settings.state_dir)
        return cls(data, network, attack, client, model, algorithms)
