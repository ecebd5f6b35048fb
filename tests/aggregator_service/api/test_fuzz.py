"""Property-based fuzzing of POST /receive and POST /register through the real app.

Every generated /receive body is invalid by construction (random bytes, a valid update cut
short, impossible shapes, confused dtypes, deep nesting, wrong names, wrong field types,
extra fields). For each one the answer must be a 4xx JSON error with "error" and "detail"
and no traceback or file path, the published model and the round's updates must be
unchanged, and /healthz must still answer. Runs are derandomized (the same cases every
time); each test prints how many cases it sent and how they were answered (run with -s).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.aggregator_service.helpers import (
    MSGPACK,
    AppFactory,
    experiment,
    global_model,
    register,
    shifted,
    update_body,
    wait_for,
)

SELECTED = "a"
REPO = str(Path(__file__).resolve().parents[3])
FIELDS = ("protocol", "client_id", "round", "num_examples", "weights", "metrics")
# A file path or a traceback frame in an error body would leak the server's internals.
LEAKS = re.compile(r'Traceback|File "[^"]*", line \d+|site-packages|\.py\b')
FUZZ_SETTINGS = settings(
    max_examples=500,
    deadline=None,
    derandomize=True,  # the same cases on every run
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
RECEIVE_SETTINGS = settings(FUZZ_SETTINGS, max_examples=1200)

Weights = dict[str, np.ndarray]
Body = bytes


# ------------------------------------------------------------------ the app under attack


class Target:
    """An aggregator in round 1 with client "a" selected, and what must never change."""

    def __init__(self, client: TestClient, weights: Weights) -> None:
        self.client = client
        self.weights = weights
        self.valid = update_body(SELECTED, 1, weights)
        self.sha256 = client.get("/model").json()["sha256"]
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()

    def check_unchanged(self) -> None:
        """Assert the model and the round's updates are as before, and the service is healthy."""
        assert self.client.get("/model").json()["sha256"] == self.sha256
        status = self.client.get("/status").json()
        assert (status["round"], status["phase"]) == (1, "training")
        assert (status["received"], status["in_progress"]) == (0, [])
        assert self.client.get("/healthz").status_code == 200

    def report(self, what: str) -> None:
        """Print how many cases were sent and how they were answered."""
        total = sum(self.statuses.values())
        print(f"\n{what}: {total} cases; by status {dict(sorted(self.statuses.items()))}")
        print(f"{what}: by error {dict(sorted(self.errors.items()))}")


@pytest.fixture
def target(start_app: AppFactory) -> Target:
    """An app in round 1 (clients a and b registered, both selected), rate limit off."""
    client = start_app(experiment(num_rounds=2), max_body_bytes=4 << 20, receive_rate=0)
    register(client, "a", "b")
    wait_for(client, lambda s: s["phase"] == "training" and SELECTED in s["selected"])
    _, weights = global_model(client)
    return Target(client, {name: np.array(a) for name, a in weights.items()})


def assert_clean_error(reply: Any, *, statuses: range) -> dict[str, Any]:
    """Assert an error answer: status in range, JSON with error and detail, nothing leaked."""
    assert reply.status_code in statuses, (reply.status_code, reply.text[:500])
    body = reply.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str), body
    assert isinstance(body.get("detail"), str), body
    assert not LEAKS.search(reply.text), reply.text[:500]
    assert REPO not in reply.text
    return body


# ------------------------------------------------------------------ invalid update bodies


def _message(model: Weights, /, **fields: Any) -> dict[str, Any]:
    """A /receive message as plain msgpack-ready data (tensors as raw maps)."""
    message: dict[str, Any] = {
        "protocol": 1,
        "client_id": SELECTED,
        "round": 1,
        "num_examples": 10,
        "weights": {name: _tensor(a) for name, a in model.items()},
        "metrics": {"train_loss": 0.5},
    }
    message.update(fields)
    return message


def _tensor(array: np.ndarray, **fields: Any) -> dict[str, Any]:
    raw = {"dtype": array.dtype.name, "shape": list(array.shape), "data": array.tobytes()}
    raw.update(fields)
    return raw


def _pack(message: Any) -> Body:
    return bytes(msgpack.packb(message, use_bin_type=True))


BuildCase = Callable[[Weights, Body], Body]

