"""Tests of the aggregator client against httpx.MockTransport fakes (no real server)."""

from __future__ import annotations

import gzip
import itertools
import json
import threading
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest

from client_worker.errors import (
    FatalServerError,
    ServerUnavailableError,
    StopRequested,
    UpdateRejected,
)
from client_worker.network import NetworkSimulator
from client_worker.retry import Backoff
from client_worker.transport import MAX_BODY_BYTES, AggregatorClient
from shared.config import NetworkProfile
from shared.wire import TensorSpec, decode_message, decode_weights, encode_message

Handler = Callable[[httpx.Request], httpx.Response]


class _FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _client(
    handler: Handler,
    fake: _FakeTime | None = None,
    *,
    backoff: Backoff | None = None,
    **kwargs: object,
) -> AggregatorClient:
    fake = fake or _FakeTime()
    return AggregatorClient(
        "http://aggregator.test",
        client_id="3",
        transport=httpx.MockTransport(handler),
        backoff=backoff,
        sleep=fake.sleep,
        clock=fake.clock,
        **kwargs,  # type: ignore[arg-type]
    )


def _scripted(*steps: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A handler answering with `steps` in order (exceptions are raised) and its requests."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        step = steps[len(seen) - 1]
        if isinstance(step, Exception):
            raise step
        return step

    return handler, seen


def _weights_body(server_round: int, phase: str, selected: list[str]) -> bytes:
    return encode_message(
        {
            "protocol": 1,
            "round": server_round,
            "phase": phase,
            "model": "mlp",
            "selected": selected,
            "config": {"model": "mlp", "local_epochs": 1, "batch_size": 4, "lr": 0.1},
            "weights": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
        }
    )


def _registered() -> httpx.Response:
    return httpx.Response(200, json={"client_id": "3", "registered": True, "round": 1})


# -------------------------------------------------------------------- backoff


def test_backoff_bound_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base_s=0.5, cap_s=30.0, max_time_s=600.0)
    assert [backoff.bound(k) for k in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff.bound(10_000) == 30.0


def test_full_jitter_delays_stay_within_zero_and_the_bound_and_grow() -> None:
    backoff = Backoff(base_s=0.5, cap_s=30.0)
    rng = np.random.default_rng(0)
    means = []
    for attempt in range(8):
        delays = np.array([backoff.delay(attempt, rng) for _ in range(400)])
        bound = min(30.0, 0.5 * 2**attempt)
        assert delays.min() >= 0.0
        assert delays.max() <= bound
        assert delays.max() > 0.9 * bound  # full jitter reaches up to the bound
        means.append(delays.mean())
    assert all(later > earlier for earlier, later in itertools.pairwise(means[:7]))
    assert means[7] == pytest.approx(15.0, rel=0.15)  # uniform(0, 30) has mean 15


def test_retries_stop_at_the_time_limit() -> None:
    def always_down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="bad gateway")

    fake = _FakeTime()
    client = _client(always_down, fake, backoff=Backoff(base_s=1.0, cap_s=4.0, max_time_s=20.0))
    with pytest.raises(ServerUnavailableError, match="backoff_max_time_s=20"):
        client.register(10)
    assert fake.now <= 20.0
    assert len(fake.sleeps) >= 5  # delays average at most 2 s early on, 4 s at the cap
    assert all(0.0 <= s <= min(4.0, 2.0**k) for k, s in enumerate(fake.sleeps))


# -------------------------------------------------------------------- retries


def test_retries_503_500_and_connect_error_then_succeeds() -> None:
    handler, seen = _scripted(
        httpx.Response(503, headers={"Retry-After": "2"}, json={"error": "busy"}),
        httpx.Response(500, text="oops"),
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        _registered(),
    )
    fake = _FakeTime()
    client = _client(handler, fake, backoff=Backoff(base_s=0.5, cap_s=30.0))
    assert client.register(400)["registered"] is True
    assert len(seen) == 5
    assert 2.0 <= fake.sleeps[0] <= 4.0  # at least Retry-After, jittered up to twice it
    assert 0.0 <= fake.sleeps[1] <= 1.0  # attempt 1: uniform(0, 0.5 * 2)
    assert 0.0 <= fake.sleeps[2] <= 2.0
    assert 0.0 <= fake.sleeps[3] <= 4.0
    assert json.loads(seen[-1].content) == {"client_id": "3", "num_examples": 400}


