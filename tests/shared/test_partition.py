"""Tests for shared/partition: iid, shards, dirichlet and classes; the report and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, reject
from hypothesis import strategies as st

from shared.config import PartitionConfig
from shared.errors import ConfigError
from shared.partition import (
    client_indices,
    main,
    partition_report,
)
from tests.shared.partition_checks import (
    FAST,
    SEEDS,
    assert_exact_cover,
    check_common,
    label_arrays,
    partition,
)


@FAST
@given(data=st.data(), labels=label_arrays(), seed=SEEDS)
def test_iid_covers_everything_in_near_equal_parts(
    data: st.DataObject, labels: np.ndarray, seed: int
) -> None:
    num_partitions = data.draw(st.integers(1, min(len(labels), 25)))
    parts = check_common(labels, num_partitions, PartitionConfig(name="iid"), seed)
    assert_exact_cover(parts, len(labels))
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1


@FAST
@given(data=st.data(), labels=label_arrays(min_size=2), seed=SEEDS)
def test_shards_cover_everything_with_bounded_label_spread(
    data: st.DataObject, labels: np.ndarray, seed: int
) -> None:
    shards_per_client = data.draw(st.integers(1, min(3, len(labels))))
    num_partitions = data.draw(st.integers(1, len(labels) // shards_per_client))
    num_shards = num_partitions * shards_per_client
    config = PartitionConfig(name="shards", shards_per_client=shards_per_client)
    parts = check_common(labels, num_partitions, config, seed)
    assert_exact_cover(parts, len(labels))
    # Each client holds shards_per_client shards of floor or ceil(N / num_shards) examples.
    low, high = len(labels) // num_shards, -(-len(labels) // num_shards)
    for part in parts:
        assert shards_per_client * low <= len(part) <= shards_per_client * high
    # A shard is a run of the label-sorted examples, so it adds at most one label per
    # label boundary it crosses: there are num_classes - 1 boundaries in all.
    num_present = len(np.unique(labels))
    spread = [len(np.unique(labels[part])) for part in parts]
    assert sum(spread) <= num_shards + num_present - 1
    # A run no longer than the smallest class crosses at most one boundary.
    if np.bincount(labels)[np.unique(labels)].min() >= high:
        assert max(spread) <= 2 * shards_per_client


def test_shards_are_pure_when_classes_fill_whole_shards() -> None:
    labels = np.repeat(np.arange(5), 12)  # 60 examples, 5 classes of 12
    config = PartitionConfig(name="shards", shards_per_client=2)
    parts = partition(labels, 10, config, seed=3)  # 20 shards of 3: each one class
    for part in parts:
        assert len(part) == 6
        assert len(np.unique(labels[part])) <= 2


@FAST
@given(
    data=st.data(),
    labels=label_arrays(min_size=20),
    alpha=st.floats(0.1, 10.0),
    seed=SEEDS,
)
def test_dirichlet_covers_everything_and_fills_every_client(
    data: st.DataObject, labels: np.ndarray, alpha: float, seed: int
) -> None:
    num_partitions = data.draw(st.integers(1, 8))
    min_size = data.draw(st.integers(0, len(labels) // (2 * num_partitions)))
    balance = data.draw(st.booleans())
    config = PartitionConfig(name="dirichlet", alpha=alpha, min_size=min_size, balance=balance)
    try:
        parts = check_common(labels, num_partitions, config, seed)
    except ConfigError:  # rare: few classes, many clients and a small alpha
        reject()
    assert_exact_cover(parts, len(labels))
    assert min(len(part) for part in parts) >= min_size
    if balance:  # a client under n / P examples takes at most one more class; as in
        # NIID-Bench, the last client also takes each class's rounding remainder (< 1)
        bound = len(labels) / num_partitions + np.bincount(labels).max() + len(np.unique(labels))
        assert max(len(part) for part in parts) < bound


def test_dirichlet_min_size_defaults_to_ten_as_in_niid_bench() -> None:
    labels = np.repeat(np.arange(10), 30)  # 300 examples
    config = PartitionConfig(name="dirichlet", alpha=0.1)
    assert config.min_size == 10
    parts = partition(labels, 10, config, seed=0)
    assert min(len(part) for part in parts) >= 10
    assert_exact_cover(parts, len(labels))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    labels = np.repeat(np.arange(10), 500)

    def mean_labels_per_client(alpha: float) -> float:
        parts = partition(labels, 10, PartitionConfig(name="dirichlet", alpha=alpha), seed=0)
        # Count a label only if the client holds at least 5% of its examples.
        return float(np.mean([np.sum(np.bincount(labels[p], minlength=10) >= 25) for p in parts]))

    assert mean_labels_per_client(1000.0) == 10.0
    assert mean_labels_per_client(0.1) < 4.0


def test_dirichlet_balance_caps_the_biggest_client() -> None:
    labels = np.repeat(np.arange(20), 50)  # 1000 examples, classes of 50

    def biggest(balance: bool) -> int:
        config = PartitionConfig(name="dirichlet", alpha=0.1, balance=balance)
        return max(len(part) for part in partition(labels, 10, config, seed=3))

    assert biggest(balance=True) < 100 + 50  # n / P plus one class
    assert biggest(balance=False) > 150


def test_dirichlet_gives_up_with_a_clear_error() -> None:
    labels = np.zeros(200, dtype=np.int64)  # one class: nearly all of it goes to one client
    config = PartitionConfig(name="dirichlet", alpha=0.01)
    match = r"alpha=0\.01, the papers' beta\) of a dataset of 200 examples among N=10 clients"
    with pytest.raises(ConfigError, match=match + r".*min_size=10"):
        partition(labels, 10, config, seed=0)


def test_dirichlet_min_size_beyond_the_dataset_fails_before_drawing() -> None:
    config = PartitionConfig(name="dirichlet", min_size=10)
    with pytest.raises(ConfigError, match="50 examples are fewer than the 100 needed"):
        partition(np.arange(50) % 10, 10, config, seed=0)


@FAST
@given(data=st.data(), labels=label_arrays(), seed=SEEDS)
def test_classes_assign_listed_labels_once_and_split_shared_ones_evenly(
    data: st.DataObject, labels: np.ndarray, seed: int
) -> None:
    num_partitions = data.draw(st.integers(1, 6))
    subsets = st.lists(st.integers(0, 9), max_size=4, unique=True)
    classes = data.draw(st.lists(subsets, min_size=num_partitions, max_size=num_partitions))
    parts = check_common(
        labels, num_partitions, PartitionConfig(name="classes", classes=classes), seed
    )
    listed = {label for chosen in classes for label in chosen}
    in_listed = np.isin(labels, list(listed))
    merged = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(merged), np.flatnonzero(in_listed))
    for chosen, part in zip(classes, parts, strict=True):
        assert set(labels[part].tolist()) <= set(chosen)
    for label in listed:
        shares = [
            np.sum(labels[p] == label) for c, p in zip(classes, parts, strict=True) if label in c
        ]
        assert max(shares) - min(shares) <= 1


def test_classes_hand_computed() -> None:
    labels = np.array([2, 0, 1, 1, 0, 3])
    config = PartitionConfig(name="classes", classes=[[0, 2], [1]])
    parts = partition(labels, 2, config, seed=0)
    np.testing.assert_array_equal(parts[0], [0, 1, 4])  # the 2 and both 0s
    np.testing.assert_array_equal(parts[1], [2, 3])  # both 1s; the 3 is in no partition


def test_classes_shared_label_is_halved() -> None:
    labels = np.array([0, 1, 2, 0, 1, 2, 1, 1])  # four 1s at 1, 4, 6, 7
    config = PartitionConfig(name="classes", classes=[[0, 1], [2], [1]])
    first, second, third = partition(labels, 3, config, seed=4)
    np.testing.assert_array_equal(second, [2, 5])
    assert np.sum(labels[first] == 1) == 2
    assert np.sum(labels[third] == 1) == 2
    np.testing.assert_array_equal(np.sort(np.concatenate([first, third])), [0, 1, 3, 4, 6, 7])


@pytest.mark.parametrize("classes", [None, [[0], [1]]])
def test_classes_need_one_list_per_partition(classes: list[list[int]] | None) -> None:
    config = PartitionConfig(name="classes", classes=classes)
    with pytest.raises(ConfigError, match="expected 3 lists"):
        partition(np.arange(6), 3, config, seed=0)


@pytest.mark.parametrize("partition_id", [-1, 4])
def test_partition_id_out_of_range(partition_id: int) -> None:
    with pytest.raises(ConfigError, match=f"partition_id {partition_id} is out of range"):
        client_indices(
            np.arange(10),
            partition_id=partition_id,
            num_partitions=4,
            config=PartitionConfig(),
            seed=0,
        )


@pytest.mark.parametrize(
    ("labels", "num_partitions", "seed", "match"),
    [
        (np.arange(10), 0, 0, "num_partitions must be >= 1"),
        (np.arange(10), 2, -1, "seed must be >= 0"),
        (np.arange(3), 4, 0, "3 examples are fewer than the 4 needed"),
        (np.zeros((2, 2), dtype=np.int64), 1, 0, "1-d integer array"),
        (np.array([0.5, 1.0]), 1, 0, "1-d integer array"),
    ],
)
def test_bad_inputs_are_config_errors(
    labels: np.ndarray, num_partitions: int, seed: int, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        partition(labels, num_partitions, PartitionConfig(), seed)


def test_shards_need_enough_examples() -> None:
    config = PartitionConfig(name="shards", shards_per_client=2)
    with pytest.raises(ConfigError, match="fewer than the 10 needed"):
        partition(np.arange(9), 5, config, seed=0)


def test_partition_report_hand_computed() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2])
    report = partition_report(labels, [np.array([0, 1]), np.array([2, 3, 4, 5])], num_classes=3)
    assert report.splitlines() == [
        "client  examples  0  1  2",
        "     0         2  1  1  0",
        "     1         4  0  1  3",
        " total         6  1  2  3",
    ]


def test_partition_report_rejects_labels_beyond_num_classes() -> None:
    with pytest.raises(ConfigError, match=r"labels must lie in 0\.\.1"):
        partition_report(np.array([0, 2]), [np.array([0, 1])], num_classes=2)


def test_cli_prints_one_row_per_client(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--dataset", "synthetic", "--partition", "dirichlet", "--alpha", "0.3"]
    assert main([*argv, "--num-partitions", "4", "--seed", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("synthetic:")
    assert lines[1].split()[:2] == ["client", "examples"]
    assert [line.split()[0] for line in lines[2:]] == ["0", "1", "2", "3", "total"]
    assert lines[-1].split()[1] == "2000"


def test_cli_classes_option(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--dataset", "synthetic", "--partition", "classes", "--classes", "0,1;2"]
    assert main([*argv, "--num-partitions", "2"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert rows[0].split()[1:5] == ["400", "200", "200", "0"]
    assert rows[1].split()[1:5] == ["200", "0", "0", "200"]


def test_cli_reports_errors_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--dataset", "mnist", "--data-dir", str(tmp_path)]) == 2
    assert "--download" in capsys.readouterr().err
