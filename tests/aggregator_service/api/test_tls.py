"""HTTPS with a real self-signed CA: workers that trust it get in, others fail clearly."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from aggregator_service.__main__ import main
from aggregator_service.api.app import create_app
from aggregator_service.settings import AggregatorSettings
from client_worker.errors import CertificateError
from client_worker.retry import Backoff
from client_worker.settings import WorkerSettings
from client_worker.transport import AggregatorClient
from tests.aggregator_service.helpers import experiment
from tests.aggregator_service.serving import serve, write_tokens

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

SERVER_EXTENSIONS = """\
subjectAltName = IP:127.0.0.1
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


@dataclass(frozen=True)
class Pki:
    """A test CA and a server certificate it signed for 127.0.0.1."""

    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Make the CA and the server certificate as docs/security.md describes."""
    work = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=Tributary test CA", cwd=work)  # fmt: skip
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=work)  # fmt: skip
    (work / "server.ext").write_text(SERVER_EXTENSIONS)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
             cwd=work)  # fmt: skip
    return Pki(ca=work / "ca.pem", cert=work / "server.pem", key=work / "server.key")


class _NoSleep:
    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def test_worker_with_the_ca_bundle_talks_https_with_its_token(pki: Pki, tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "tokens.txt", "a")
    settings = AggregatorSettings(
        state_dir=tmp_path / "state",
        tokens_file=tmp_path / "tokens.txt",
        ssl_certfile=pki.cert,
        ssl_keyfile=pki.key,
    )
    app = create_app(settings, experiment())
    with serve(app, certfile=settings.ssl_certfile, keyfile=settings.ssl_keyfile) as (url, _):
        assert url.startswith("https://")
        worker = WorkerSettings(server_url=url, client_id="a", ca_bundle=pki.ca)
        with AggregatorClient(
            url, client_id="a", token=tokens["a"], verify=worker.ssl_verify()
        ) as client:
            assert client.register(10)["registered"] is True
            reply = client.get_weights(min_round=0, wait=0)
        assert reply is not None
        assert reply.phase == "waiting"
        with pytest.raises(httpx.TransportError):  # no plain HTTP next to HTTPS
            httpx.get(url.replace("https://", "http://") + "/healthz", timeout=5)


def test_worker_without_the_ca_bundle_refuses_the_server_at_once(pki: Pki, tmp_path: Path) -> None:
    app = create_app(AggregatorSettings(state_dir=tmp_path / "state"), experiment())
    with serve(app, certfile=pki.cert, keyfile=pki.key) as (url, _):
        sleep = _NoSleep()
        with (
            AggregatorClient(url, client_id="a", sleep=sleep, backoff=Backoff()) as client,
            pytest.raises(CertificateError) as info,
        ):
            client.register(10)
    message = str(info.value)
    assert "cannot verify the TLS certificate" in message
    assert "self-signed" in message or "unable to get local issuer" in message
    assert "--ca-bundle" in message
    assert sleep.sleeps == []  # fatal: never retried


def test_another_ca_is_not_trusted_either(pki: Pki, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=Someone else", cwd=other)  # fmt: skip
    app = create_app(AggregatorSettings(state_dir=tmp_path / "state"), experiment())
    verify = WorkerSettings(ca_bundle=other / "ca.pem").ssl_verify()
    with (
        serve(app, certfile=pki.cert, keyfile=pki.key) as (url, _),
        AggregatorClient(url, client_id="a", verify=verify) as client,
        pytest.raises(CertificateError),
    ):
        client.register(10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def https_process(pki: Pki, tmp_path: Path) -> Iterator[str]:
    """`python -m aggregator_service` serving HTTPS; yield its URL."""
    port = _free_port()
    command = [sys.executable, "-m", "aggregator_service", "--port", str(port)]
    command += ["--state-dir", str(tmp_path / "state"), "--log-level", "warning"]
    command += ["--ssl-certfile", str(pki.cert), "--ssl-keyfile", str(pki.key)]
    log = (tmp_path / "aggregator.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "aggregator.log").read_text()
            assert time.monotonic() < deadline, "the aggregator did not start"
            try:
                httpx.get(f"{url}/healthz", verify=WorkerSettings(ca_bundle=pki.ca).ssl_verify())
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(15)
        log.close()


def test_the_command_line_serves_https(https_process: str, pki: Pki) -> None:
    verify = WorkerSettings(ca_bundle=pki.ca).ssl_verify()
    reply = httpx.get(f"{https_process}/healthz", verify=verify, timeout=10)
    assert reply.json() == {"status": "ok"}


def test_a_key_that_does_not_match_the_certificate_stops_the_start(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other_key = tmp_path / "other.key"
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-out", other_key, cwd=tmp_path)  # fmt: skip
    argv = ["--state-dir", str(tmp_path / "state"), "--ssl-certfile", str(pki.cert)]
    code = main([*argv, "--ssl-keyfile", str(other_key)])
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("tributary-aggregator: cannot use the TLS certificate")
    assert not (tmp_path / "state").exists()  # refused before the state dir was touched
    assert main([*argv]) == 2  # a certificate without its key
    assert "give both ssl_certfile and ssl_keyfile" in capsys.readouterr().err