@pytest.mark.parametrize("status", [400, 401, 403, 413, 415, 422])
def test_fatal_client_errors_raise_at_once_with_the_detail(status: int) -> None:
    body = {"error": "tensor_mismatch", "detail": "tensor '0.weight': shape [3] is wrong"}
    handler, seen = _scripted(httpx.Response(status, json=body))
    with pytest.raises(FatalServerError) as info:
        _client(handler).post_update(1, 10, {"w": np.zeros(3, np.float32)}, {"train_loss": 1.0})
    assert info.value.status == status
    assert info.value.detail == "tensor '0.weight': shape [3] is wrong"
    assert info.value.code == "tensor_mismatch"
    assert str(status) in str(info.value)
    assert len(seen) == 1  # never retried


@pytest.mark.parametrize("reason", ["stale_round", "not_selected", "round_closed", "too_stale"])
def test_409_rejection_carries_the_reason_and_current_round(reason: str) -> None:
    handler, seen = _scripted(
        httpx.Response(409, json={"error": reason, "detail": "round 4 is closed", "round": 5})
    )
    with pytest.raises(UpdateRejected) as info:
        _client(handler).post_update(4, 10, {"w": np.zeros(3, np.float32)}, {})
    assert info.value.reason == reason
    assert info.value.current_round == 5
    assert len(seen) == 1


def test_stop_during_retries_raises_stop_requested() -> None:
    stop = threading.Event()

    def down_then_stop(request: httpx.Request) -> httpx.Response:
        stop.set()
        return httpx.Response(503)

    with pytest.raises(StopRequested):
        _client(down_then_stop, stop=stop).register(1)


# -------------------------------------------------------------------- protocol


def test_get_weights_sends_etag_and_returns_none_on_304() -> None:
    handler, seen = _scripted(httpx.Response(304))
    assert _client(handler).get_weights(min_round=2, etag='"r1-abc"', wait=30) is None
    request = seen[0]
    assert request.url.path == "/get_weights"
    assert dict(request.url.params) == {"client_id": "3", "min_round": "2", "wait": "30"}
    assert request.headers["If-None-Match"] == '"r1-abc"'


def test_get_weights_decodes_a_200_reply() -> None:
    body = _weights_body(2, "training", ["0", "3"])
    headers = {
        "ETag": '"r2"',
        "X-Tributary-Selected": "true",
        "Content-Type": "application/msgpack",
    }
    handler, seen = _scripted(httpx.Response(200, content=body, headers=headers))
    reply = _client(handler).get_weights(min_round=1)
    assert "If-None-Match" not in seen[0].headers
    assert reply is not None
    assert (reply.server_round, reply.phase, reply.model) == (2, "training", "mlp")
    assert reply.selected == ("0", "3")
    assert reply.is_selected
    assert reply.etag == '"r2"'
    assert reply.config["batch_size"] == 4
    weights = reply.weights({"w": TensorSpec((2, 3), "float32")})
    np.testing.assert_array_equal(weights["w"], [[0, 1, 2], [3, 4, 5]])


def test_selection_falls_back_to_the_selected_list_without_the_header() -> None:
    handler, _ = _scripted(httpx.Response(200, content=_weights_body(1, "training", ["1", "2"])))
    reply = _client(handler).get_weights(min_round=1)
    assert reply is not None
    assert not reply.is_selected


def test_post_update_sends_msgpack_with_weights_and_metrics() -> None:
    accepted = {"accepted": True, "duplicate": False, "round": 2, "received": 1, "needed": 2}
    handler, seen = _scripted(httpx.Response(200, json=accepted))
    client = _client(handler)
    weights = {"w": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)}
    answer = client.post_update(2, 40, weights, {"train_loss": 0.5, "train_seconds": 1.5})
    assert answer == accepted
    request = seen[0]
    assert request.url.path == "/receive"
    assert request.headers["Content-Type"] == "application/msgpack"
    message = decode_message(request.content)
    assert (message["protocol"], message["client_id"], message["round"]) == (1, "3", 2)
    assert message["num_examples"] == 40
    assert message["metrics"] == {"train_loss": 0.5, "train_seconds": 1.5}
    decoded = decode_weights(message["weights"], spec={"w": TensorSpec((2, 3), "float32")})
    np.testing.assert_array_equal(decoded["w"], weights["w"])
    assert client.bytes_up == len(request.content)
    assert client.bytes_down == len(httpx.Response(200, json=accepted).content)


