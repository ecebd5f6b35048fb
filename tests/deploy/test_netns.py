"""Real multi-host runs with authentication and TLS on, as the VM templates configure them.

The operator's secrets come from deploy/vm/tributary-secrets: tokens for ten clients, the
admin token, a CA and the aggregator's certificate for its address. Each simulated VM gets
its own file tree from deploy/vm/install.sh. The aggregator receives the tokens file, the
admin token, the certificate and the key, copied where aggregator.env names them (as the
runbook copies them over SSH); each client receives what cloud-init's write_files would
write from the user data of `tributary-secrets user-data` (role.env, its token line, the
CA). deploy/vm/tributary-role enables each VM's unit, and its process starts with the
unit's ExecStart, EnvironmentFile and Environment lines inside the VM's network namespace.
A separate namespace plays the operator and inspects the aggregator with curl.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.wire import decode_message
from tests.deploy.helpers import DEPLOY, VM, parse_env_file
from tests.deploy.netns import TEST_SUBNET, Machine, TestNetwork, netns_unavailable_reason
from tests.deploy.vmroot import install_machine, service_command

pytestmark = pytest.mark.slow

NUM_CLIENTS = 10
AGGREGATOR_HOST = 10  # 10.213.0.10
AGGREGATOR_ADDRESS = f"{TEST_SUBNET}.{AGGREGATOR_HOST}"
OPERATOR_HOST = 200
PROCESS_LIFETIME_S = 240  # hard bound on every process, even if this test is killed
FEDERATION_DEADLINE_S = 200
SECRETS = VM / "tributary-secrets"
# Where the aggregator's env file expects each file that tributary-secrets makes.
AGGREGATOR_SECRETS = {
    "TRIBUTARY_AGG_TOKENS_FILE": "tokens.txt",
    "TRIBUTARY_AGG_ADMIN_TOKEN_FILE": "admin.token",
    "TRIBUTARY_AGG_SSL_CERTFILE": "server.pem",
    "TRIBUTARY_AGG_SSL_KEYFILE": "server.key",
}


def _skip_reason() -> str | None:
    for tool in ("timeout", "curl", "bash", "openssl"):
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


def _run_secrets(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["bash", str(SECRETS), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    """The operator's directory: tokens for ten clients, admin token, CA, server certificate."""
    directory = tmp_path / "operator-secrets"
    _run_secrets("tokens", str(directory), str(NUM_CLIENTS))
    _run_secrets("tls", str(directory), f"IP:{AGGREGATOR_ADDRESS}")
    return directory


@dataclass(frozen=True)
class Operator:
    """curl from the operator's namespace, trusting the federation's CA."""

    net: TestNetwork
    machine: Machine
    base: str
    ca: Path
    admin_token: str

    def curl(self, path: str, *extra: str, token: str | None = None, ca: bool = True) -> str:
        """Run curl on base + path (adding the CA and a bearer token) and return its stdout."""
        argv = ["curl", "-sS", "--max-time", "5", *extra]
        if ca:
            argv += ["--cacert", str(self.ca)]
        if token is not None:
            argv += ["-H", f"Authorization: Bearer {token}"]
        return self.net.run(self.machine, [*argv, f"{self.base}{path}"], timeout_s=10)

    def status_code(self, path: str, *, token: str | None = None) -> int:
        """Return the HTTP status of GET base + path."""
        return int(self.curl(path, "-o", "/dev/null", "-w", "%{http_code}", token=token))

    def admin_json(self, path: str) -> Any:
        """GET base + path with the admin token; fail on an error status."""
        return json.loads(self.curl(path, "-f", token=self.admin_token))


def _aggregator_url() -> str:
    """Return the URL the clients use: https, the VM's address, the port of aggregator.env."""
    port = parse_env_file(VM / "aggregator.env")["TRIBUTARY_AGG_PORT"]
    return f"https://{AGGREGATOR_ADDRESS}:{port}"


