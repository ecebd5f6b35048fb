"""Tests for the NIID-Bench partitions: labels_per_client, quantity and feature_noise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, reject
from hypothesis import strategies as st

from shared.config import PartitionConfig, load_config
from shared.errors import ConfigError
from shared.partition import main, noise_for_client, noise_std
from tests.shared.partition_checks import (
    FAST,
    SEEDS,
    assert_exact_cover,
    check_common,
    label_arrays,
    partition,
)


@st.composite
def full_classes(draw: st.DrawFn, num_partitions: int) -> np.ndarray:
    """Shuffled labels 0..C-1, each with at least num_partitions examples."""
    sizes = draw(st.lists(st.integers(num_partitions, num_partitions + 20), min_size=1, max_size=8))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return np.random.default_rng(draw(SEEDS)).permutation(labels)


@FAST
@given(data=st.data(), seed=SEEDS)
def test_labels_per_client_holds_k_labels_with_its_own_and_splits_them_evenly(
    data: st.DataObject, seed: int
) -> None:
    num_partitions = data.draw(st.integers(1, 12))
    labels = data.draw(full_classes(num_partitions))
    num_classes = int(labels.max()) + 1
    k = data.draw(st.integers(1, num_classes))
    config = PartitionConfig(name="labels_per_client", k=k)
    parts = check_common(labels, num_partitions, config, seed)
    held = [set(np.unique(labels[part]).tolist()) for part in parts]
    for client, labels_held in enumerate(held):
        assert len(labels_held) == k
        assert client % num_classes in labels_held
    # Exactly the examples of held labels are assigned, each label evenly among its holders.
    any_held = set().union(*held)
    np.testing.assert_array_equal(
        np.sort(np.concatenate(parts)), np.flatnonzero(np.isin(labels, list(any_held)))
    )
    for label in any_held:
        shares = [
            np.sum(labels[p] == label) for p, h in zip(parts, held, strict=True) if label in h
        ]
        assert sum(shares) == np.sum(labels == label)
        assert max(shares) - min(shares) <= 1


def test_labels_per_client_one_label_each_is_hand_computable() -> None:
    labels = np.repeat(np.arange(3), [4, 5, 6])
    parts = partition(labels, 6, PartitionConfig(name="labels_per_client", k=1), seed=0)
    # Clients 0 and 3 share label 0, 1 and 4 label 1, 2 and 5 label 2; the first holder
    # takes the odd example.
    assert [len(part) for part in parts] == [2, 3, 3, 2, 2, 3]
    for client, part in enumerate(parts):
        assert set(labels[part].tolist()) == {client % 3}
    assert_exact_cover(parts, len(labels))


def test_labels_per_client_k_equal_to_classes_is_a_per_label_even_split() -> None:
    labels = np.repeat(np.arange(4), 12)
    parts = partition(labels, 3, PartitionConfig(name="labels_per_client", k=4), seed=5)
    for part in parts:
        np.testing.assert_array_equal(np.bincount(labels[part]), [4, 4, 4, 4])
    assert_exact_cover(parts, len(labels))


def test_labels_per_client_refuses_more_labels_than_classes() -> None:
    config = PartitionConfig(name="labels_per_client", k=4)
    with pytest.raises(ConfigError, match="k=4, 3 classes"):
        partition(np.arange(30) % 3, 5, config, seed=0)


@FAST
@given(data=st.data(), labels=label_arrays(min_size=20), alpha=st.floats(0.1, 10.0), seed=SEEDS)
def test_quantity_covers_everything_with_sizes_at_least_min_size(
    data: st.DataObject, labels: np.ndarray, alpha: float, seed: int
) -> None:
    num_partitions = data.draw(st.integers(1, 8))
    min_size = data.draw(st.integers(0, len(labels) // (2 * num_partitions)))
    config = PartitionConfig(name="quantity", alpha=alpha, min_size=min_size)
    try:
        parts = check_common(labels, num_partitions, config, seed)
    except ConfigError:  # rare: many clients, few examples and a small alpha
        reject()
    assert_exact_cover(parts, len(labels))  # so the sizes sum to n
    assert min(len(part) for part in parts) >= min_size


def test_quantity_sizes_are_skewed_but_labels_are_not() -> None:
    labels = np.repeat(np.arange(10), 500)
    parts = partition(labels, 10, PartitionConfig(name="quantity", alpha=0.5), seed=1)
    sizes = np.array([len(part) for part in parts])
    assert sizes.max() > 3 * sizes.min()
    for part in parts:
        if len(part) >= 500:  # big enough for the label mix to be close to uniform
            shares = np.bincount(labels[part], minlength=10) / len(part)
            assert np.all(np.abs(shares - 0.1) < 0.05)


def test_quantity_gives_up_with_a_clear_error() -> None:
    config = PartitionConfig(name="quantity", alpha=0.01, min_size=10)
    match = r"alpha=0\.01, the papers' beta\) of a dataset of 100 examples among N=10 clients"
    with pytest.raises(ConfigError, match=match):
        partition(np.zeros(100, dtype=np.int64), 10, config, seed=0)


def test_feature_noise_moves_no_example_from_its_iid_partition() -> None:
    labels = np.arange(97) % 7
    noisy = partition(labels, 5, PartitionConfig(name="feature_noise", sigma=0.3), seed=4)
    iid = partition(labels, 5, PartitionConfig(name="iid"), seed=4)
    for a, b in zip(noisy, iid, strict=True):
        np.testing.assert_array_equal(a, b)


@FAST
@given(
    num_clients=st.integers(1, 20),
    sigma=st.floats(0.0, 5.0),
    data=st.data(),
)
def test_noise_std_grows_linearly_from_zero(
    num_clients: int, sigma: float, data: st.DataObject
) -> None:
    stds = [noise_std(client=i, num_clients=num_clients, sigma=sigma) for i in range(num_clients)]
    assert stds[0] == 0.0
    if num_clients > 1:
        assert stds[-1] == pytest.approx(sigma)
        np.testing.assert_allclose(np.diff(stds), sigma / (num_clients - 1), atol=1e-12)
    client = data.draw(st.integers(0, num_clients - 1))
    images = np.ones((3, 1, 2, 2), dtype=np.float32)
    again = noise_for_client(images, client=client, num_clients=num_clients, sigma=sigma, seed=2)
    noisy = noise_for_client(images, client=client, num_clients=num_clients, sigma=sigma, seed=2)
    np.testing.assert_array_equal(noisy, again)  # same seed, same noise
    np.testing.assert_array_equal(images, 1.0)  # the input is left alone
    if client == 0:
        np.testing.assert_array_equal(noisy, images)


@pytest.mark.parametrize("client", [1, 2, 4])
def test_noise_has_the_std_of_its_client(client: int) -> None:
    images = np.full((200, 1, 10, 10), 0.5, dtype=np.float32)
    noisy = noise_for_client(images, client=client, num_clients=5, sigma=0.8, seed=7)
    assert noisy.dtype == np.float32
    assert float(np.mean(noisy - images)) == pytest.approx(0.0, abs=0.01)
    assert float(np.std(noisy - images)) == pytest.approx(0.8 * client / 4, rel=0.03)


def test_noise_differs_between_clients_and_seeds() -> None:
    images = np.zeros((4, 1, 3, 3), dtype=np.float32)
    base = noise_for_client(images, client=1, num_clients=3, sigma=1.0, seed=0)
    for client, seed in [(2, 0), (1, 1)]:
        other = noise_for_client(images, client=client, num_clients=3, sigma=1.0, seed=seed)
        assert not np.allclose(base, other)


def test_noise_refuses_a_client_out_of_range() -> None:
    with pytest.raises(ConfigError, match="client 3 is out of range"):
        noise_for_client(np.zeros((1, 1, 1, 1)), client=3, num_clients=3, sigma=1.0, seed=0)


def test_existing_configs_and_overrides_still_load() -> None:
    config = load_config(None, {"partition": {"name": "dirichlet", "alpha": 0.5}})
    assert (config.partition.alpha, config.partition.min_size) == (0.5, 10)
    config = load_config(None, {"partition": {"alpha": 0.3}})  # --set partition.alpha=0.3
    assert (config.partition.name, config.partition.alpha) == ("iid", 0.3)
    partition_section = {"name": "labels_per_client", "k": 3}
    assert load_config(None, {"partition": partition_section}).partition.k == 3
    with pytest.raises(ConfigError, match=r"partition\.k"):
        load_config(None, {"partition": {"name": "labels_per_client", "k": 0}})
    with pytest.raises(ConfigError, match=r"partition\.name"):
        load_config(None, {"partition": {"name": "label_skew"}})


@pytest.mark.parametrize(
    ("options", "first_row"),
    [
        (["--partition", "labels_per_client", "--k", "1"], ["0", "200", "200", "0"]),
        (["--partition", "quantity", "--alpha", "100"], None),
        (["--partition", "feature_noise", "--sigma", "0.3"], ["0", "500"]),
    ],
)
def test_cli_prints_the_new_partitions(
    options: list[str], first_row: list[str] | None, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--dataset", "synthetic", "--num-partitions", "4", *options]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["client", "examples"]
    assert [line.split()[0] for line in lines[2:7]] == ["0", "1", "2", "3", "total"]
    if first_row is not None:
        assert lines[2].split()[: len(first_row)] == first_row
    if "feature_noise" in options:
        assert lines[-1] == "noise std per client: 0 0.1 0.2 0.3"
