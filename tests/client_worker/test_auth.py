"""The worker's token and CA bundle: where they come from, how they are sent, what 401 does."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from client_worker import __main__ as cli
from client_worker.errors import FatalServerError
from client_worker.settings import WorkerSettings
from client_worker.transport import AggregatorClient
from shared.errors import ConfigError
from shared.wire import encode_message

TOKEN = "k2Jd8fQz0P-vX4nW7rT_yU1sA9bC3eG5hL6mN8o"
OTHER = "Zq9Wx8Ec7Rv6Tb5Yn4Um3Ik2Ol1Pa0Sd-Fg_Hj"


def _recording() -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    weights = encode_message({"protocol": 1, "round": 1, "phase": "waiting", "weights": {}})

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/get_weights":
            return httpx.Response(200, content=weights)
        if request.url.path == "/receive":
            return httpx.Response(200, json={"accepted": True, "duplicate": False})
        return httpx.Response(200, json={"registered": True})

    return httpx.MockTransport(handler), seen


def test_the_token_goes_as_a_bearer_header_on_every_request() -> None:
    transport, seen = _recording()
    with AggregatorClient("http://agg", client_id="3", transport=transport, token=TOKEN) as client:
        client.register(10)
        client.get_weights(min_round=1, wait=0)
        client.post_update(1, 10, {"w": np.zeros(2, np.float32)}, {})
    assert [r.url.path for r in seen] == ["/register", "/get_weights", "/receive"]
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in seen)


def test_without_a_token_no_authorization_header_is_sent() -> None:
    transport, seen = _recording()
    with AggregatorClient("http://agg", client_id="3", transport=transport) as client:
        client.register(10)
    assert "Authorization" not in seen[0].headers


@pytest.mark.parametrize(
    ("status", "code", "hint"),
    [(401, "unauthorized", "check this worker's token"), (403, "wrong_client", "its own token")],
)
def test_401_and_403_are_fatal_at_once_with_a_hint(status: int, code: str, hint: str) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, json={"error": code, "detail": "refused"})

    client = AggregatorClient(
        "http://agg", client_id="3", transport=httpx.MockTransport(handler), token=TOKEN
    )
    with client, pytest.raises(FatalServerError) as info:
        client.register(10)
    assert (info.value.status, info.value.code, info.value.detail) == (status, code, "refused")
    assert hint in str(info.value)
    assert TOKEN not in str(info.value)
    assert len(calls) == 1


def test_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIBUTARY_WORKER_TOKEN", f" {TOKEN}\n")
    settings = WorkerSettings()
    assert settings.resolved_token() == TOKEN
    assert TOKEN not in repr(settings)  # a secret: never in logs of the settings


def test_token_file_with_one_token_or_one_line_per_client(tmp_path: Path) -> None:
    single = tmp_path / "token"
    single.write_text(f"{TOKEN}\n")
    assert WorkerSettings(token_file=single).resolved_token() == TOKEN
    lines = tmp_path / "tokens.txt"
    lines.write_text(f"# clients of this host\n3: {TOKEN}\nhost:4: {OTHER}\n")
    assert WorkerSettings(client_id="3", token_file=lines).resolved_token() == TOKEN
    assert WorkerSettings(client_id="host:4", token_file=lines).resolved_token() == OTHER
    with pytest.raises(ConfigError, match="has no token for client '5'"):
        WorkerSettings(client_id="5", token_file=lines).resolved_token()


def test_unusable_token_settings_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="has no token"):
        WorkerSettings(token_file=empty).resolved_token()
    with pytest.raises(ConfigError, match="cannot read the token file"):
        WorkerSettings(token_file=tmp_path / "missing").resolved_token()
    with pytest.raises(ValidationError, match="the token is given twice"):
        WorkerSettings(token=TOKEN, token_file=empty)
    assert WorkerSettings().resolved_token() is None


def test_ca_bundle_must_be_a_readable_pem(tmp_path: Path) -> None:
    assert WorkerSettings().ssl_verify() is True
    with pytest.raises(ConfigError, match="cannot load the CA bundle"):
        WorkerSettings(ca_bundle=tmp_path / "missing.pem").ssl_verify()
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load the CA bundle"):
        WorkerSettings(ca_bundle=junk).ssl_verify()


def test_the_command_line_takes_the_token_only_from_a_file_or_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = cli.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--token", TOKEN])  # no such flag, and no abbreviation of one
    assert "unrecognized arguments: --token" in capsys.readouterr().err
    assert TOKEN not in json.dumps(vars(parser.parse_args(["--token-file", "t"])))
    lines = tmp_path / "tokens.txt"
    lines.write_text(f"0: {TOKEN}\n")
    code = cli.main(["--client-ids", "0-1", "--token-file", str(lines)])  # no token for 1
    assert code == 2
    err = capsys.readouterr().err
    assert "has no token for client '1'" in err
    assert TOKEN not in err
