"""Several virtual clients in one process: one thread each, sharing one loaded dataset.

Client k trains on partition k with its own `httpx.Client`; with `train_slots` at most
that many of the process's clients train at the same time, and they share twice that many
model modules (one to train, one to post from, per slot), plus one per client whose training
is slowed down (it keeps its module while it waits); without a limit, one per client.
"""

from __future__ import annotations

import threading

import httpx

from client_worker.device import GpuGate
from client_worker.feed import ModelFeed
from client_worker.local_model import ModelPool
from client_worker.network import Sleep, slowed_clients
from client_worker.settings import WorkerSettings
from client_worker.slots import TrainingSlots
from client_worker.summary import Activity, WorkerSummary
from client_worker.worker import run_worker
from shared.config import ExperimentConfig
from shared.data import Dataset, dataset_from_config

__all__ = ["run_virtual_clients"]


def run_virtual_clients(
    client_ids: list[int],
    settings: WorkerSettings,
    config: ExperimentConfig,
    *,
    stop: threading.Event | None = None,
    dataset: Dataset | None = None,
    transport: httpx.BaseTransport | None = None,
    sleep: Sleep | None = None,
    activity: Activity | None = None,
) -> list[WorkerSummary]:
    """Run several clients in this process, one thread each, sharing one loaded dataset.

    Client k trains on partition k; at most `settings.train_slots` of them train at the
    same time, on one device (`settings.gpu_sharing` says how they share a GPU); one
    that runs out of GPU memory skips that round and the others go on. The first error of
    any client stops all of them and is raised once every thread has ended.
    """
    stop = stop if stop is not None else threading.Event()
    slots = TrainingSlots(settings.train_slots)  # one for the process: shared by every client
    gate = GpuGate(settings.device_plan(), settings.gpu_sharing)  # and one device
    feed = ModelFeed()  # one download of each global model for every client
    config = settings.experiment_for_worker(config)
    if dataset is None:
        dataset = dataset_from_config(config)
    train_slots = settings.train_slots
    # A slowed-down client keeps its module while it waits: one more for each of them.
    slowed = slowed_clients(config.network, client_ids)
    models = ModelPool(dataset, 2 * train_slots + slowed if train_slots is not None else None)
    timeline = settings.timeline_file()  # one file for the process, a lane per client
    summaries: dict[int, WorkerSummary] = {}
    errors: list[BaseException] = []

    def run_one(client_index: int) -> None:
        own = settings.model_copy(
            update={"client_id": str(client_index), "partition_id": client_index}
        )
        try:
            summaries[client_index] = run_worker(
                own,
                config,
                stop=stop,
                dataset=dataset,
                transport=transport,
                sleep=sleep,
                activity=activity,
                slots=slots,
                feed=feed,
                models=models,
                gate=gate,
                timeline=timeline,
            )
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)
            stop.set()

    threads = [
        threading.Thread(target=run_one, args=(cid,), name=f"client-{cid}", daemon=True)
        for cid in client_ids
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [summaries[cid] for cid in client_ids]