def _fast_experiment() -> str:
    """deploy/experiment.yaml made quick: 2 rounds, 1 epoch, 7 batches per client."""
    config = yaml.safe_load((DEPLOY / "experiment.yaml").read_text())
    config |= {"num_rounds": 2, "local_epochs": 1, "batch_size": 64, "round_timeout_s": 120}
    config |= {"min_available_clients": NUM_CLIENTS, "min_fit_clients": NUM_CLIENTS}
    assert config["dataset"] == "mnist5k"
    assert config["model"] == "mlp"
    return yaml.safe_dump(config)


def _aggregator_files(secrets: Path) -> dict[str, bytes]:
    """The operator's files, at the paths that aggregator.env gives them."""
    env = parse_env_file(VM / "aggregator.env")
    return {env[key]: (secrets / name).read_bytes() for key, name in AGGREGATOR_SECRETS.items()}


def _client_user_data(secrets: Path, client_id: int, url: str) -> tuple[str, dict[str, bytes]]:
    """Return role.env and the other /etc/tributary files of a client's filled user data."""
    template, count = re.subn(
        r"(?m)^(\s*TRIBUTARY_AGGREGATOR_URL=).*$",
        rf"\g<1>{url}",
        (VM / "cloud-init.yaml").read_text(),
    )
    assert count == 1
    user_data = yaml.safe_load(
        _run_secrets("user-data", str(secrets), str(client_id), stdin=template)
    )
    files = {
        entry["path"]: entry["content"].encode()
        for entry in user_data["write_files"]
        if entry["path"].startswith("/etc/tributary/")
        and entry["path"] != "/etc/tributary/install.env"
    }
    role_env = files.pop("/etc/tributary/role.env").decode()
    return role_env, files


