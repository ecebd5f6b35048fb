"""deploy/vm/tributary-secrets: tokens the aggregator accepts, TLS files that verify, user data."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import yaml

from aggregator_service.api.auth import Access, parse_tokens, token_problem
from client_worker.settings import WorkerSettings
from tests.deploy.helpers import VM, parse_env_file

SCRIPT = VM / "tributary-secrets"
CLOUD_INIT = VM / "cloud-init.yaml"


def _run(
    *args: str, stdin: str | None = None, path: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path if path is not None else os.environ["PATH"]}
    return subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(SCRIPT), *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _ok(*args: str, stdin: str | None = None) -> str:
    done = _run(*args, stdin=stdin)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def tokens_dir(tmp_path: Path) -> Path:
    """A directory with tokens for clients 0-9 and the admin token."""
    directory = tmp_path / "secrets"
    _ok("tokens", str(directory), "10")
    return directory


def _needs_openssl() -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")


def test_tokens_are_accepted_by_the_aggregator(tokens_dir: Path) -> None:
    """Ten distinct strong client tokens and a strong admin token of its own, all private."""
    tokens = parse_tokens((tokens_dir / "tokens.txt").read_text(), source="tokens.txt")
    assert sorted(tokens, key=int) == [str(k) for k in range(10)]
    admin = (tokens_dir / "admin.token").read_text().strip()
    assert token_problem(admin) is None
    assert len(set(tokens.values()) | {admin}) == 11
    assert Access(tokens, admin).num_clients == 10
    assert tokens_dir.stat().st_mode & 0o777 == 0o700
    for name in ("tokens.txt", "admin.token"):
        assert (tokens_dir / name).stat().st_mode & 0o777 == 0o600


def test_tokens_never_overwrite(tokens_dir: Path) -> None:
    """A second `tokens` into the same directory refuses and leaves the files as they were."""
    before = (tokens_dir / "tokens.txt").read_bytes()
    done = _run("tokens", str(tokens_dir), "3")
    assert done.returncode == 2
    assert "exists already" in done.stderr
    assert (tokens_dir / "tokens.txt").read_bytes() == before


@pytest.mark.parametrize("count", ["0", "ten", "-1"])
def test_tokens_needs_a_positive_count(tmp_path: Path, count: str) -> None:
    """N must be a positive number; nothing is written otherwise."""
    done = _run("tokens", str(tmp_path / "s"), count)
    assert done.returncode == 2
    assert not (tmp_path / "s/tokens.txt").exists()


def test_without_python_the_tokens_come_from_openssl(tmp_path: Path) -> None:
    """On a machine with openssl but no python3, the tokens are as good."""
    _needs_openssl()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mkdir", "mv", "openssl", "tr"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or tool)
    done = _run("tokens", str(tmp_path / "s"), "4", path=str(bin_dir))
    assert done.returncode == 0, done.stderr
    tokens = parse_tokens((tmp_path / "s/tokens.txt").read_text(), source="tokens.txt")
    assert len(tokens) == 4
    assert all(len(token) == 43 for token in tokens.values())  # 32 bytes in base64url
    assert token_problem((tmp_path / "s/admin.token").read_text().strip()) is None


def test_line_is_a_token_file_for_that_client(tokens_dir: Path, tmp_path: Path) -> None:
    """The printed line, as a worker's token file, gives that client's token and no other."""
    line = _ok("line", str(tokens_dir), "7")
    tokens = parse_tokens((tokens_dir / "tokens.txt").read_text(), source="tokens.txt")
    assert line == f"7: {tokens['7']}\n"
    token_file = tmp_path / "worker.token"
    token_file.write_text(line)
    assert WorkerSettings(client_id="7", token_file=token_file).resolved_token() == tokens["7"]
    missing = _run("line", str(tokens_dir), "12")
    assert missing.returncode == 2
    assert "has no token for client '12'" in missing.stderr


def test_add_admits_one_more_client(tokens_dir: Path) -> None:
    """`add` appends a token for a new id (ids may hold ':'); a known or bad id is refused."""
    _ok("add", str(tokens_dir), "site-b:3")
    tokens = parse_tokens((tokens_dir / "tokens.txt").read_text(), source="tokens.txt")
    assert len(tokens) == 11
    assert _ok("line", str(tokens_dir), "site-b:3") == f"site-b:3: {tokens['site-b:3']}\n"
    for client_id, message in [("site-b:3", "already"), ("-x", "not a client id")]:
        done = _run("add", str(tokens_dir), client_id)
        assert done.returncode == 2
        assert message in done.stderr


def test_env_names_each_clients_token(tokens_dir: Path, tmp_path: Path) -> None:
    """`env` prints TRIBUTARY_CLIENT_TOKEN_<id>=<token> for every client of tokens.txt."""
    env_file = tmp_path / ".env"
    env_file.write_text(_ok("env", str(tokens_dir)))
    tokens = parse_tokens((tokens_dir / "tokens.txt").read_text(), source="tokens.txt")
    assert parse_env_file(env_file) == {
        f"TRIBUTARY_CLIENT_TOKEN_{k}": token for k, token in tokens.items()
    }


def _verify(directory: Path, *check: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(directory / "ca.pem"), *check],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_tls_certificate_verifies_for_the_given_names_only(tmp_path: Path) -> None:
    """server.pem is signed by ca.pem for exactly the names given; the key is private."""
    _needs_openssl()
    directory = tmp_path / "s"
    _ok("tls", str(directory), "10.0.0.10", "aggregator")
    server = str(directory / "server.pem")
    assert _verify(directory, "-verify_ip", "10.0.0.10", server).returncode == 0
    assert _verify(directory, "-verify_hostname", "aggregator", server).returncode == 0
    assert _verify(directory, "-verify_ip", "10.0.0.11", server).returncode != 0
    assert _verify(directory, "-verify_hostname", "other", server).returncode != 0
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
        directory / "server.pem", directory / "server.key"
    )  # the pair the aggregator loads at start
    assert (directory / "server.key").stat().st_mode & 0o777 == 0o600
    assert (directory / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (directory / "ca.pem").stat().st_mode & 0o777 == 0o644


def test_tls_keeps_the_ca_when_renewing(tmp_path: Path) -> None:
    """With server.* moved away, a second run signs a new certificate with the same CA."""
    _needs_openssl()
    directory = tmp_path / "s"
    _ok("tls", str(directory), "IP:10.0.0.10")
    ca = (directory / "ca.pem").read_bytes()
    again = _run("tls", str(directory), "IP:10.0.0.10")
    assert again.returncode == 2  # never overwrites the certificate in place
    for name in ("server.pem", "server.key"):
        (directory / name).unlink()
    _ok("tls", str(directory), "IP:10.0.0.10")
    assert (directory / "ca.pem").read_bytes() == ca
    assert (
        _verify(directory, "-verify_ip", "10.0.0.10", str(directory / "server.pem")).returncode == 0
    )


def test_user_data_fills_one_clients_blocks(tokens_dir: Path, tmp_path: Path) -> None:
    """The client's id, token line and CA replace the placeholders; the rest is unchanged."""
    _needs_openssl()
    _ok("tls", str(tokens_dir), "IP:10.0.0.10")
    text = _ok("user-data", str(tokens_dir), "4", stdin=CLOUD_INIT.read_text())
    assert text.startswith("#cloud-config\n")
    filled = {entry["path"]: entry for entry in yaml.safe_load(text)["write_files"]}
    original = {
        entry["path"]: entry for entry in yaml.safe_load(CLOUD_INIT.read_text())["write_files"]
    }
    assert filled.keys() == original.keys()
    changed = {path for path in filled if filled[path] != original[path]}
    assert changed == {
        "/etc/tributary/role.env",
        "/etc/tributary/worker.token",
        "/etc/tributary/ca.pem",
    }
    role_env = tmp_path / "role.env"
    role_env.write_text(filled["/etc/tributary/role.env"]["content"])
    assert parse_env_file(role_env)["TRIBUTARY_CLIENT_ID"] == "4"
    token_file = tmp_path / "worker.token"
    token_file.write_text(filled["/etc/tributary/worker.token"]["content"])
    tokens = parse_tokens((tokens_dir / "tokens.txt").read_text(), source="tokens.txt")
    assert WorkerSettings(client_id="4", token_file=token_file).resolved_token() == tokens["4"]
    ca = tmp_path / "ca.pem"
    ca.write_text(filled["/etc/tributary/ca.pem"]["content"])
    assert ca.read_bytes() == (tokens_dir / "ca.pem").read_bytes()
    assert WorkerSettings(ca_bundle=ca).ssl_verify() is not True  # loads as a CA bundle


def test_user_data_of_another_file_is_refused(tokens_dir: Path) -> None:
    """Input without the placeholders is not filled in half: exit 2, nothing printed."""
    _needs_openssl()
    _ok("tls", str(tokens_dir), "IP:10.0.0.10")
    done = _run("user-data", str(tokens_dir), "4", stdin="#cloud-config\nruncmd: []\n")
    assert done.returncode == 2
    assert done.stdout == ""
    assert "CLIENT_TOKEN_LINE" in done.stderr


def test_usage_errors_exit_2() -> None:
    """Unknown commands and missing arguments print the usage and exit 2."""
    for args in [(), ("tokens",), ("frobnicate", "dir"), ("line", "dir")]:
        done = _run(*args)
        assert done.returncode == 2, args
        assert "usage: tributary-secrets" in done.stderr
