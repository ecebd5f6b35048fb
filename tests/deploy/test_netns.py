"""Real multi-host runs: one namespace per VM, the systemd units' commands and env files.

Each simulated VM gets its own file tree from deploy/vm/install.sh and its role from
deploy/vm/tributary-role (clients by hostname, client-00 ... client-09, as cloned VMs
would); the processes start with the ExecStart, EnvironmentFile and Environment lines of
the unit that tributary-role enabled, inside the VM's network namespace. A separate
namespace plays the operator and inspects the aggregator with curl.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.wire import decode_message
from tests.deploy.helpers import DEPLOY, VM, parse_env_file
from tests.deploy.netns import Machine, TestNetwork, netns_unavailable_reason
from tests.deploy.vmroot import install_machine, service_command

pytestmark = pytest.mark.slow

NUM_CLIENTS = 10
AGGREGATOR_HOST = 10  # 10.213.0.10
OPERATOR_HOST = 200
PROCESS_LIFETIME_S = 240  # hard bound on every process, even if this test is killed
FEDERATION_DEADLINE_S = 200


def _skip_reason() -> str | None:
    for tool in ("timeout", "curl", "bash"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    return netns_unavailable_reason()


@pytest.fixture
def network() -> Iterator[TestNetwork]:
    """A fresh test network, torn down (processes, namespaces, links) whatever happens."""
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(f"multi-host test needs network namespaces: {reason}")
    net = TestNetwork()
    try:
        net.open()
        yield net
    finally:
        net.close()


def _aggregator_url(aggregator: Machine) -> str:
    """Return the URL the clients use: the VM's address and the port of aggregator.env."""
    port = parse_env_file(VM / "aggregator.env")["TRIBUTARY_AGG_PORT"]
    return f"http://{aggregator.address}:{port}"


def _fast_experiment() -> str:
    """deploy/experiment.yaml made quick: 2 rounds, 1 epoch, 7 batches per client."""
    config = yaml.safe_load((DEPLOY / "experiment.yaml").read_text())
    config |= {"num_rounds": 2, "local_epochs": 1, "batch_size": 64, "round_timeout_s": 120}
    config |= {"min_available_clients": NUM_CLIENTS, "min_fit_clients": NUM_CLIENTS}
    assert config["dataset"] == "mnist5k"
    assert config["model"] == "mlp"
    return yaml.safe_dump(config)


def _role_env(role: str, aggregator_url: str) -> str:
    return (
        f"TRIBUTARY_ROLE={role}\nTRIBUTARY_AGGREGATOR_URL={aggregator_url}\nTRIBUTARY_CLIENT_ID=\n"
    )


def _start_vm(
    net: TestNetwork, machine: Machine, *, root: Path, hostname: str, role: str, url: str
) -> tuple[str, subprocess.Popen[bytes], Path]:
    """Install a VM tree, enable its role's unit and start that unit's command."""
    unit = install_machine(
        root, role_env=_role_env(role, url), hostname=hostname, experiment=_fast_experiment()
    )
    service = service_command(root, unit)
    log_path = root / "service.log"
    with log_path.open("wb") as log:
        process = net.spawn(
            machine,
            service.argv,
            env=service.env,
            cwd=service.cwd,
            log=log,
            lifetime_s=PROCESS_LIFETIME_S,
        )
    return unit, process, log_path


def _curl(net: TestNetwork, operator: Machine, url: str, *extra: str) -> str:
    return net.run(operator, ["curl", "-sS", "--max-time", "5", *extra, url], timeout_s=10)


