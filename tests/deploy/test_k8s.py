"""deploy/k8s: manifests against the Kubernetes JSON schemas, and their cross-references."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from aggregator_service.api.auth import parse_tokens, token_problem
from shared.config import load_config
from shared.errors import ConfigError
from tests.deploy.helpers import DEPLOY, K8S, load_yaml_documents, unknown_variables

COMPOSE = DEPLOY / "compose.yaml"
HEALTH_CHECK = ["tributary-healthcheck"]  # the image's HEALTHCHECK, as Compose runs it

# The oldest version the workers' manifests are meant for, and the newest with schemas.
KUBERNETES_VERSIONS = ["1.28.0", "1.37.0"]
# The shape of the tokens Secret, kept out of the kustomization (its header says why).
SECRET_FILE = K8S / "secret.yaml"


def _resources() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs.extend(load_yaml_documents(K8S / name))
    return docs


def _get(kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in _resources() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in _resources():
        if doc["kind"] in {"Deployment", "Job"}:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def _compose_service(name: str) -> dict[str, Any]:
    service = yaml.safe_load(COMPOSE.read_text())["services"][name]
    assert isinstance(service, dict)
    return service


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def _validate(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (it ships the schemas)"
    )
    kubernetes_validate.validate(doc, version, strict=True)


def _secret() -> dict[str, Any]:
    (doc,) = load_yaml_documents(SECRET_FILE)
    assert isinstance(doc, dict)
    return doc


def _secret_volume(pod: dict[str, Any], container: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Return (mount path, secret volume source) of the container's one secret mount."""
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = [m for m in container["volumeMounts"] if "secret" in volumes[m["name"]]]
    (mount,) = mounts
    assert mount["readOnly"] is True
    return mount["mountPath"], volumes[mount["name"]]["secret"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(version: str) -> None:
    """Each resource passes the strict schema of its kind (unknown fields are errors)."""
    for doc in [*_resources(), _secret()]:
        _validate(doc, version)


def test_schema_rejects_a_broken_deployment() -> None:
    """The validation is not vacuous: a misspelled field is an error."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    broken = copy.deepcopy(_get("Deployment", "tributary-aggregator"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    """No manifest of deploy/k8s is left out of kubectl apply -k, none is missing."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", SECRET_FILE.name}
    assert sorted(kustomization["resources"]) == sorted(on_disk)
    assert "secretGenerator" not in kustomization  # the Secret is made by hand, from files
    assert kustomization["namespace"] == _get("Namespace", "tributary")["metadata"]["name"]