# msgpack carries integers from -2**63 to 2**64 - 1: "num_examples = 2**70" goes as the
# largest one it can carry and as the float 2.0**70.
WRONG_VALUES: dict[str, list[Any]] = {
    "protocol": [1.0, "1", 3, 0, -1, None, True, [1], 2**64 - 1],
    "client_id": [7, None, ["a"], "a" * 100_000, "", "a b", "../../etc/passwd", b"a", True],
    "round": ["1", 1.0, -1, 0, True, None, 2**63, [1]],
    "num_examples": [1.5, "10", 0, -1, 10**9 + 1, 2**64 - 1, 2.0**70, True, None],
    "weights": [[], b"\x00" * 16, None, 1, "w", {}],
    "metrics": [{"train_loss": "x"}, {"train_loss": None}, [1], "m", {"a": [1]}, {1: 2.0}],
}
BAD_DTYPES = ["float64", "object", "O", "V8", "<f4", ">f4", "complex64", "float16", "int32"]
BAD_DTYPES += ["uint32", "bool", "", "float32 ", "str", "S4", "datetime64"]
NAME_CHARS = st.characters(codec="ascii", categories=["L", "N"], include_characters="_-")


def random_bytes() -> st.SearchStrategy[BuildCase]:
    return st.binary(max_size=4096).map(lambda data: lambda w, valid: data)


def truncated() -> st.SearchStrategy[BuildCase]:
    return st.floats(0, 1, exclude_max=True).map(
        lambda cut: lambda w, valid: valid[: int(cut * len(valid))]
    )


def huge_shapes() -> st.SearchStrategy[BuildCase]:
    dims = st.lists(st.integers(2**20, 2**62), min_size=1, max_size=4)
    shapes = st.one_of(st.just([2**40, 2**40]), dims)

    def build(shape: list[int], index: int) -> BuildCase:
        def case(w: Weights, valid: Body) -> Body:
            name = list(w)[index % len(w)]
            tensors = {n: _tensor(a) for n, a in w.items()}
            tensors[name] = {"dtype": "float32", "shape": shape, "data": b"\x00" * 64}
            return _pack(_message(w, weights=tensors))

        return case

    return st.builds(build, shapes, st.integers(0, 100))


def dtype_confusion() -> st.SearchStrategy[BuildCase]:
    def build(dtype: str, index: int) -> BuildCase:
        def case(w: Weights, valid: Body) -> Body:
            name = list(w)[index % len(w)]
            tensors = {n: _tensor(a) for n, a in w.items()}
            tensors[name] = _tensor(w[name], dtype=dtype)  # float32 bytes, another dtype
            return _pack(_message(w, weights=tensors))

        return case

    return st.builds(build, st.sampled_from(BAD_DTYPES), st.integers(0, 100))


def deep_nesting() -> st.SearchStrategy[BuildCase]:
    def build(depth: int, where: str) -> BuildCase:
        nested = b"\x91" * depth + b"\x01"  # [[[...[1]...]]]

        def case(w: Weights, valid: Body) -> Body:
            if where == "body":
                return nested
            message = _message(w)
            del message["weights"]
            head = _pack({**message, "weights": None})  # weights last: its value is the end
            return head[:-1] + nested

        return case

    return st.builds(build, st.integers(33, 20_000), st.sampled_from(["body", "weights"]))


def wrong_names() -> st.SearchStrategy[BuildCase]:
    def build(kind: str, index: int, new_name: str) -> BuildCase:
        def case(w: Weights, valid: Body) -> Body:
            tensors = {n: _tensor(a) for n, a in w.items()}
            name = list(w)[index % len(w)]
            if kind == "missing":
                del tensors[name]
            elif kind == "renamed":
                tensors[new_name] = tensors.pop(name)
            else:
                tensors[new_name] = tensors[name]
            return _pack(_message(w, weights=tensors))

        return case

    names = st.text(NAME_CHARS, min_size=1, max_size=40)
    return st.builds(
        build, st.sampled_from(["missing", "renamed", "extra"]), st.integers(0, 100), names
    )


MISSING = object()  # a WRONG_FIELDS value: leave the field out
WRONG_FIELDS: list[tuple[str, Any]] = [
    (key, value) for key, values in WRONG_VALUES.items() for value in values
] + [(key, MISSING) for key in FIELDS[:-1]]  # metrics is optional


def wrong_field(weights: Weights, key: str, value: Any) -> dict[str, Any]:
    """A message with `key` set to `value`, or without `key` when value is MISSING."""
    message = _message(weights)
    if value is MISSING:
        del message[key]
    else:
        message[key] = value
    return message


