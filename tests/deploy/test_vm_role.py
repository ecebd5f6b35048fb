"""deploy/vm/install.sh and tributary-role, run for real against a temporary root."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.deploy.helpers import DEPLOY, VM, parse_env_file
from tests.deploy.vmroot import fake_systemctl, run_role

WANTS = "etc/systemd/system/multi-user.target.wants"
URL = "https://10.0.0.10:8000"


def _install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "SYSTEMCTL": str(fake_systemctl(root.parent))}
    env["SYSTEMCTL_LOG"] = str(root.parent / "install.log")
    return subprocess.run(
        ["bash", str(VM / "install.sh"), "--root", str(root), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A VM tree as install.sh lays it out."""
    tree = tmp_path / "root"
    done = _install(tree, "--skip-python")
    assert done.returncode == 0, done.stderr
    return tree


def _role(
    root: Path, role_env: str, *, hostname: str = "client-07", command: str = "apply"
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    (root / "etc/tributary/role.env").write_text(role_env)
    log = root.parent / "systemctl.log"
    log.unlink(missing_ok=True)
    done = run_role(
        root, command, hostname=hostname, systemctl=fake_systemctl(root.parent), log=log
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return done, calls


def _worker_env(client_id: str = "", url: str = URL) -> str:
    return (
        f"TRIBUTARY_ROLE=worker\nTRIBUTARY_AGGREGATOR_URL={url}\nTRIBUTARY_CLIENT_ID={client_id}\n"
    )


def _link(root: Path, unit: str) -> None:
    wants = root / WANTS
    wants.mkdir(parents=True, exist_ok=True)
    (wants / unit).symlink_to(f"/etc/systemd/system/{unit}")


def test_install_lays_out_units_config_and_role_command(root: Path, tmp_path: Path) -> None:
    """install.sh puts every file where the units expect it, env files private."""
    for unit in (
        "tributary-aggregator.service",
        "tributary-worker@.service",
        "tributary-role.service",
    ):
        assert (root / "etc/systemd/system" / unit).read_text() == (VM / unit).read_text()
    assert os.access(root / "usr/local/sbin/tributary-role", os.X_OK)
    assert os.access(root / "usr/local/sbin/tributary-secrets", os.X_OK)
    assert not (root / "etc/tributary/tokens.txt").exists()  # secrets come from the operator
    assert (root / "etc/tributary/worker.env").stat().st_mode & 0o777 == 0o600
    assert (root / "etc/tributary/aggregator.env").stat().st_mode & 0o777 == 0o600
    assert (root / "etc/tributary/experiment.yaml").read_text() == (
        DEPLOY / "experiment.yaml"
    ).read_text()
    assert (
        tmp_path / "install.log"
    ).read_text() == f"--root={root} enable tributary-role.service\n"


def test_install_again_keeps_the_operators_edits(root: Path) -> None:
    """A second install (an upgrade) replaces the units but not /etc/tributary."""
    edited = root / "etc/tributary/experiment.yaml"
    edited.write_text("num_rounds: 3\n")
    done = _install(root, "--skip-python")
    assert done.returncode == 0, done.stderr
    assert edited.read_text() == "num_rounds: 3\n"


def test_install_under_a_root_refuses_to_build_a_venv(tmp_path: Path) -> None:
    """A venv only works where it was made, so --root needs --skip-python."""
    done = _install(tmp_path / "root")
    assert done.returncode == 2
    assert "--skip-python" in done.stderr


@pytest.mark.parametrize(
    ("hostname", "client_id", "expected"),
    [
        ("client-07", "", "7"),  # cloned VMs: the number that ends the hostname
        ("client-00", "", "0"),
        ("node12", "", "12"),
        ("client-07", "3", "3"),  # an explicit id wins over the hostname
        ("anything", "09", "9"),
    ],
)
def test_worker_role_enables_the_instance_of_its_client_id(
    root: Path, hostname: str, client_id: str, expected: str
) -> None:
    """A worker enables tributary-worker@<id> and writes the aggregator URL into worker.env."""
    done, calls = _role(root, _worker_env(client_id), hostname=hostname)
    assert done.returncode == 0, done.stderr
    assert calls == [f"--root={root} enable tributary-worker@{expected}.service"]
    env = parse_env_file(root / "etc/tributary/worker.env")
    assert env["TRIBUTARY_WORKER_SERVER_URL"] == URL
    assert env["TRIBUTARY_WORKER_CONFIG_PATH"] == "/etc/tributary/experiment.yaml"


def test_ten_clones_become_ten_distinct_clients(tmp_path: Path) -> None:
    """The same tree and role.env on client-00 ... client-09 give ten different units."""
    units = set()
    for k in range(10):
        tree = tmp_path / f"clone{k}"
        assert _install(tree, "--skip-python").returncode == 0
        done, calls = _role(tree, _worker_env(), hostname=f"client-{k:02d}")
        assert done.returncode == 0, done.stderr
        units.add(calls[-1].split()[-1])
    assert units == {f"tributary-worker@{k}.service" for k in range(10)}


def test_aggregator_role_disables_the_worker_of_the_image(root: Path) -> None:
    """An image built as client 0 and turned into the aggregator drops that worker."""
    _link(root, "tributary-worker@0.service")
    done, calls = _role(root, "TRIBUTARY_ROLE=aggregator\n")
    assert done.returncode == 0, done.stderr
    assert calls == [
        f"--root={root} disable tributary-worker@0.service",
        f"--root={root} enable tributary-aggregator.service",
    ]


def test_worker_role_disables_the_other_roles_units(root: Path) -> None:
    """A clone of client 0 that is client 5 now disables @0 and the aggregator, keeps @5."""
    for unit in (
        "tributary-aggregator.service",
        "tributary-worker@0.service",
        "tributary-worker@5.service",
    ):
        _link(root, unit)
    done, calls = _role(root, _worker_env(), hostname="client-05")
    assert done.returncode == 0, done.stderr
    assert calls == [
        f"--root={root} disable tributary-aggregator.service",
        f"--root={root} disable tributary-worker@0.service",
        f"--root={root} enable tributary-worker@5.service",
    ]


def test_apply_twice_changes_worker_env_once(root: Path) -> None:
    """Re-applying (every boot) leaves worker.env as it is, with one URL line, mode kept."""
    _role(root, _worker_env())
    worker_env = root / "etc/tributary/worker.env"
    first = worker_env.read_text()
    _role(root, _worker_env())
    assert worker_env.read_text() == first
    assert first.count("TRIBUTARY_WORKER_SERVER_URL=") == 1
    assert worker_env.stat().st_mode & 0o777 == 0o600


def test_show_prints_the_role_and_changes_nothing(root: Path) -> None:
    """`show` reports the decision and calls no systemctl."""
    before = (root / "etc/tributary/worker.env").read_text()
    done, calls = _role(root, _worker_env(), hostname="client-04", command="show")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "role=worker",
        "client_id=4",
        "unit=tributary-worker@4.service",
        f"server={URL}",
    ]
    assert calls == []
    assert (root / "etc/tributary/worker.env").read_text() == before


@pytest.mark.parametrize(
    ("role_env", "hostname", "message"),
    [
        ("TRIBUTARY_ROLE=server\n", "client-01", "set it to aggregator or worker"),
        (_worker_env(), "aggregator", "does not end in a number"),
        (_worker_env("seven"), "client-01", "not a non-negative integer"),
        (_worker_env(url="10.0.0.10:8000"), "client-01", "not an http(s) URL"),
        (_worker_env(url="http://10.0.0.10:8000"), "client-01", "sets TRIBUTARY_WORKER_CA_BUNDLE"),
        ("TRIBUTARY_ROLE=worker\nTRIBUTARY_CLIENTID=3\n", "client-01", "unknown key"),
    ],
)
def test_bad_role_env_is_refused_with_a_reason(
    root: Path, role_env: str, hostname: str, message: str
) -> None:
    """A wrong role.env exits 2, says what is wrong and enables nothing."""
    done, calls = _role(root, role_env, hostname=hostname)
    assert done.returncode == 2
    assert message in done.stderr
    assert calls == []


def test_missing_role_env_is_refused(root: Path) -> None:
    """Without role.env there is nothing to decide: exit 2 naming the file."""
    (root / "etc/tributary/role.env").unlink()
    log = root.parent / "systemctl.log"
    done = run_role(root, "apply", hostname="c-1", systemctl=fake_systemctl(root.parent), log=log)
    assert done.returncode == 2
    assert "role.env" in done.stderr


def test_http_url_is_accepted_once_tls_is_commented_out(root: Path) -> None:
    """Without a CA bundle in worker.env (an aggregator without TLS), http:// is fine."""
    worker_env = root / "etc/tributary/worker.env"
    worker_env.write_text(
        worker_env.read_text().replace(
            "TRIBUTARY_WORKER_CA_BUNDLE=", "#TRIBUTARY_WORKER_CA_BUNDLE="
        )
    )
    done, calls = _role(root, _worker_env(url="http://10.0.0.10:8000"))
    assert done.returncode == 0, done.stderr
    assert calls == [f"--root={root} enable tributary-worker@7.service"]
    env = parse_env_file(worker_env)
    assert env["TRIBUTARY_WORKER_SERVER_URL"] == "http://10.0.0.10:8000"
    assert "TRIBUTARY_WORKER_CA_BUNDLE" not in env


def _write(path: Path, text: str, mode: int) -> None:
    path.write_text(text)
    path.chmod(mode)


def test_worker_secrets_are_made_private_and_missing_ones_reported(root: Path) -> None:
    """worker.token becomes mode 600; a missing CA is named; the unit is enabled anyway."""
    token = root / "etc/tributary/worker.token"
    _write(token, "7: abc\n", 0o644)
    done, calls = _role(root, _worker_env())
    assert done.returncode == 0, done.stderr
    assert calls == [f"--root={root} enable tributary-worker@7.service"]
    assert token.stat().st_mode & 0o777 == 0o600
    assert token.read_text() == "7: abc\n"
    (warning,) = done.stderr.splitlines()
    assert "/etc/tributary/ca.pem (TRIBUTARY_WORKER_CA_BUNDLE) is missing" in warning
    assert "tributary-worker@7.service exits 2 without it" in warning


def test_cloud_init_placeholders_are_reported(root: Path) -> None:
    """A token file still holding cloud-init.yaml's placeholder gets a warning naming it."""
    _write(root / "etc/tributary/worker.token", "CLIENT_TOKEN_LINE\n", 0o600)
    _write(root / "etc/tributary/ca.pem", "CA_CERTIFICATE\n", 0o644)
    done, _ = _role(root, _worker_env())
    assert done.returncode == 0, done.stderr
    warnings = done.stderr.splitlines()
    assert len(warnings) == 2
    assert all("still holds the placeholder of cloud-init.yaml" in line for line in warnings)


def test_aggregator_secrets_are_made_private_and_missing_ones_reported(root: Path) -> None:
    """The aggregator's four files named in aggregator.env: present ones 600, missing named."""
    etc = root / "etc/tributary"
    _write(etc / "tokens.txt", "0: x\n", 0o644)
    _write(etc / "server.pem", "pem\n", 0o644)
    done, calls = _role(root, "TRIBUTARY_ROLE=aggregator\n")
    assert done.returncode == 0, done.stderr
    assert calls == [f"--root={root} enable tributary-aggregator.service"]
    assert (etc / "tokens.txt").stat().st_mode & 0o777 == 0o600
    assert (etc / "server.pem").stat().st_mode & 0o777 == 0o600
    missing = [line.split()[2] for line in done.stderr.splitlines()]
    assert missing == ["/etc/tributary/admin.token", "/etc/tributary/server.key"]