def _wait_healthy(
    net: TestNetwork, operator: Machine, base: str, process: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads(_curl(net, operator, f"{base}/healthz", "-f")) == {"status": "ok"}:
                return
        except (subprocess.CalledProcessError, json.JSONDecodeError):
            time.sleep(0.5)
    pytest.fail(f"aggregator not healthy (exit {process.poll()}); log:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _get_json(net: TestNetwork, operator: Machine, url: str) -> Any:
    return json.loads(_curl(net, operator, url, "-f"))


def test_aggregator_answers_from_another_namespace(network: TestNetwork, tmp_path: Path) -> None:
    """The aggregator VM serves /healthz and /status to a different machine of the subnet."""
    aggregator = network.add_machine("agg", AGGREGATOR_HOST)
    operator = network.add_machine("ops", OPERATOR_HOST)
    base = _aggregator_url(aggregator)
    unit, process, log = _start_vm(
        network,
        aggregator,
        root=tmp_path / "agg",
        hostname="aggregator",
        role="aggregator",
        url=base,
    )
    assert unit == "tributary-aggregator.service"
    _wait_healthy(network, operator, base, process, log)
    status = _get_json(network, operator, f"{base}/status")
    assert (status["round"], status["phase"]) == (1, "waiting")
    assert status["registered_clients"] == 0
    state_dir = tmp_path / "agg/var/lib/tributary"  # the unit's StateDirectory
    assert (state_dir / "checkpoints/round-000000.npz").is_file()
    assert process.poll() is None


def test_ten_client_vms_run_two_rounds(network: TestNetwork, tmp_path: Path) -> None:
    """One aggregator VM and ten cloned client VMs finish two rounds; inspect it with curl."""
    aggregator = network.add_machine("agg", AGGREGATOR_HOST)
    operator = network.add_machine("ops", OPERATOR_HOST)
    clients = [network.add_machine(f"c{k}", 100 + k) for k in range(NUM_CLIENTS)]
    base = _aggregator_url(aggregator)
    _, agg_process, agg_log = _start_vm(
        network,
        aggregator,
        root=tmp_path / "agg",
        hostname="aggregator",
        role="aggregator",
        url=base,
    )
    _wait_healthy(network, operator, base, agg_process, agg_log)

    workers = []
    for k, machine in enumerate(clients):
        unit, process, log = _start_vm(
            network,
            machine,
            root=tmp_path / f"c{k}",
            hostname=f"client-{k:02d}",
            role="worker",
            url=base,
        )
        assert unit == f"tributary-worker@{k}.service"
        workers.append((k, process, log))

    deadline = time.monotonic() + FEDERATION_DEADLINE_S
    for k, process, log in workers:
        try:
            code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            status = _curl(network, operator, f"{base}/status")
            pytest.fail(f"client {k} still running; /status {status}\n{_tail(log)}")
        assert code == 0, f"client {k} exited {code}:\n{_tail(log)}"
        assert f"client {k} finished: partition {k} " in log.read_text(), _tail(log)
    assert agg_process.poll() is None, _tail(agg_log)  # it keeps serving the final model

    status = _get_json(network, operator, f"{base}/status")
    assert (status["round"], status["phase"]) == (2, "finished")
    assert status["registered_clients"] == NUM_CLIENTS

    history = _get_json(network, operator, f"{base}/history")
    expected = sorted(str(k) for k in range(NUM_CLIENTS))
    assert [row["round"] for row in history] == [1, 2]
    assert all(row["participants"] == expected for row in history)
    assert all(row["num_examples"] == 4000 for row in history)  # mnist5k: 4000 train
    accuracy = [row["eval_accuracy"] for row in history]
    assert 0.2 < accuracy[0] < accuracy[1] <= 1.0  # above chance (0.1), and learning

    summary = _get_json(network, operator, f"{base}/model")
    assert (summary["round"], summary["model"]) == (2, "mlp")

    model_path = tmp_path / "model.msgpack"
    headers = _curl(
        network, operator, f"{base}/get_weights", "-f", "-D", "-", "-o", str(model_path)
    )
    payload = model_path.read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    assert digest == summary["sha256"]
    assert f'etag: "{digest[:32]}"' in headers.lower()
    message = decode_message(payload)
    assert message["round"] == 2
    assert sorted(message["weights"]) == sorted(summary["tensors"])
    not_modified = _curl(
        network,
        operator,
        f"{base}/get_weights",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        f'If-None-Match: "{digest[:32]}"',
    )
    assert not_modified == "304"

    metrics = _curl(network, operator, f"{base}/metrics", "-f")
    assert "tributary_round 2" in metrics.splitlines()
    assert "tributary_registered_clients 10" in metrics.splitlines()
