"""Tests of the centralized baseline on a small synthetic dataset."""

from __future__ import annotations

import pytest

from client_worker.centralized import main, run_centralized
from client_worker.train import TrainConfig
from shared.config import SyntheticConfig
from shared.data import load_dataset


def test_run_centralized_learns_and_reports_each_epoch() -> None:
    synthetic = SyntheticConfig(
        channels=1, image_size=4, num_classes=3, train_size=300, test_size=150
    )
    dataset = load_dataset("synthetic", seed=0, synthetic=synthetic)
    seen: list[int] = []
    reports = run_centralized(
        dataset,
        model_name="mlp",
        epochs=3,
        config=TrainConfig(1, 16, lr=0.05),
        seed=0,
        report=lambda r: seen.append(r.epoch),
    )
    assert seen == [1, 2, 3]
    assert [r.test.num_examples for r in reports] == [150, 150, 150]
    assert reports[-1].test.accuracy > 0.6  # chance is 1/3
    assert reports[-1].train_loss < reports[0].train_loss
    again = run_centralized(dataset, model_name="mlp", epochs=3, config=TrainConfig(1, 16, 0.05))
    assert [r.test.loss for r in again] == [r.test.loss for r in reports]  # seeded


def test_main_prints_one_line_per_epoch_and_a_final_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--dataset", "synthetic", "--model", "mlp", "--epochs", "2", "--batch-size", "64"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4  # header, two epochs, final
    assert lines[1].startswith("epoch 1: train loss ")
    assert lines[2].startswith("epoch 2: ")
    assert lines[3].startswith("final: mlp synthetic test accuracy ")