def test_one_http_client_is_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[httpx.Client] = []

    class CountingClient(httpx.Client):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(**kwargs)  # type: ignore[arg-type]
            created.append(self)

    monkeypatch.setattr("client_worker.transport.httpx.Client", CountingClient)
    handler, seen = _scripted(_registered(), httpx.Response(304), httpx.Response(304))
    with _client(handler) as client:
        client.register(1)
        client.get_weights(1)
        client.get_weights(1, etag='"x"')
    assert len(created) == 1
    assert len(seen) == 3
    assert created[0].is_closed  # closed by the context manager


def test_timeouts_are_explicit_and_finite() -> None:
    handler, seen = _scripted(_registered())
    timeout = httpx.Timeout(connect=5.0, read=60.0, write=60.0, pool=5.0)
    _client(handler, timeout=timeout).register(1)
    assert seen[0].extensions["timeout"] == {
        "connect": 5.0,
        "read": 60.0,
        "write": 60.0,
        "pool": 5.0,
    }


def test_simulated_latency_and_bandwidth_are_applied_per_request() -> None:
    fake = _FakeTime()
    profile = NetworkProfile(latency_ms=100, bandwidth_mbit=1)
    network = NetworkSimulator(profile, sleep=fake.sleep)
    reply = httpx.Response(200, json={"accepted": True})
    handler, seen = _scripted(reply)
    client = _client(handler, fake, network=network)
    client.post_update(1, 5, {"w": np.zeros(1000, np.float32)}, {})
    up, down = len(seen[0].content), len(httpx.Response(200, json={"accepted": True}).content)
    # latency first, then the upload, then the download at 1 Mbit/s (1e6 bit/s).
    assert fake.sleeps == pytest.approx([0.1, up * 8 / 1e6, down * 8 / 1e6])


# -------------------------------------------------------------------- download


def _streamed(
    body: bytes, *, chunk: int = 1000, headers: dict[str, str] | None = None
) -> httpx.Response:
    """A 200 whose body arrives in `chunk`-byte pieces, as from a socket (not pre-read)."""
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    return httpx.Response(200, content=iter(pieces), headers=headers)


def _spec_w() -> dict[str, TensorSpec]:
    return {"w": TensorSpec((2, 3), "float32")}


def test_download_fills_one_buffer_from_content_length_and_decodes_read_only_views() -> None:
    body = _weights_body(2, "training", ["3"])
    handler, seen = _scripted(_streamed(body, chunk=7, headers={"Content-Length": str(len(body))}))
    client = _client(handler)
    reply = client.get_weights(min_round=1)
    assert reply is not None
    assert reply.nbytes == len(body)
    assert client.bytes_down == len(body)
    weights = reply.weights(_spec_w())
    np.testing.assert_array_equal(weights["w"], [[0, 1, 2], [3, 4, 5]])
    assert not weights["w"].flags.writeable  # a view of the received bytes, as documented
    assert len(seen) == 1


def test_download_without_content_length_reads_the_chunks() -> None:
    body = _weights_body(3, "training", ["3"])
    handler, _ = _scripted(_streamed(body, chunk=64))  # chunked transfer: no Content-Length
    client = _client(handler)
    reply = client.get_weights(min_round=1)
    assert reply is not None
    assert (reply.server_round, reply.nbytes, client.bytes_down) == (3, len(body), len(body))
    np.testing.assert_array_equal(reply.weights(_spec_w())["w"].ravel(), np.arange(6))


def test_download_of_a_compressed_body_ignores_the_encoded_length() -> None:
    body = _weights_body(2, "training", ["3"])
    packed = gzip.compress(body)
    headers = {"Content-Encoding": "gzip", "Content-Length": str(len(packed))}
    handler, _ = _scripted(_streamed(packed, chunk=50, headers=headers))
    reply = _client(handler).get_weights(min_round=1)
    assert reply is not None
    assert reply.nbytes == len(body)  # the decoded size
    np.testing.assert_array_equal(reply.weights(_spec_w())["w"].ravel(), np.arange(6))


