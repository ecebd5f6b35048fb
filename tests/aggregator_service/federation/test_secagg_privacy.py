"""The aggregator never holds an individual update under secure aggregation.

The test knows each client's true update (its float delta, its trained weights and the
quantized levels it masks) and searches for them in every array, byte string and string
reachable from the aggregator's objects, in every file of its state dir (the update
journal, the database, the checkpoints) and in its log records, while the masked vectors
are summed and after the round closed. The same search finds a plain round's updates in
the journal: it can see them when they are there.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from shared.secagg.quantize import Quantizer
from shared.secagg.vector import masked_names, split_vector, vector_length
from shared.wire import spec_of
from tests.aggregator_service.federation.secagg_clients import (
    ClientPlan,
    known_delta,
    quantized_delta,
    run_clients,
)
from tests.aggregator_service.federation.test_secagg_rounds import IDS, secagg_experiment
from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    experiment,
    global_model,
    register,
    update_body,
    wait_for,
)

_CODE = (type, types.ModuleType, types.FunctionType, types.MethodType, types.BuiltinFunctionType)
WINDOW = 8  # values per searched piece: a coincidence over 32 bytes is out of reach
PIECES = 6  # pieces searched per representation of an update


def needles(client_id: str, length: int, current: dict[str, np.ndarray], spec: Any) -> list[bytes]:
    """Return pieces of every form of a client's update: levels, deltas, trained weights."""
    quantized = quantized_delta(client_id, length, 1.0, Quantizer())
    delta = known_delta(client_id, length)
    trained = {
        name: (current[name].astype(np.float64) + d).astype(current[name].dtype)
        for name, d in split_vector(delta, spec).items()
    }
    flat_trained = np.concatenate([trained[n].reshape(-1) for n in masked_names(spec)])
    forms = [quantized, delta, delta.astype(np.float32), flat_trained]
    found = []
    for form in forms:
        for start in np.linspace(0, length - WINDOW, PIECES).astype(int):
            found.append(form[start : start + WINDOW].tobytes())
    text = " ".join(str(v) for v in quantized[:4])
    return [*found, text.encode()]


def reachable_bytes(root: object) -> Iterator[bytes]:
    """Yield the bytes of every array, byte string and string reachable from `root`."""
    seen: set[int] = set()
    stack: list[object] = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _CODE):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            yield np.ascontiguousarray(obj).tobytes()
        elif isinstance(obj, bytes | bytearray | memoryview):
            yield bytes(obj)
        elif isinstance(obj, str):
            yield obj.encode()
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        else:
            stack.extend(_attributes(obj))


def _attributes(obj: object) -> Iterable[object]:
    """Return an object's attribute values (instance dict and slots), skipping modules."""
    values: list[object] = []
    if hasattr(obj, "__dict__"):
        values.extend(vars(obj).values())
    for cls in type(obj).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if isinstance(slot, str) and hasattr(obj, slot):
                values.append(getattr(obj, slot))
    return values


def files_bytes(directory: Path) -> Iterator[bytes]:
    """Yield the contents of every file under `directory`."""
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            yield path.read_bytes()


def hits(blobs: Iterable[bytes], wanted: dict[str, list[bytes]]) -> dict[str, int]:
    """Return, per client, how many of its needles occur in `blobs`."""
    chunks = list(blobs)
    return {
        client: sum(any(n in blob for blob in chunks) for n in pieces)
        for client, pieces in wanted.items()
        if any(any(n in blob for blob in chunks) for n in pieces)
    }


def test_no_individual_update_in_memory_journal_or_logs(
    start_app: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = start_app(secagg_experiment(), state_dir=tmp_path / "state")
    register(client, *IDS)
    wait_for(client, lambda s: s["phase"] == "training")
    message, current = global_model(client)
    spec = spec_of(current)
    length = vector_length(spec)
    wanted = {c: needles(c, length, current, spec) for c in IDS}
    federation = client.app.state.federation  # type: ignore[attr-defined]
    found: dict[str, dict[str, int]] = {}

    def inspect(when: str) -> None:
        memory = list(reachable_bytes(federation))
        if when == "summed":  # the walk reaches the round's secure-aggregation state
            masked_sum = federation.state.round.secagg.masked_sum
            assert any(masked_sum[:WINDOW].tobytes() in blob for blob in memory)
        found[f"memory {when}"] = hits(memory, wanted)
        found[f"state dir {when}"] = hits(files_bytes(tmp_path / "state"), wanted)
        found[f"logs {when}"] = hits([caplog.text.encode()], wanted)

    plans = [ClientPlan(c, drop_before_unmask=c == "c3") for c in IDS]
    run_clients(
        client, plans, 1, message["config"], length, before_unmask=lambda: inspect("summed")
    )
    assert not [p.errors for p in plans if p.errors]
    wait_for(client, lambda s: s["phase"] == "finished")
    inspect("closed")
    assert set(found) == {
        f"{where} {when}"
        for where in ("memory", "state dir", "logs")
        for when in ("summed", "closed")
    }
    assert all(not hit for hit in found.values()), found


def test_the_search_finds_a_plain_rounds_updates_in_the_journal(
    start_app: AppFactory, tmp_path: Path
) -> None:
    client: TestClient = start_app(
        experiment(num_rounds=1, min_fit_clients=3, min_available_clients=3),
        state_dir=tmp_path / "state",
    )
    ids = IDS[:3]
    register(client, *ids)
    wait_for(client, lambda s: s["phase"] == "training")
    _, current = global_model(client)
    spec = spec_of(current)
    length = vector_length(spec)
    for c in ids[:2]:
        delta = split_vector(known_delta(c, length), spec)
        weights = {
            n: (a.astype(np.float64) + delta[n]).astype(a.dtype) if n in delta else a
            for n, a in current.items()
        }
        reply = client.post("/receive", content=update_body(c, 1, weights), headers=MSGPACK)
        assert reply.status_code == 200, reply.text
    wanted = {c: needles(c, length, current, spec) for c in ids}
    journal = hits(files_bytes(tmp_path / "state"), wanted)
    assert set(journal) == set(ids[:2]), journal
    assert all(count >= PIECES for count in journal.values())  # the trained weights, whole


def test_a_plain_update_sent_to_a_secagg_run_is_refused_unwritten(
    start_app: AppFactory, tmp_path: Path
) -> None:
    client = start_app(secagg_experiment(), state_dir=tmp_path / "state")
    register(client, *IDS)
    wait_for(client, lambda s: s["phase"] == "training")
    _, current = global_model(client)
    spec = spec_of(current)
    length = vector_length(spec)
    delta = split_vector(known_delta("c0", length), spec)
    weights = {
        n: (a.astype(np.float64) + delta[n]).astype(a.dtype) if n in delta else a
        for n, a in current.items()
    }
    for _ in range(2):  # a retry is refused the same way: no "duplicate"
        reply = client.post("/receive", content=update_body("c0", 1, weights), headers=MSGPACK)
        assert (reply.status_code, reply.json()["error"]) == (409, "secagg_required")
    wanted = {"c0": needles("c0", length, current, spec)}
    assert hits(files_bytes(tmp_path / "state"), wanted) == {}