def _start_vm(
    net: TestNetwork,
    machine: Machine,
    *,
    root: Path,
    hostname: str,
    role_env: str,
    files: Mapping[str, bytes],
) -> tuple[str, subprocess.Popen[bytes], Path]:
    """Install a VM tree with its files, enable its role's unit and start that unit's command."""
    unit = install_machine(
        root, role_env=role_env, hostname=hostname, experiment=_fast_experiment(), files=files
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


def _start_aggregator(
    net: TestNetwork, secrets: Path, root: Path
) -> tuple[Operator, subprocess.Popen[bytes], Path]:
    """Start the aggregator VM with the operator's secrets; wait until /healthz answers."""
    aggregator = net.add_machine("agg", AGGREGATOR_HOST)
    base = _aggregator_url()
    operator = Operator(
        net=net,
        machine=net.add_machine("ops", OPERATOR_HOST),
        base=base,
        ca=secrets / "ca.pem",
        admin_token=(secrets / "admin.token").read_text().strip(),
    )
    unit, process, log = _start_vm(
        net,
        aggregator,
        root=root,
        hostname="aggregator",
        role_env=f"TRIBUTARY_ROLE=aggregator\nTRIBUTARY_AGGREGATOR_URL={base}\n",
        files=_aggregator_files(secrets),
    )
    assert unit == "tributary-aggregator.service"
    _wait_healthy(operator, process, log)
    return operator, process, log


def _wait_healthy(operator: Operator, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll /healthz (no token) over HTTPS until it answers ok."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads(operator.curl("/healthz", "-f")) == {"status": "ok"}:
                return
        except (subprocess.CalledProcessError, json.JSONDecodeError):
            time.sleep(0.5)
    pytest.fail(f"aggregator not healthy (exit {process.poll()}); log:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _token_of(secrets: Path, client_id: int) -> str:
    return _run_secrets("line", str(secrets), str(client_id)).rpartition(":")[2].strip()


def test_aggregator_serves_https_and_checks_tokens(
    network: TestNetwork, secrets_dir: Path, tmp_path: Path
) -> None:
    """The aggregator VM answers another machine over verified HTTPS, readers need a token."""
    operator, process, log = _start_aggregator(network, secrets_dir, tmp_path / "agg")

    assert operator.status_code("/status") == 401
    assert operator.status_code("/status", token="x" * 43) == 401
    status = operator.admin_json("/status")
    assert (status["round"], status["phase"]) == (1, "waiting")
    assert status["registered_clients"] == 0
    assert operator.status_code("/status", token=_token_of(secrets_dir, 3)) == 200
    # The certificate verifies only with the federation's CA; nothing answers in clear text.
    with pytest.raises(subprocess.CalledProcessError) as unverified:
        operator.curl("/healthz", ca=False)
    assert unverified.value.returncode == 60  # curl: peer certificate cannot be authenticated
    plain = operator.base.replace("https://", "http://")
    with pytest.raises(subprocess.CalledProcessError):
        network.run(operator.machine, ["curl", "-sSf", "--max-time", "5", plain], timeout_s=10)

    text = log.read_text()
    assert f"client authentication on: {NUM_CLIENTS} client tokens" in text
    assert "plain HTTP" not in text
    state_dir = tmp_path / "agg/var/lib/tributary"  # the unit's StateDirectory
    assert (state_dir / "checkpoints/round-000000.safetensors").is_file()
    for name in AGGREGATOR_SECRETS.values():
        assert (tmp_path / "agg/etc/tributary" / name).stat().st_mode & 0o777 == 0o600
    assert process.poll() is None


def test_ten_client_vms_run_two_rounds(
    network: TestNetwork, secrets_dir: Path, tmp_path: Path
) -> None:
    """One aggregator VM and ten client VMs with their own tokens finish two rounds."""
    clients = [network.add_machine(f"c{k}", 100 + k) for k in range(NUM_CLIENTS)]
    operator, agg_process, agg_log = _start_aggregator(network, secrets_dir, tmp_path / "agg")

    workers = []
    for k, machine in enumerate(clients):
        role_env, files = _client_user_data(secrets_dir, k, operator.base)
        assert files["/etc/tributary/worker.token"].decode().startswith(f"{k}: ")
        unit, process, log = _start_vm(
            network,
            machine,
            root=tmp_path / f"c{k}",
            hostname=f"client-{k:02d}",
            role_env=role_env,
            files=files,
        )
        assert unit == f"tributary-worker@{k}.service"
        workers.append((k, process, log))

    deadline = time.monotonic() + FEDERATION_DEADLINE_S
    for k, process, log in workers:
        try:
            code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            status = operator.curl("/status", token=operator.admin_token)
            pytest.fail(f"client {k} still running; /status {status}\n{_tail(log)}")
        assert code == 0, f"client {k} exited {code}:\n{_tail(log)}"
        assert f"client {k} finished: partition {k} " in log.read_text(), _tail(log)
    assert agg_process.poll() is None, _tail(agg_log)  # it keeps serving the final model

    assert operator.status_code("/status") == 401
    assert operator.status_code("/history") == 401
    status = operator.admin_json("/status")
    assert (status["round"], status["phase"]) == (2, "finished")
    assert status["registered_clients"] == NUM_CLIENTS

    history = operator.admin_json("/history")
    expected = sorted(str(k) for k in range(NUM_CLIENTS))
    assert [row["round"] for row in history] == [1, 2]
    assert all(row["participants"] == expected for row in history)
    assert all(row["num_examples"] == 4000 for row in history)  # mnist5k: 4000 train
    accuracy = [row["eval_accuracy"] for row in history]
    assert 0.2 < accuracy[0] < accuracy[1] <= 1.0  # above chance (0.1), and learning

    summary = operator.admin_json("/model")
    assert (summary["round"], summary["model"]) == (2, "mlp")

    model_path = tmp_path / "model.msgpack"
    token = operator.admin_token
    headers = operator.curl("/get_weights", "-f", "-D", "-", "-o", str(model_path), token=token)
    payload = model_path.read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    assert digest == summary["sha256"]
    etag = next(
        line.split(":", 1)[1].strip()
        for line in headers.splitlines()
        if line.lower().startswith("etag:")
    )
    assert len(etag) > 2
    assert etag[0] == etag[-1] == '"'
    message = decode_message(payload)
    assert message["round"] == 2
    assert sorted(message["weights"]) == sorted(summary["tensors"])
    not_modified = operator.curl(
        "/get_weights",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        f"If-None-Match: {etag}",
        token=token,
    )
    assert not_modified == "304"

    metrics = operator.curl("/metrics", "-f", token=token).splitlines()
    assert "tributary_round 2" in metrics
    assert "tributary_registered_clients 10" in metrics
    assert 'tributary_rejected_total{reason="unauthorized"} 2' in metrics  # the two 401s above
