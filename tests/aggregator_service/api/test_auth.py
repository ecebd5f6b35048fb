"""Bearer tokens and the admin endpoints, through the real app (lifespan included)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from aggregator_service.api.app import create_app
from aggregator_service.api.auth import Access, Caller, parse_tokens
from aggregator_service.settings import AggregatorSettings
from client_worker.errors import FatalServerError
from client_worker.settings import WorkerSettings
from client_worker.worker import run_worker
from shared.config import ExperimentConfig
from shared.errors import ConfigError
from shared.wire import decode_message, decode_weights
from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    experiment,
    shifted,
    update_body,
    wait_for,
)
from tests.aggregator_service.serving import bearer, serve, write_tokens

ADMIN = "admin-" + "0123456789abcdefghijklmnopqrstuvwxyz"


class Secured:
    """An aggregator with tokens for clients a, b, c and an admin token."""

    def __init__(self, client: TestClient, tokens: dict[str, str]) -> None:
        self.client = client
        self.tokens = tokens
        client.headers["Authorization"] = f"Bearer {ADMIN}"  # default: inspect as the admin

    def register(self, *client_ids: str) -> None:
        for cid in client_ids:
            reply = self.client.post(
                "/register", json={"client_id": cid}, headers=bearer(self.tokens[cid])
            )
            assert reply.status_code == 200, reply.text

    def weights(self) -> dict[str, np.ndarray]:
        reply = self.client.get("/get_weights")
        assert reply.status_code == 200, reply.text
        return decode_weights(decode_message(reply.content)["weights"])

    def post(self, token_of: str, body: bytes) -> int:
        headers = {**MSGPACK, **bearer(self.tokens[token_of])}
        reply: httpx.Response = self.client.post("/receive", content=body, headers=headers)
        return reply.status_code


@pytest.fixture
def secured(start_app: AppFactory, tmp_path: Path) -> Secured:
    tokens = write_tokens(tmp_path / "tokens.txt", "a", "b", "c")
    client = start_app(
        experiment(min_fit_clients=2, min_available_clients=2),
        tokens_file=tmp_path / "tokens.txt",
        admin_token=ADMIN,
        max_body_bytes=1 << 20,
    )
    return Secured(client, tokens)


def _training(secured: Secured) -> dict[str, np.ndarray]:
    secured.register("a", "b")
    wait_for(secured.client, lambda s: s["phase"] == "training")
    return secured.weights()


GUARDED = [
    ("POST", "/register"),
    ("POST", "/receive"),
    ("GET", "/get_weights"),
    ("GET", "/status"),
    ("GET", "/history"),
    ("GET", "/model"),
    ("GET", "/metrics"),
    ("GET", "/clients"),
    ("GET", "/events"),
    ("POST", "/admin/stop"),
    ("POST", "/admin/skip_round"),
]


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_missing_or_unknown_token_gets_401_with_a_bearer_challenge(
    secured: Secured, method: str, path: str
) -> None:
    client = secured.client
    missing = client.request(method, path, headers={"Authorization": ""})
    unknown = client.request(method, path, headers=bearer("x" * 20 + "0123456789abcdef"))
    for reply in (missing, unknown):
        assert reply.status_code == 401
        assert reply.json()["error"] == "unauthorized"
        assert reply.headers["www-authenticate"].startswith('Bearer realm="tributary"')
    assert 'error="invalid_token"' in unknown.headers["www-authenticate"]
    # the same answer whatever the token: nothing tells which client ids exist
    assert missing.json() == unknown.json()


def test_healthz_and_docs_stay_open(secured: Secured) -> None:
    client = secured.client
    client.headers.pop("Authorization")
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert spec["paths"]["/admin/stop"]["post"]["tags"] == ["admin"]
    assert spec["paths"]["/admin/skip_round"]["post"]["tags"] == ["admin"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_inspection_accepts_the_admin_token_or_any_client_token(secured: Secured) -> None:
    client = secured.client
    for token in (ADMIN, secured.tokens["a"], secured.tokens["c"]):
        for path in ("/status", "/history", "/model", "/metrics", "/get_weights"):
            assert client.get(path, headers=bearer(token)).status_code == 200, (path, token)


def test_a_client_cannot_register_or_poll_as_another(secured: Secured) -> None:
    client = secured.client
    as_b = client.post("/register", json={"client_id": "b"}, headers=bearer(secured.tokens["a"]))
    assert as_b.status_code == 403
    assert as_b.json()["error"] == "wrong_client"
    poll = client.get(
        "/get_weights", params={"client_id": "b"}, headers=bearer(secured.tokens["a"])
    )
    assert poll.status_code == 403
    assert poll.json()["error"] == "wrong_client"
    admin_as_client = client.post("/register", json={"client_id": "a"})  # the admin token
    assert admin_as_client.status_code == 403
    assert client.get("/status").json()["registered_clients"] == 0
    secured.register("a")
    own = client.get("/get_weights", params={"client_id": "a"}, headers=bearer(secured.tokens["a"]))
    assert own.status_code == 200


def test_a_client_cannot_post_an_update_as_another(secured: Secured) -> None:
    weights = _training(secured)
    client = secured.client
    forged = client.post(
        "/receive",
        content=update_body("b", 1, shifted(weights, 9.0)),
        headers={**MSGPACK, **bearer(secured.tokens["a"])},
    )
    assert forged.status_code == 403
    assert forged.json()["error"] == "wrong_client"
    status = client.get("/status").json()
    assert status["received"] == 0
    assert status["in_progress"] == []
    assert secured.post("a", update_body("a", 1, weights)) == 200
    assert secured.post("b", update_body("b", 1, weights)) == 200
    wait_for(client, lambda s: s["round"] == 2)
    assert client.get("/history").json()[0]["participants"] == ["a", "b"]
    assert 'tributary_rejected_total{reason="wrong_client"} 1' in client.get("/metrics").text


def test_receive_without_a_valid_token_is_refused_before_the_body_is_read(
    secured: Secured,
) -> None:
    client = secured.client
    too_big = b"\x00" * (2 << 20)  # over max_body_bytes: reading it would answer 413
    anonymous = client.post("/receive", content=too_big, headers={**MSGPACK, "Authorization": ""})
    assert anonymous.status_code == 401
    authenticated = client.post(
        "/receive", content=too_big, headers={**MSGPACK, **bearer(secured.tokens["a"])}
    )
    assert authenticated.status_code == 413


def test_admin_endpoints_refuse_client_tokens(secured: Secured) -> None:
    client = secured.client
    for path in ("/admin/stop", "/admin/skip_round"):
        reply = client.post(path, headers=bearer(secured.tokens["a"]))
        assert reply.status_code == 403
        assert reply.json()["error"] == "forbidden"
    assert client.get("/status").json()["phase"] == "waiting"


def test_admin_stop_finishes_the_run_with_the_last_model_and_survives_a_restart(
    start_app: AppFactory, tmp_path: Path
) -> None:
    tokens = write_tokens(tmp_path / "tokens.txt", "a", "b")
    settings = {"tokens_file": tmp_path / "tokens.txt", "admin_token": ADMIN}
    config = experiment(num_rounds=5)
    secured = Secured(start_app(config, **settings), tokens)
    weights = _training(secured)
    client = secured.client
    assert secured.post("a", update_body("a", 1, shifted(weights, 1.0))) == 200
    reply = client.post("/admin/stop")
    assert reply.status_code == 202
    assert reply.json() == {"action": "stop", "round": 1, "phase": "training"}
    status = wait_for(client, lambda s: s["phase"] == "finished")
    assert status["round"] == 0  # no round was completed: the initial model is final
    poll = client.get(
        "/get_weights",
        params={"client_id": "a", "min_round": 2, "wait": 30},
        headers=bearer(tokens["a"]),
    )
    message = decode_message(poll.content)
    assert message["phase"] == "finished"
    final = decode_weights(message["weights"])
    for name, array in weights.items():  # a's update was dropped, not aggregated
        np.testing.assert_array_equal(final[name], array)
    assert client.get("/history").json() == []
    assert client.post("/admin/stop").json()["error"] == "already_finished"
    client.__exit__(None, None, None)

    again = Secured(start_app(config, **settings), tokens).client
    assert again.get("/status").json()["phase"] == "finished"


def test_admin_skip_closes_the_round_with_the_updates_it_has(secured: Secured) -> None:
    weights = _training(secured)
    client = secured.client
    assert secured.post("a", update_body("a", 1, shifted(weights, 2.0), num_examples=7)) == 200
    reply = client.post("/admin/skip_round")
    assert reply.status_code == 202
    assert reply.json() == {"action": "close", "round": 1, "received": 1}
    wait_for(client, lambda s: s["round"] == 2 and s["phase"] == "training")
    (row,) = client.get("/history").json()
    assert row["participants"] == ["a"]  # below min_fit_clients (2): the operator decided
    new = secured.weights()
    for name, array in weights.items():  # the mean of one update is that update
        np.testing.assert_allclose(new[name], shifted(weights, 2.0)[name], rtol=1e-6)
        assert new[name].dtype == array.dtype


def test_admin_skip_without_updates_retries_the_round(secured: Secured) -> None:
    _training(secured)
    client = secured.client
    reply = client.post("/admin/skip_round")
    assert reply.status_code == 202
    assert reply.json() == {"action": "retry", "round": 1, "received": 0}
    status = wait_for(client, lambda s: s["attempt"] == 1)
    assert (status["round"], status["phase"]) == (1, "training")
    assert client.get("/history").json() == []


def test_admin_skip_with_no_open_round_is_a_conflict(secured: Secured) -> None:
    reply = secured.client.post("/admin/skip_round")
    assert reply.status_code == 409
    assert reply.json()["error"] == "no_open_round"


def test_without_an_admin_token_the_admin_endpoints_are_disabled(
    start_app: AppFactory, tmp_path: Path
) -> None:
    open_client = start_app()  # no tokens at all: the local demo
    assert open_client.get("/status").status_code == 200
    assert open_client.post("/admin/stop").json()["error"] == "admin_disabled"
    tokens = write_tokens(tmp_path / "tokens.txt", "a")
    client = start_app(state_dir=tmp_path / "other", tokens_file=tmp_path / "tokens.txt")
    reply = client.post("/admin/stop", headers=bearer(tokens["a"]))
    assert reply.status_code == 403
    assert reply.json()["error"] == "admin_disabled"


# ---------------------------------------------------------------------- the tokens file

STRONG = "k2Jd8fQz0P-vX4nW7rT_yU1sA9bC3eG5hL6mN8o"
OTHER = "Zq9Wx8Ec7Rv6Tb5Yn4Um3Ik2Ol1Pa0Sd-Fg_Hj"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "lists no client tokens"),
        ("# only a comment\n", "lists no client tokens"),
        (f"a {STRONG}\n", "line 1: expected 'client_id: token'"),
        ("a:\n", "line 1: the token of client 'a' is empty"),
        ("a: short-token-123\n", "line 1: the token of client 'a' is too short"),
        ("a: " + "ab" * 20 + "\n", "too repetitive"),
        ("a: " + STRONG[:-1] + "!\n", "characters outside"),
        (
            f"a: {STRONG}\n\nb: {OTHER}\na: {OTHER}x\n",
            "line 4: client 'a' is listed twice (also line 1)",
        ),
        (f"a: {STRONG}\nb: {STRONG}\n", "line 2: the token of client 'b' is the same as on line 1"),
        (f"-a: {STRONG}\n", "'-a' is not a client id"),
    ],
)
def test_a_bad_tokens_file_is_refused_naming_the_line_but_never_the_token(
    text: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=r"tokens\.txt") as info:
        parse_tokens(text, source="tokens.txt")
    assert problem in str(info.value)
    assert STRONG not in str(info.value)
    assert "short-token-123" not in str(info.value)


def test_tokens_file_format_comments_and_ids_with_colons() -> None:
    text = f"# clients\n  a: {STRONG}  \nhost:3: {OTHER}\n"
    assert parse_tokens(text, source="t") == {"a": STRONG, "host:3": OTHER}


def test_identify_maps_tokens_to_callers() -> None:
    access = Access({"a": STRONG, "b": OTHER}, admin_token=ADMIN)
    assert access.identify(STRONG) == Caller(client_id="a")
    assert access.identify(OTHER) == Caller(client_id="b")
    assert access.identify(ADMIN) == Caller(admin=True)
    assert access.identify(STRONG[:-1]) is None
    assert access.identify("") is None
    with pytest.raises(ConfigError, match="admin token is also a client's token"):
        Access({"a": STRONG}, admin_token=STRONG)


def test_create_app_refuses_a_bad_tokens_file_or_a_weak_admin_token(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("a: change-me\n")
    settings = AggregatorSettings(state_dir=tmp_path / "state", tokens_file=tokens)
    with pytest.raises(ConfigError, match=r"tokens.txt line 1: the token of client 'a' is too"):
        create_app(settings, experiment())
    weak = AggregatorSettings(state_dir=tmp_path / "state", admin_token="secret")
    with pytest.raises(ConfigError, match="admin token in TRIBUTARY_AGG_ADMIN_TOKEN is too short"):
        create_app(weak, experiment())
    missing = AggregatorSettings(state_dir=tmp_path / "state", tokens_file=tmp_path / "nope")
    with pytest.raises(ConfigError, match="cannot read the token file"):
        create_app(missing, experiment())


# ---------------------------------------------------------------------- a real worker


def _tiny_experiment() -> ExperimentConfig:
    synthetic = {"channels": 1, "image_size": 4, "num_classes": 3, "train_size": 40}
    return experiment(
        dataset="synthetic",
        synthetic={**synthetic, "test_size": 10},
        model="mlp",
        num_partitions=2,
        num_rounds=1,
        min_fit_clients=1,
        min_available_clients=1,
        local_epochs=1,
    )


def test_a_worker_with_its_token_takes_part_and_a_wrong_token_is_fatal(tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens.txt"
    tokens = write_tokens(tokens_file, "0", "1")
    config = _tiny_experiment()
    settings = AggregatorSettings(state_dir=tmp_path / "state", tokens_file=tokens_file)
    with serve(create_app(settings, config)) as (url, _):
        worker = WorkerSettings(server_url=url, long_poll_wait_s=2, backoff_max_time_s=5)
        forged = worker.model_copy(update={"client_id": "0", "token": SecretStr(tokens["1"])})
        with pytest.raises(FatalServerError) as info:
            run_worker(forged, config)
        assert (info.value.status, info.value.code) == (403, "wrong_client")
        unknown = worker.model_copy(update={"token": SecretStr("u" * 30 + "0123456789")})
        with pytest.raises(FatalServerError, match="401 unauthorized") as info:
            run_worker(unknown, config)
        own = worker.model_copy(update={"client_id": "0", "token_file": tokens_file})
        summary = run_worker(own, config)  # the server's tokens file works for workers too
        status = httpx.get(f"{url}/status", headers=bearer(tokens["0"]), timeout=10).json()
    assert (summary.outcome, summary.rounds_trained) == ("finished", 1)
    assert (status["phase"], status["registered_clients"]) == ("finished", 1)
