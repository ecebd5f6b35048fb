"""The update header's fields: tensor groups only with protocol 2, named and bounded."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shared.schemas import UpdateHeader
from shared.wire import MAX_GROUPS

BASE: dict[str, Any] = {"client_id": "7", "round": 1, "num_examples": 10, "weights": {}}


def test_version_1_header_without_groups_is_unchanged() -> None:
    header = UpdateHeader.model_validate({"protocol": 1, **BASE})
    assert header.groups == {}
    assert "groups" not in header.model_fields_set


def test_version_2_header_carries_groups() -> None:
    groups = {"c_delta": {"fc.weight": {"dtype": "float32", "shape": [], "data": b"\0" * 4}}}
    header = UpdateHeader.model_validate({"protocol": 2, **BASE, "groups": groups})
    assert header.groups == groups
    assert UpdateHeader.model_validate({"protocol": 2, **BASE}).groups == {}


@pytest.mark.parametrize("groups", [{}, {"c": {}}])
def test_groups_need_protocol_2(groups: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="groups are allowed only with protocol 2"):
        UpdateHeader.model_validate({"protocol": 1, **BASE, "groups": groups})


@pytest.mark.parametrize(
    "groups",
    [
        {"C": {}},
        {"_c": {}},
        {"c" * 33: {}},
        {f"g{i}": {} for i in range(MAX_GROUPS + 1)},
        {"c": []},
        [],
    ],
)
def test_bad_groups_are_refused(groups: Any) -> None:
    with pytest.raises(ValidationError, match="groups"):
        UpdateHeader.model_validate({"protocol": 2, **BASE, "groups": groups})


def test_other_keys_stay_forbidden() -> None:
    with pytest.raises(ValidationError, match="extra"):
        UpdateHeader.model_validate({"protocol": 2, **BASE, "group": {}})