def wrong_field_types() -> st.SearchStrategy[BuildCase]:
    def build(pair: tuple[str, Any]) -> BuildCase:
        return lambda w, valid: _pack(wrong_field(w, *pair))

    return st.sampled_from(WRONG_FIELDS).map(build)


def extra_fields() -> st.SearchStrategy[BuildCase]:
    keys = st.text(max_size=20).filter(lambda k: k not in FIELDS and not LEAKS.search(k))
    values = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=20))

    def build(key: str, value: Any) -> BuildCase:
        return lambda w, valid: _pack({**_message(w), key: value})

    return st.builds(build, keys, values)


INVALID_UPDATES: st.SearchStrategy[tuple[str, BuildCase]] = st.one_of(
    [
        st.tuples(st.just(kind), strategy)
        for kind, strategy in [
            ("random bytes", random_bytes()),
            ("truncated", truncated()),
            ("huge shape", huge_shapes()),
            ("dtype confusion", dtype_confusion()),
            ("deep nesting", deep_nesting()),
            ("wrong names", wrong_names()),
            ("wrong field type", wrong_field_types()),
            ("extra field", extra_fields()),
        ]
    ]
)


def test_receive_rejects_every_invalid_update(target: Target) -> None:
    kinds: Counter[str] = Counter()

    @RECEIVE_SETTINGS
    @given(case=INVALID_UPDATES)
    def check(case: tuple[str, BuildCase]) -> None:
        kind, build = case
        kinds[kind] += 1
        body = build(target.weights, target.valid)
        reply = target.client.post("/receive", content=body, headers=MSGPACK)
        target.statuses[reply.status_code] += 1
        error = assert_clean_error(reply, statuses=range(400, 500))
        target.errors[error["error"]] += 1
        target.check_unchanged()

    check()
    target.report("POST /receive")
    print(f"POST /receive: by kind {dict(sorted(kinds.items()))}")
    # No rejected case left a trace in the running sum: the round aggregates exactly.
    for client_id, shift, num_examples in (("a", 1.0, 10), ("b", 3.0, 30)):
        body = update_body(client_id, 1, shifted(target.weights, shift), num_examples)
        assert target.client.post("/receive", content=body, headers=MSGPACK).status_code == 200
    wait_for(target.client, lambda s: s["round"] == 2)
    _, new = global_model(target.client)
    for name, array in target.weights.items():
        expected = (array.astype(np.float64) + 2.5).astype(array.dtype)
        np.testing.assert_allclose(new[name], expected, rtol=1e-6, atol=1e-6, err_msg=name)


def test_receive_rejects_each_wrong_field_value(target: Target) -> None:
    """Every entry of WRONG_VALUES, and every required field left out, once each."""
    for key, value in WRONG_FIELDS:
        message = wrong_field(target.weights, key, value)
        reply = target.client.post("/receive", content=_pack(message), headers=MSGPACK)
        target.statuses[reply.status_code] += 1
        target.errors[assert_clean_error(reply, statuses=range(400, 500))["error"]] += 1
        target.check_unchanged()
    target.report("POST /receive, wrong field values")


# ------------------------------------------------------------------ POST /register


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
REGISTER_BODIES = st.one_of(
    JSON,
    st.fixed_dictionaries({"client_id": JSON}),
    st.fixed_dictionaries({"client_id": st.text(max_size=80), "num_examples": JSON}),
    st.fixed_dictionaries(
        {"client_id": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", fullmatch=True)},
        optional={"num_examples": st.integers(), "extra": JSON},
    ),
)


def test_register_answers_random_json_without_5xx(target: Target) -> None:
    @FUZZ_SETTINGS
    @given(body=REGISTER_BODIES | st.binary(max_size=200))
    def check(body: Any) -> None:
        if isinstance(body, bytes):
            reply = target.client.post(
                "/register", content=body, headers={"content-type": "application/json"}
            )
        else:
            reply = target.client.post("/register", json=body)
        target.statuses[reply.status_code] += 1
        if reply.status_code == 200:
            answer = reply.json()
            assert answer["registered"] is True
            assert answer["client_id"] == body["client_id"]
            target.errors["(registered)"] += 1
        else:
            target.errors[assert_clean_error(reply, statuses=range(400, 500))["error"]] += 1
        target.check_unchanged()

    check()
    target.report("POST /register")
