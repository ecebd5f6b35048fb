"""Noise-based feature skew: client i's inputs get Gaussian noise of std sigma * i / (N - 1).

Li et al. 2022 (arXiv:2102.02079). Client 0 is clean, client N - 1 the
noisiest. The partition itself is iid; each worker adds the noise to its own images.
"""

from __future__ import annotations

import numpy as np

from shared.errors import ConfigError

__all__ = ["noise_for_client", "noise_std"]

_NOISE_STREAM = 7  # apart from the partitioners' streams (shared/partition/core.py)


def noise_std(*, client: int, num_clients: int, sigma: float) -> float:
    """Return client `client`'s noise std: sigma * client / (num_clients - 1); 0 if alone."""
    if not 0 <= client < num_clients:
        raise ConfigError(
            f"client {client} is out of range: expected 0 to {num_clients - 1} "
            f"for num_clients={num_clients}"
        )
    if sigma < 0:
        raise ConfigError(f"sigma must be >= 0, got {sigma}")
    return 0.0 if num_clients == 1 else sigma * client / (num_clients - 1)


def noise_for_client(
    images: np.ndarray, *, client: int, num_clients: int, sigma: float, seed: int
) -> np.ndarray:
    """Return a float32 copy of `images` plus client `client`'s Gaussian noise.

    The noise depends only on (seed, client) and the images' shape, so a client that
    reloads its partition gets the same noisy images; `images` is not modified.
    """
    std = noise_std(client=client, num_clients=num_clients, sigma=sigma)
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    noisy = np.array(images, dtype=np.float32)  # a copy, also of read-only views
    if std > 0:
        rng = np.random.default_rng([seed, client, _NOISE_STREAM])
        noisy += np.float32(std) * rng.standard_normal(noisy.shape, dtype=np.float32)
    return noisy
