"""Schema-driven testing of every endpoint in the app's OpenAPI document (schemathesis).

schemathesis generates requests from /openapi.json (valid ones and, in negative mode,
ones that break the schema), sends them to the app in-process over ASGI (it runs the
app's lifespan itself) and checks every answer: never a 5xx, and status code, content
type, headers and body as the schema documents them. /receive bodies are msgpack: a
serializer below packs the generated maps. Long polls are capped at 0 s so that a
generated `wait` cannot hold a request.
"""

from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from aggregator_service.api.app import create_app
from aggregator_service.settings import AggregatorSettings
from tests.aggregator_service.helpers import experiment

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is not installed (pip install schemathesis)"
)
GenerationMode = schemathesis.GenerationMode
_openapi_checks = importlib.import_module("schemathesis.specs.openapi.checks")
# What the service promises: never a 5xx, and answers as the schema documents them. The
# request-side checks (is a schema-valid request accepted, an invalid one refused) and the
# auth checks are left out: auth is off here (no tokens file), while the schema documents
# the Authorization header that the deployed service requires.
RESPONSE_CHECKS = [
    schemathesis.checks.not_a_server_error,
    _openapi_checks.status_code_conformance,
    _openapi_checks.content_type_conformance,
    _openapi_checks.response_headers_conformance,
    _openapi_checks.response_schema_conformance,
]


INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1  # the integers msgpack can carry


def to_msgpack(ctx: Any, value: Any) -> bytes:
    """Pack a generated /receive body as the service expects it."""
    del ctx
    return bytes(msgpack.packb(clamp_ints(value), use_bin_type=True))


schemathesis.serializer("application/msgpack")(to_msgpack)


def clamp_ints(value: Any) -> Any:
    """Replace integers msgpack cannot carry by the nearest one it can."""
    if isinstance(value, dict):
        return {key: clamp_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [clamp_ints(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return min(max(value, INT64_MIN), UINT64_MAX)
    return value


MAX_EXAMPLES = 25  # per operation and generation mode


def test_every_endpoint_conforms_to_its_schema(tmp_path: Path) -> None:
    app_settings = AggregatorSettings(
        state_dir=tmp_path / "state", long_poll_max_s=0.0, receive_rate=0, max_body_bytes=1 << 20
    )
    app = create_app(app_settings, experiment(min_fit_clients=1, min_available_clients=1))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    tried: Counter[str] = Counter()
    answered: Counter[int] = Counter()
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                label = f"{operation.label} ({mode.value})"
                try:
                    exercise(operation, mode, tried, answered, label)
                except Unsatisfiable:  # nothing to break: an operation without parameters
                    assert mode == GenerationMode.NEGATIVE, label
                except (Exception, BaseExceptionGroup) as exc:  # report every operation's
                    failures.append(f"{label}: {describe(exc)}")
    finally:
        schemathesis.python.asgi.shutdown_lifespans()
    print(f"\nschemathesis: {sum(tried.values())} requests; {dict(sorted(tried.items()))}")
    print(f"schemathesis: by status {dict(sorted(answered.items()))}")
    assert not failures, "\n\n".join(failures)


def describe(exc: BaseException) -> str:
    """Return the message of an error and of every error grouped inside it."""
    if isinstance(exc, BaseExceptionGroup):
        return "\n".join(describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def exercise(
    operation: Any, mode: Any, tried: Counter[str], answered: Counter[int], label: str
) -> None:
    """Send generated cases for one operation and validate every answer."""

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        tried[label] += 1
        response = case.call()
        answered[response.status_code] += 1
        case.validate_response(response, checks=RESPONSE_CHECKS)

    check()