@pytest.mark.parametrize("extra", [-10, 10], ids=["shorter", "longer"])
def test_a_body_that_differs_from_its_content_length_is_retried(extra: int) -> None:
    body = _weights_body(2, "training", ["3"])
    broken = _streamed(body, chunk=100, headers={"Content-Length": str(len(body) - extra)})
    handler, seen = _scripted(broken, _streamed(body, headers={"Content-Length": str(len(body))}))
    fake = _FakeTime()
    client = _client(handler, fake)
    reply = client.get_weights(min_round=1)
    assert reply is not None
    assert reply.server_round == 2
    assert len(seen) == 2
    assert len(fake.sleeps) == 1  # one backoff between the two attempts
    assert client.bytes_down == len(body)  # the broken transfer is not counted


def test_a_broken_body_every_time_ends_as_server_unavailable() -> None:
    body = _weights_body(2, "training", ["3"])

    def truncating(request: httpx.Request) -> httpx.Response:
        return _streamed(body[:-1], headers={"Content-Length": str(len(body))})

    client = _client(truncating, backoff=Backoff(base_s=1.0, cap_s=2.0, max_time_s=10.0))
    with pytest.raises(ServerUnavailableError, match=f"ended after {len(body) - 1} of the"):
        client.get_weights(min_round=1)


def test_a_content_length_over_the_cap_is_refused_before_reading() -> None:
    served: list[int] = []

    def pieces() -> Iterator[bytes]:
        served.append(1)
        yield b"x"

    too_big = str(MAX_BODY_BYTES + 1)
    response = httpx.Response(200, content=pieces(), headers={"Content-Length": too_big})
    handler, seen = _scripted(response)
    with pytest.raises(FatalServerError, match=f"declares {too_big} bytes, more than") as info:
        _client(handler).get_weights(min_round=1)
    assert info.value.status == 200
    assert len(seen) == 1  # not retried
    assert served == []  # no byte of the body was read
    assert MAX_BODY_BYTES == 2 * 1024**3


def test_an_invalid_content_length_is_refused() -> None:
    handler, _ = _scripted(_streamed(b"\x80", headers={"Content-Length": "many"}))
    with pytest.raises(FatalServerError, match="invalid Content-Length 'many'"):
        _client(handler).get_weights(min_round=1)


def test_a_body_without_length_stops_at_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("client_worker.download.MAX_BODY_BYTES", 1000)
    handler, _ = _scripted(_streamed(b"\x00" * 1500, chunk=400))
    with pytest.raises(FatalServerError, match="sent over 1200 bytes, more than the 1000"):
        _client(handler).get_weights(min_round=1)


def test_simulated_bandwidth_applies_to_the_streamed_download() -> None:
    fake = _FakeTime()
    network = NetworkSimulator(NetworkProfile(latency_ms=50, bandwidth_mbit=8), sleep=fake.sleep)
    body = _weights_body(2, "training", ["3"])
    handler, _ = _scripted(_streamed(body, headers={"Content-Length": str(len(body))}))
    assert _client(handler, fake, network=network).get_weights(min_round=1) is not None
    # latency, then the body at 8 Mbit/s = 1 byte per microsecond
    assert fake.sleeps == pytest.approx([0.05, len(body) * 1e-6])


def test_an_error_answer_to_a_download_keeps_its_detail() -> None:
    body = {"error": "unknown_client", "detail": "client '3' is not registered"}
    handler, seen = _scripted(httpx.Response(403, json=body))
    with pytest.raises(FatalServerError, match="client '3' is not registered") as info:
        _client(handler).get_weights(min_round=1)
    assert (info.value.status, info.value.code) == (403, "unknown_client")
    assert len(seen) == 1


def test_post_update_streams_a_sized_body_and_resends_it_whole_on_a_retry() -> None:
    accepted = {"accepted": True, "duplicate": True, "round": 2, "received": 1, "needed": 2}
    handler, seen = _scripted(httpx.Response(503), httpx.Response(200, json=accepted))
    client = _client(handler)
    weights = {"w": np.arange(600_000, dtype=np.float32), "b": np.ones(3, np.float32)}
    client.post_update(2, 40, weights, {"train_loss": 0.5})
    assert len(seen) == 2
    expected = encode_message(
        {
            "protocol": 1,
            "client_id": "3",
            "round": 2,
            "num_examples": 40,
            "weights": weights,
            "metrics": {"train_loss": 0.5},
        }
    )
    for request in seen:
        assert request.headers["Content-Length"] == str(len(expected))
        assert "Transfer-Encoding" not in request.headers  # sized, not chunked
        assert request.content == expected
    assert client.bytes_up == 2 * len(expected)
