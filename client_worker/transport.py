"""The worker's HTTP client for the aggregator: one reused connection pool, retries, errors.

Connection errors, timeouts, 408, 429 and 5xx are retried with exponential backoff and
full jitter (sleep = uniform(0, min(cap, base * 2**attempt))), honouring Retry-After, until
an overall time limit. Client errors that a retry cannot heal (400, 401, 403, 404, 413, 415,
422, ...) raise `FatalServerError`; a 409 for a stale round or an unselected client raises
`UpdateRejected`, after which the worker drops its update and polls again.

The global model is streamed into one buffer sized from its Content-Length
(`client_worker.download`); a body shorter or longer than declared is a broken transfer
and retried like a dropped connection. When the round config announces download
compression, the client keeps the last model it received and names it in
X-Tributary-Base; an answer of steps against it is resolved onto it (`WeightsReply`).

With a token, every request carries ``Authorization: Bearer <token>``. A server
certificate that does not verify (against `verify`: the system's CAs or a CA bundle)
raises `CertificateError` at once: retrying cannot make it trusted. Answers are read, and
errors typed, in `client_worker.replies`.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, cast

import httpx
import numpy as np

from client_worker.download import MAX_BODY_BYTES, BrokenBody, read_body
from client_worker.errors import (
    CertificateError,
    ServerUnavailableError,
    StopRequested,
)
from client_worker.network import NetworkSimulator, Sleep, event_sleep
from client_worker.replies import (
    NotModified,
    WeightsReply,
    error_fields,
    json_object,
    not_modified,
    raise_for_status,
    weights_reply,
)
from client_worker.retry import Backoff, retry_after, retryable
from client_worker.upload import UploadBody
from shared.errors import MalformedMessage
from shared.wire import protocol_for

__all__ = ["MAX_BODY_BYTES", "AggregatorClient", "WeightsReply"]

_log = logging.getLogger(__name__)

MSGPACK = "application/msgpack"
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=60.0, write=60.0, pool=5.0)
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class AggregatorClient:
    """Talks to one aggregator over ONE reused `httpx.Client`, with retries."""

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        backoff: Backoff | None = None,
        network: NetworkSimulator | None = None,
        transport: httpx.BaseTransport | None = None,
        stop: threading.Event | None = None,
        sleep: Sleep | None = None,
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
        token: str | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.client_id = client_id
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=base_url, timeout=timeout, transport=transport, headers=headers, verify=verify
        )
        url = self._http.base_url
        if token and url.scheme == "http" and url.host not in _LOOPBACK:
            _log.warning(
                "client %s: sending its token to %s over plain HTTP; use https://", client_id, url
            )
        self._backoff = backoff if backoff is not None else Backoff()
        self._network = network if network is not None else NetworkSimulator()
        self._stop = stop
        self._sleep = sleep if sleep is not None else event_sleep(stop)
        self._clock = clock
        self._rng = np.random.default_rng([seed, 0x7E7])
        self.bytes_up = 0
        self.bytes_down = 0
        self._held: WeightsReply | None = None  # the model held, with download compression

    # ---------------------------------------------------------------- protocol

    def register(self, num_examples: int) -> dict[str, Any]:
        """Register this client and the size of its data; idempotent."""
        body = {"client_id": self.client_id, "num_examples": num_examples}
        response, _ = self._request("POST", "/register", json_body=body)
        return json_object(response)

    def get_weights(
        self, min_round: int, etag: str | None = None, wait: float = 30.0
    ) -> WeightsReply | None:
        """Long-poll for the global model; None when nothing changed (304)."""
        answer = self.poll_weights(min_round, etag, wait)
        return answer if isinstance(answer, WeightsReply) else None

    def poll_weights(
        self, min_round: int, etag: str | None = None, wait: float = 30.0
    ) -> WeightsReply | NotModified:
        """Long-poll for the global model; a 304 comes back as `NotModified` (its headers)."""
        params: dict[str, str | int | float] = {
            "client_id": self.client_id,
            "min_round": min_round,
            "wait": wait,
        }
        headers = {"If-None-Match": etag} if etag is not None else {}
        held = self._held
        if held is not None and held.etag is not None:
            headers["X-Tributary-Base"] = held.etag
        response, body = self._request(
            "GET", "/get_weights", params=params, headers=headers, into_buffer=True
        )
        if response.status_code == 304:
            return not_modified(response)
        reply = weights_reply(response, body, self.client_id)
        if reply.delta_base is not None:
            if held is None or reply.delta_base != held.etag:
                raise MalformedMessage(f"a delta against {reply.delta_base}, not the model held")
            reply = reply.resolve(held.full_weights())
        self.hold(reply)
        return reply

    def hold(self, reply: WeightsReply | None) -> None:
        """Name `reply`'s model in the next polls if its round config has download compression."""
        announced = reply is not None and "download_compression" in reply.config
        self._held = reply if announced else None

    def simulate_download(self, nbytes: int) -> None:
        """Spend the simulated network's time for a download this client did not make."""
        self._network.after_transfer(nbytes)

    def post_update(
        self,
        server_round: int,
        num_examples: int,
        weights: Mapping[str, Any],
        metrics: Mapping[str, float],
        groups: Mapping[str, Mapping[str, np.ndarray]] | None = None,
        *,
        delta: bool = False,
    ) -> dict[str, Any]:
        """Send this round's trained weights; a duplicate re-post counts as success.

        With tensor `groups` the message is protocol 2, else protocol 1 as always. With
        `delta`, `weights` are trained - global, float32 ones possibly compressed maps
        (client_worker.compress). The body is streamed from the arrays (`UploadBody`):
        they must not change until this returns.
        """
        message: dict[str, Any] = {
            "protocol": protocol_for(groups or {}),
            "client_id": self.client_id,
            "round": server_round,
            "num_examples": num_examples,
            "weights": dict(weights),
            "metrics": dict(metrics),
        }
        if groups:
            message["groups"] = {name: dict(tensors) for name, tensors in groups.items()}
        if delta:
            message["delta"] = True
        return self.post_message("/receive", message)

    def post_message(self, path: str, message: Mapping[str, Any]) -> dict[str, Any]:
        """POST a msgpack message, streamed from its arrays; return the JSON answer."""
        content = UploadBody(message)
        headers = {"Content-Type": MSGPACK, "Content-Length": str(content.nbytes)}
        response, _ = self._request("POST", path, content=content, headers=headers)
        return json_object(response)

    def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, str | int | float] | None = None,
    ) -> dict[str, Any]:
        """Send a JSON request (with retries) and return the JSON answer."""
        response, _ = self._request(method, path, json_body=json_body, params=params)
        return json_object(response)

    def healthy(self) -> bool:
        """Tell whether GET /healthz answers 200 (one attempt, no retries)."""
        try:
            return self._http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> AggregatorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------- retries

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        content: bytes | UploadBody | None = None,
        params: Mapping[str, str | int | float] | None = None,
        headers: Mapping[str, str] | None = None,
        into_buffer: bool = False,
    ) -> tuple[httpx.Response, memoryview]:
        """Send with retries; return a 2xx or 304 response and its body, or raise.

        With `into_buffer`, a 200 body is streamed into one preallocated buffer.
        """
        all_headers = dict(headers or {})
        if json_body is not None:
            content = json.dumps(json_body).encode()
            all_headers["Content-Type"] = "application/json"
        started = self._clock()
        attempt = 0
        while True:
            answer, failure = self._attempt(
                method, path, content, params, all_headers, into_buffer=into_buffer
            )
            if answer is not None and not retryable(answer[0].status_code):
                raise_for_status(answer[0])
                return answer
            wait_s = retry_after(answer[0]) if answer is not None else None
            if wait_s is None:
                delay = self._backoff.delay(attempt, self._rng)
            else:  # at least Retry-After, jittered so refused clients do not return together
                delay = wait_s * (1.0 + float(self._rng.uniform()))
            elapsed = self._clock() - started
            if elapsed + delay > self._backoff.max_time_s:
                raise ServerUnavailableError(
                    f"{method} {path} kept failing for {elapsed:.0f} s ({failure}); "
                    f"gave up after {attempt + 1} attempts (backoff_max_time_s="
                    f"{self._backoff.max_time_s:g}); check that the aggregator is up"
                )
            _log.warning(
                "client %s: %s %s failed (%s); retry %d in %.2f s",
                self.client_id,
                method,
                path,
                failure,
                attempt + 1,
                delay,
            )
            self._sleep(delay)
            self._check_stop()  # a first attempt always goes out; retries end on a stop
            attempt += 1

    def _attempt(
        self,
        method: str,
        path: str,
        content: bytes | UploadBody | None,
        params: Mapping[str, str | int | float] | None,
        headers: Mapping[str, str],
        *,
        into_buffer: bool,
    ) -> tuple[tuple[httpx.Response, memoryview] | None, str]:
        """Send once with the simulated network; return ((response, body) or None, failure)."""
        self._network.before_request()
        if content:
            self._network.after_transfer(len(content))
        # h11 takes any bytes-like piece; httpx's annotation says bytes only.
        pieces = cast("bytes | Iterable[bytes] | None", content)
        try:
            with self._http.stream(
                method, path, content=pieces, params=params, headers=headers
            ) as response:
                if into_buffer and response.status_code == 200:
                    body = read_body(response, f"{method} {path}")
                else:
                    body = memoryview(response.read())
        except httpx.TransportError as exc:
            _raise_if_untrusted(exc, self._http.base_url)
            return None, f"{type(exc).__name__}: {exc}"
        except BrokenBody as exc:
            return None, str(exc)
        self.bytes_up += len(content or b"")
        self.bytes_down += len(body)
        self._network.after_transfer(len(body))
        failure = f"HTTP {response.status_code} {error_fields(response)[1]}".strip()
        return (response, body), failure

    def _check_stop(self) -> None:
        if self._stop is not None and self._stop.is_set():
            raise StopRequested(f"client {self.client_id}: stop requested")


def _raise_if_untrusted(exc: httpx.TransportError, base_url: httpx.URL) -> None:
    """Raise CertificateError when `exc` comes from a server certificate that did not verify."""
    cause: BaseException | None = exc
    for _ in range(16):  # the chain is short; the bound guards against a cycle
        if cause is None:
            return
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or str(cause)
            raise CertificateError(
                f"cannot verify the TLS certificate of {base_url}: {reason}; give the worker "
                "the CA that signed it (--ca-bundle or TRIBUTARY_WORKER_CA_BUNDLE)"
            ) from exc
        cause = cause.__cause__ or cause.__context__
