"""Property-based fuzzing of the secure-aggregation endpoints through the real app.

Each endpoint is fuzzed in the stage where its checks run: POST /secagg/keys in stage
keys, /secagg/shares in stage shares, /secagg/masked in stage masked, /secagg/unmask in
stage unmask, with ten honest sessions moved there first (`SteppedRound`). Every body is
invalid by construction (random JSON or bytes, a valid message with one field replaced,
extra fields, wrong receivers or owners, wrong lengths, encodings, dtypes and shapes,
values outside the ring, truncations). Each answer must be a 4xx JSON error with
"error" and "detail" and nothing leaked, the round attempt's state must be unchanged,
and after the fuzzing the honest clients finish the round with the exact sum. Runs are
derandomized; each test prints how its cases were answered (run with -s).
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator_service.federation.federation import Federation
from shared.secagg.messages import SEALED_BYTES
from shared.secagg.shamir import SHARE_BYTES
from tests.aggregator_service.api.test_fuzz import FUZZ_SETTINGS, JSON, assert_clean_error
from tests.aggregator_service.federation.secagg_clients import SteppedRound
from tests.aggregator_service.federation.test_secagg_rounds import IDS, secagg_experiment
from tests.aggregator_service.helpers import MSGPACK, AppFactory, register, wait_for

MODULUS = 1 << 30
SETTINGS = FUZZ_SETTINGS  # 500 derandomized cases per test
IDS_OR_STRANGERS = st.sampled_from([*IDS, "zz", "", "a b", "c0 ", "../c1", "C0", "c" * 65])


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class Fuzzed:
    """A stepped round, the snapshot its attempt must keep, and how the cases went."""

    def __init__(self, stepped: SteppedRound) -> None:
        self.stepped = stepped
        self.client = stepped.client
        self.federation: Federation = stepped.client.app.state.federation  # type: ignore[attr-defined]
        self.before: Any = None
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()

    def snapshot(self) -> tuple[Any, ...]:
        """Return everything the attempt has recorded."""
        with self.federation.state.lock:
            current = self.federation.state.round
            s = current.secagg
            assert s is not None
            total = None if s.masked_sum is None else s.masked_sum.tobytes()
            return (
                (current.server_round, current.attempt, current.phase, s.stage),
                dict(s.keys),
                dict(s.share_digests),
                {r: dict(by) for r, by in s.sealed.items()},
                dict(s.masked_digests),
                total,
                set(s.unmasked_by),
                {o: dict(by) for o, by in s.b_shares.items()},
                {o: dict(by) for o, by in s.sk_shares.items()},
            )

    def at(self, stage: str) -> None:
        """Move the honest clients to `stage` and remember the state to keep."""
        self.stepped.to(stage)
        self.before = self.snapshot()

    def answer(self, reply: Any) -> None:
        """Check one fuzzed request: a clean 4xx, nothing changed, still healthy."""
        self.statuses[reply.status_code] += 1
        self.errors[assert_clean_error(reply, statuses=range(400, 500))["error"]] += 1
        assert self.snapshot() == self.before
        assert self.client.get("/healthz").status_code == 200

    def finish_exactly(self, what: str) -> None:
        """Report the cases, then let the honest clients close the round; check its sum."""
        total = sum(self.statuses.values())
        print(f"\n{what}: {total} cases; by status {dict(sorted(self.statuses.items()))}")
        print(f"{what}: by error {dict(sorted(self.errors.items()))}")
        self.stepped.to("closed")
        wait_for(self.client, lambda s: s["phase"] == "finished")
        (row,) = self.client.get("/history").json()
        assert (row["attempts"], row["participants"]) == (1, IDS)
        expected = self.stepped.expected(self.federation.config.secagg.quantizer())
        for name, array in expected.items():
            assert np.array_equal(self.federation.state.global_weights[name], array), name


@pytest.fixture
def fuzzed(start_app: AppFactory) -> Fuzzed:
    """Round 1 in stage keys; deadlines far off so no stage closes while fuzzing."""
    options = {"modulus": MODULUS, "quantization_range": 1 << 20, "stage_timeout_s": 600.0}
    client = start_app(
        secagg_experiment(secagg=options, round_timeout_s=600.0),
        max_body_bytes=4 << 20,
        receive_rate=0,
    )
    register(client, *IDS)
    wait_for(client, lambda s: s["phase"] == "training")
    return Fuzzed(SteppedRound(client, IDS))


# ------------------------------------------------------------------ JSON messages

WRONG_INTS = [0, -1, 2, 1.0, "1", True, None, [1], 2**63, 2**64 + 1]
WRONG_BYTES = [
    b64(b"k" * 31),
    b64(b"k" * 33),
    "",
    "not base64!",
    "a" * 43,  # 32 bytes' worth without padding
    b64(b"k" * 32) + "=",
    7,
    None,
    ["a"],
    {"a": 1},
]


def one_field_wrong(
    valid: dict[str, Any], wrong: dict[str, list[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    """A valid message with one field replaced (or removed) by a value it must refuse.

    Random replacements leave out the original value and, for the revealed shares (of
    which any subset is valid), every map: an empty one would be a valid message.
    """
    missing = object()

    def replace(key: str, value: Any) -> dict[str, Any]:
        message = dict(valid)
        if value is missing:
            del message[key]
        else:
            message[key] = value
        return message

    def differs(pair: tuple[str, Any]) -> bool:
        key, value = pair
        if key in ("b_shares", "sk_shares") and isinstance(value, dict):
            return False
        original = valid[key]
        return not (type(value) is type(original) and value == original)

    pairs = [(key, value) for key, values in wrong.items() for value in values]
    random = st.tuples(st.sampled_from(sorted(wrong)), JSON).filter(differs)
    required = [(key, missing) for key in valid if key not in ("b_shares", "sk_shares")]
    return st.one_of(st.sampled_from(pairs + required), random).map(lambda p: replace(*p))


def with_extra_field(valid: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    keys = st.text(max_size=20).filter(lambda k: k not in valid)
    return st.builds(lambda k, v: {**valid, k: v}, keys, JSON)


def json_cases(
    valid: dict[str, Any], wrong: dict[str, list[Any]], *more: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    raw = st.binary(max_size=512).map(lambda data: ("raw", data))
    return st.one_of(JSON, raw, one_field_wrong(valid, wrong), with_extra_field(valid), *more)


def post_json(fuzzed: Fuzzed, path: str, case: Any) -> Any:
    if isinstance(case, tuple) and case and case[0] == "raw":
        headers = {"content-type": "application/json"}
        return fuzzed.client.post(path, content=case[1], headers=headers)
    return fuzzed.client.post(path, json=case)


HEAD = {"client_id": "c0", "round": 1, "attempt": 0}
HEAD_WRONG: dict[str, list[Any]] = {
    "client_id": ["zz", "", "a b", 7, None, "c" * 65],
    "round": WRONG_INTS,
    "attempt": [1, -1, 1.0, "0", True, None],
}


def test_keys_refuse_every_invalid_advertisement(fuzzed: Fuzzed) -> None:
    fuzzed.at("keys")
    keys = {"c_pk": b64(b"c" * 32), "s_pk": b64(b"s" * 32), "b_commit": b64(bytes(32))}
    valid = HEAD | keys
    same = st.just(HEAD | keys | {"s_pk": keys["c_pk"]})
    stranger = IDS_OR_STRANGERS.filter(lambda c: c not in IDS).map(
        lambda c: valid | {"client_id": c}
    )
    cases = json_cases(valid, HEAD_WRONG | dict.fromkeys(keys, WRONG_BYTES), same, stranger)

    @SETTINGS
    @given(case=cases)
    def check(case: Any) -> None:
        fuzzed.answer(post_json(fuzzed, "/secagg/keys", case))

    check()
    fuzzed.finish_exactly("POST /secagg/keys")


def test_shares_refuse_every_invalid_delivery(fuzzed: Fuzzed) -> None:
    fuzzed.at("shares")
    sealed = b64(bytes(SEALED_BYTES))
    neighbours = {c: sealed for c in IDS if c != "c0"}
    valid = HEAD | {"shares": neighbours}
    wrong_sealed = [b64(bytes(n)) for n in (0, 1, SEALED_BYTES - 1, SEALED_BYTES + 1)]
    receivers = st.lists(IDS_OR_STRANGERS, max_size=12, unique=True).filter(
        lambda r: set(r) != set(neighbours)
    )
    wrong_receivers = receivers.map(lambda r: valid | {"shares": dict.fromkeys(r, sealed)})
    bad_sealed = st.builds(
        lambda receiver, value: valid | {"shares": neighbours | {receiver: value}},
        st.sampled_from(sorted(neighbours)),
        st.sampled_from([*wrong_sealed, *WRONG_BYTES[2:]]),
    )
    wrong = HEAD_WRONG | {"shares": [[], None, "x", {"c1": sealed}]}
    cases = json_cases(valid, wrong, wrong_receivers, bad_sealed)

    @SETTINGS
    @given(case=cases)
    def check(case: Any) -> None:
        fuzzed.answer(post_json(fuzzed, "/secagg/shares", case))

    check()
    fuzzed.finish_exactly("POST /secagg/shares")


def test_unmask_refuses_every_invalid_reveal(fuzzed: Fuzzed) -> None:
    fuzzed.at("unmask")
    share = b64(bytes(SHARE_BYTES))
    valid = HEAD | {"b_shares": dict.fromkeys(IDS, share), "sk_shares": {}}
    big = b64(b"\xff" * SHARE_BYTES)  # past the field's prime
    wrong_share = [big, b64(bytes(SHARE_BYTES - 1)), b64(bytes(SHARE_BYTES + 1)), "", "%%", 3]
    owners = st.lists(IDS_OR_STRANGERS, max_size=12, unique=True)
    strangers = owners.filter(lambda o: not set(o) <= set(IDS)).map(
        lambda o: valid | {"b_shares": dict.fromkeys(o, share)}
    )
    sk_for_survivors = owners.filter(bool).map(
        lambda o: valid | {"sk_shares": dict.fromkeys(o, share)}
    )
    bad_value = st.builds(
        lambda owner, value: valid | {"b_shares": {owner: value}},
        st.sampled_from(IDS),
        st.sampled_from(wrong_share),
    )
    wrong = HEAD_WRONG | {"b_shares": [[], None, "x"], "sk_shares": [[], None, 5]}
    cases = json_cases(valid, wrong, strangers, sk_for_survivors, bad_value)

    @SETTINGS
    @given(case=cases)
    def check(case: Any) -> None:
        fuzzed.answer(post_json(fuzzed, "/secagg/unmask", case))

    check()
    fuzzed.finish_exactly("POST /secagg/unmask")


# ------------------------------------------------------------------ masked vectors


def _pack(message: Any) -> bytes:
    return bytes(msgpack.packb(message, use_bin_type=True))


def _masked(length: int, **fields: Any) -> dict[str, Any]:
    vector = np.zeros(length, np.uint32)
    message = HEAD | {
        "protocol": 1,
        "num_examples": 10,
        "masked": {"dtype": "uint32", "shape": [length], "data": vector.tobytes()},
    }
    return message | fields


def masked_cases(length: int) -> st.SearchStrategy[bytes]:
    valid = _masked(length)
    body = _pack(valid)
    tensor = valid["masked"]
    wrong_tensors = (
        [
            tensor | {"dtype": dtype}
            for dtype in ["float32", "int32", "uint64", "<u4 ", "object", "", "bool"]
        ]
        + [
            tensor | {"shape": shape}
            for shape in [[length - 1], [length + 1], [1, length], [], [2**40], [-length]]
        ]
        + [
            tensor | {"data": data}
            for data in [b"", tensor["data"][:-4], tensor["data"] + b"\x00" * 4, "text"]
        ]
        + [
            {
                "dtype": "uint32",
                "shape": [length],
                "data": np.full(length, MODULUS, "<u4").tobytes(),
            },
            None,
            [],
            b"\x00" * 16,
        ]
    )
    wrong: dict[str, list[Any]] = {
        "protocol": [0, 2, 3, "1", 1.0, None, True],
        "client_id": ["zz", "", 7, None, "a" * 100],
        "round": WRONG_INTS[:-1],  # msgpack carries no integer above 2^64 - 1
        "attempt": [1, -1, 1.0, None],
        "num_examples": [0, -1, 1.5, "10", 10**9 + 1, 2**64 - 1, None, True],
        "masked": wrong_tensors,
        "metrics": [{"x": "y"}, [1], "m", {"a": None}],
    }
    missing = object()
    pairs = [(k, v) for k, vs in wrong.items() for v in vs] + [(k, missing) for k in valid]

    def replace(key: str, value: Any) -> bytes:
        message = valid | {key: value}
        return _pack({k: v for k, v in message.items() if v is not missing})

    one_wrong = st.sampled_from(pairs).map(lambda pair: replace(*pair))
    truncated = st.floats(0, 1, exclude_max=True).map(lambda cut: body[: int(cut * len(body))])
    extra = (
        st.text(max_size=12).filter(lambda k: k not in valid).map(lambda k: _pack(valid | {k: 1}))
    )
    nested = st.integers(33, 5000).map(lambda depth: b"\x91" * depth + b"\x01")
    return st.one_of(st.binary(max_size=2048), truncated, one_wrong, extra, nested)


def test_masked_refuses_every_invalid_vector(fuzzed: Fuzzed) -> None:
    fuzzed.at("masked")
    cases = masked_cases(fuzzed.stepped.length)

    @SETTINGS
    @given(body=cases)
    def check(body: bytes) -> None:
        reply = fuzzed.client.post("/secagg/masked", content=body, headers=MSGPACK)
        fuzzed.answer(reply)

    check()
    fuzzed.finish_exactly("POST /secagg/masked")


# ------------------------------------------------------------------ queries

QUERY_VALUES = st.one_of(
    st.text(max_size=20), st.integers(-5, 5).map(str), st.sampled_from(["1", "0", "", "nan"])
)
QUERIES: st.SearchStrategy[dict[str, str]] = st.dictionaries(
    st.sampled_from(["client_id", "round", "attempt", "stage", "wait", "x"]),
    QUERY_VALUES,
    max_size=6,
)


def test_queries_answer_without_5xx_or_changes(fuzzed: Fuzzed) -> None:
    fuzzed.at("masked")
    get: Callable[..., Any] = fuzzed.client.get

    @SETTINGS
    @given(path=st.sampled_from(["/secagg/state", "/secagg/shares"]), params=QUERIES)
    def check(path: str, params: dict[str, str]) -> None:
        params = {k: v for k, v in params.items() if k != "wait"}  # never hold the poll
        reply = get(path, params=params)
        fuzzed.statuses[reply.status_code] += 1
        error = "(answered)"
        if reply.status_code != 200:
            error = assert_clean_error(reply, statuses=range(400, 500))["error"]
        fuzzed.errors[f"{path} {error}"] += 1
        assert fuzzed.snapshot() == fuzzed.before

    check()
    fuzzed.finish_exactly("GET /secagg/state, /secagg/shares")