def test_aggregator_is_one_recreated_pod_behind_its_service() -> None:
    """replicas 1, Recreate; the Service selects its pods and targets its named port."""
    deployment = _get("Deployment", "tributary-aggregator")
    service = _get("Service", "tributary-aggregator")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = spec["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in ports
    assert str(ports[service_port["targetPort"]]) == _env(container)["TRIBUTARY_AGG_PORT"]


def test_aggregator_probes_and_state_volume() -> None:
    """The image's health check as the three probes; the state dir is the PVC."""
    pod = _get("Deployment", "tributary-aggregator")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"] == {"command": HEALTH_CHECK}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    state = volumes[mounts[_env(container)["TRIBUTARY_AGG_STATE_DIR"]]]
    claim = state["persistentVolumeClaim"]["claimName"]
    assert _get("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_workers_are_the_ten_indexes_of_an_indexed_job() -> None:
    """An Indexed Job of 10 completions, all at once, = num_partitions; the completion index
    is the client id and the partition id; a failed worker restarts in place."""
    spec = _get("Job", "tributary-worker")["spec"]
    assert spec["completionMode"] == "Indexed"
    config = load_config(DEPLOY / "experiment.yaml")
    (container,) = spec["template"]["spec"]["containers"]
    env = _env(container)
    assert env["TRIBUTARY_ROLE"] == "worker"
    assert spec["completions"] == spec["parallelism"] == config.num_partitions
    assert int(env["TRIBUTARY_WORKER_NUM_PARTITIONS"]) == config.num_partitions
    annotation = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    index = {"fieldRef": {"fieldPath": annotation}}
    assert env["TRIBUTARY_WORKER_CLIENT_ID"] == env["TRIBUTARY_WORKER_PARTITION_ID"] == index
    assert spec["template"]["spec"]["restartPolicy"] == "OnFailure"  # exit 0 completes
    assert spec["maxFailedIndexes"] <= config.num_partitions - config.min_fit_clients
    assert container["livenessProbe"]["exec"] == {"command": HEALTH_CHECK}


def test_workers_reach_the_aggregator_service_over_https() -> None:
    """The workers' server URL is https, names the aggregator Service and its port, and
    they verify it with ca.pem of the Secret."""
    pod = _get("Job", "tributary-worker")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    service = _get("Service", "tributary-aggregator")
    (port,) = service["spec"]["ports"]
    url = f"https://{service['metadata']['name']}:{port['port']}"
    env = _env(container)
    assert env["TRIBUTARY_WORKER_SERVER_URL"] == url
    path, _ = _secret_volume(pod, container)
    assert env["TRIBUTARY_WORKER_CA_BUNDLE"] == f"{path}/ca.pem"


def test_same_image_environment_and_health_check_as_compose() -> None:
    """Each pod runs the compose file's image with its environment (names and values), but
    for what differs by platform: the aggregator's address and where a worker's CA, token
    and ids come from; the health check is the image's, as Compose runs it."""
    platform = {
        "TRIBUTARY_WORKER_SERVER_URL",  # the Service's name instead of the compose service's
        "TRIBUTARY_WORKER_CA_BUNDLE",  # a Secret volume instead of a Compose secret
        "TRIBUTARY_WORKER_TOKEN",  # Compose: the worker's own token from .env
        "TRIBUTARY_WORKER_TOKEN_FILE",  # Kubernetes: the tokens file of the Secret
        "TRIBUTARY_WORKER_CLIENT_ID",  # Compose: one service per client; here the index
        "TRIBUTARY_WORKER_PARTITION_ID",
        "TRIBUTARY_WORKER_CONFIG_PATH",  # the image's default, set again next to the ConfigMap
        "HOME",  # a writable home on a read-only root
    }
    aggregator = _compose_service("aggregator")
    assert aggregator["healthcheck"]["test"] == ["CMD", *HEALTH_CHECK]
    timeout_s = int(aggregator["healthcheck"]["timeout"].removesuffix("s"))
    for _, pod in _pod_specs():
        (container,) = pod["containers"]
        probes = [value for key, value in container.items() if key.endswith("Probe")]
        assert probes
        assert all(probe["timeoutSeconds"] == timeout_s for probe in probes)
    for kind, name, service in [
        ("Deployment", "tributary-aggregator", aggregator),
        ("Job", "tributary-worker", _compose_service("worker-3")),
    ]:
        (container,) = _get(kind, name)["spec"]["template"]["spec"]["containers"]
        assert container["image"] == service["image"]
        kube = {k: v for k, v in _env(container).items() if k not in platform}
        compose = {k: v for k, v in service["environment"].items() if k not in platform}
        assert kube == compose, name


def test_pods_mount_the_experiment_config_map_where_it_is_read() -> None:
    """Both pod templates mount the ConfigMap so its key lands at the configured path."""
    config_map = _get("ConfigMap", "tributary-experiment")
    for _, pod in _pod_specs():
        (container,) = pod["containers"]
        env = _env(container)
        config_path = env.get("TRIBUTARY_AGG_CONFIG") or env["TRIBUTARY_WORKER_CONFIG_PATH"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        (mount,) = [m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"])]
        assert mount["readOnly"] is True
        source = volumes[mount["name"]]["configMap"]["name"]
        assert source == config_map["metadata"]["name"]
        key = config_path.removeprefix(mount["mountPath"]).lstrip("/")
        assert key in config_map["data"]


def test_config_map_carries_the_shipped_experiment() -> None:
    """The ConfigMap's experiment equals deploy/experiment.yaml."""
    data = _get("ConfigMap", "tributary-experiment")["data"]["experiment.yaml"]
    shipped = (DEPLOY / "experiment.yaml").read_text()
    assert yaml.safe_load(data) == yaml.safe_load(shipped)


def test_pods_are_unprivileged_and_sized() -> None:
    """Non-root, no privilege escalation, read-only root, requests and limits set."""
    for name, pod in _pod_specs():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        (container,) = pod["containers"]
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["capabilities"] == {"drop": ["ALL"]}, name
        resources = container["resources"]
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}, name


def test_secret_shape_holds_placeholders_the_aggregator_refuses() -> None:
    """secret.yaml has the two keys, in the namespace, with values no aggregator accepts."""
    secret = _secret()
    assert secret["metadata"]["namespace"] == _get("Namespace", "tributary")["metadata"]["name"]
    data = secret["stringData"]
    assert set(data) == {"tokens.txt", "admin.token", "server.pem", "server.key", "ca.pem"}
    assert all("BEGIN" not in data[name] for name in ("server.pem", "server.key", "ca.pem"))
    with pytest.raises(ConfigError, match="too short"):
        parse_tokens(data["tokens.txt"], source="secret.yaml")
    assert token_problem(data["admin.token"].strip()) is not None


def test_aggregator_reads_the_tokens_secret_where_its_settings_look() -> None:
    """The Secret's keys, mounted read-only, are the aggregator's tokens, admin token,
    certificate and key files (not the CA, which only the workers need)."""
    pod = _get("Deployment", "tributary-aggregator")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    path, source = _secret_volume(pod, container)
    assert source["secretName"] == _secret()["metadata"]["name"]
    keys = {item["key"]: item["path"] for item in source["items"]}
    files = ("tokens.txt", "admin.token", "server.pem", "server.key")
    assert keys == {name: name for name in files}
    env = _env(container)
    assert env["TRIBUTARY_AGG_TOKENS_FILE"] == f"{path}/tokens.txt"
    assert env["TRIBUTARY_AGG_ADMIN_TOKEN_FILE"] == f"{path}/admin.token"
    assert env["TRIBUTARY_AGG_SSL_CERTFILE"] == f"{path}/server.pem"
    assert env["TRIBUTARY_AGG_SSL_KEYFILE"] == f"{path}/server.key"
    assert "TRIBUTARY_AGG_ADMIN_TOKEN" not in env
    assert float(env["TRIBUTARY_AGG_RECEIVE_RATE"]) < 2.0  # tighter than the default


def test_workers_read_their_line_of_the_tokens_file_but_not_the_admin_token() -> None:
    """Workers mount tokens.txt and ca.pem only; each takes the line of its own client id."""
    pod = _get("Job", "tributary-worker")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    path, source = _secret_volume(pod, container)
    assert source["secretName"] == _secret()["metadata"]["name"]
    assert source["items"] == [
        {"key": "tokens.txt", "path": "tokens.txt"},
        {"key": "ca.pem", "path": "ca.pem"},
    ]
    env = _env(container)
    assert env["TRIBUTARY_WORKER_TOKEN_FILE"] == f"{path}/tokens.txt"
    assert "TRIBUTARY_WORKER_TOKEN" not in env
    assert "admin.token" not in yaml.safe_dump(pod)
    assert "server.key" not in yaml.safe_dump(pod)


def test_environment_names_only_real_settings() -> None:
    """Every TRIBUTARY_* variable of the pod templates is read by something."""
    for name, pod in _pod_specs():
        (container,) = pod["containers"]
        assert unknown_variables(set(_env(container))) == [], name
