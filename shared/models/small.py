"""Small models of the federated-learning literature, written out layer by layer."""

from __future__ import annotations

from torch import nn

from shared.errors import ModelError

__all__ = ["mlp", "mlp_128", "mnist_cnn", "simple_cnn", "simple_cnn_bn"]


def mlp(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Return McMahan et al.'s "2NN": two hidden layers of 200 units."""
    # McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
    # Decentralized Data" (https://arxiv.org/abs/1602.05629), the "2NN": two hidden layers
    # of 200 units with ReLU; 199,210 parameters on MNIST.
    in_features = in_channels * image_size * image_size
    return nn.Sequential(
        nn.Flatten(),  # (B, C, H, W) -> (B, C*H*W)
        nn.Linear(in_features, 200),
        nn.ReLU(),
        nn.Linear(200, 200),
        nn.ReLU(),
        nn.Linear(200, num_classes),
    )


def mlp_128(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Return the Keras beginner tutorial's MLP: one hidden layer of 128 units."""
    # The Keras/TensorFlow beginner tutorial MLP: one hidden layer of 128 units, dropout 0.2.
    in_features = in_channels * image_size * image_size
    return nn.Sequential(
        nn.Flatten(),  # (B, C, H, W) -> (B, C*H*W)
        nn.Linear(in_features, 128),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(128, num_classes),
    )


def mnist_cnn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Return McMahan et al.'s "CNN": two 5x5 convs of 32 and 64 channels, a 512-unit layer."""
    # McMahan et al. 2017 (https://arxiv.org/abs/1602.05629), the "CNN": two 5x5 conv layers
    # (32 and 64 channels) each followed by 2x2 max-pooling, a 512-unit dense layer, softmax.
    # Padding 2 keeps each conv "same"-sized, so only the pools shrink the image.
    side = image_size // 2 // 2
    if side < 1:
        raise ModelError(f"model 'cnn' needs image_size >= 4, got {image_size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),  # (B, 32, S, S)
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 32, S/2, S/2)
        nn.Conv2d(32, 64, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 64, S/4, S/4)
        nn.Flatten(),
        nn.Linear(64 * side * side, 512),
        nn.ReLU(),
        nn.Linear(512, num_classes),
    )


def simple_cnn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Return the "simple CNN" of the non-IID benchmarks: LeNet-5's layout with ReLU."""
    # Li et al. 2022, "Federated Learning on Non-IID Data Silos: An Experimental Study"
    # (NIID-Bench, https://arxiv.org/abs/2102.02079): conv 6@5x5, max-pool 2, conv 16@5x5,
    # max-pool 2, then fully connected 120, 84 and the classes. The convs are unpadded
    # ("valid"), so a 32x32 image leaves 16x5x5 features and a 28x28 one 16x4x4.
    return _simple_cnn("simple-cnn", in_channels, num_classes, image_size, batch_norm=False)


def simple_cnn_bn(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Return the simple CNN with BatchNorm after each conv and hidden layer (for FedBN)."""
    # Li et al. 2021, "FedBN" (https://arxiv.org/abs/2102.07623), normalise after every
    # conv and hidden fully connected layer of their digit models; this is the same
    # placement on the simple CNN, so FedBN and FedAvg can be compared on a small model.
    return _simple_cnn("simple-cnn-bn", in_channels, num_classes, image_size, batch_norm=True)


def _simple_cnn(
    name: str, in_channels: int, num_classes: int, image_size: int, *, batch_norm: bool
) -> nn.Module:
    """Return the simple CNN, with BatchNorm layers when `batch_norm`."""
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        raise ModelError(f"model {name!r} needs image_size >= 16, got {image_size}")

    def norm(kind: type[nn.BatchNorm1d | nn.BatchNorm2d], width: int) -> list[nn.Module]:
        return [kind(width)] if batch_norm else []

    return nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5),  # (B, 6, S-4, S-4)
        *norm(nn.BatchNorm2d, 6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5),
        *norm(nn.BatchNorm2d, 16),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 16, side, side)
        nn.Flatten(),
        nn.Linear(16 * side * side, 120),
        *norm(nn.BatchNorm1d, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        *norm(nn.BatchNorm1d, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )
