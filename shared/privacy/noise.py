"""DP-FedAvg's noise arithmetic shared by the aggregator and the config checks (numpy-free)."""

from __future__ import annotations

from shared.errors import ConfigError

__all__ = ["update_noise_multiplier"]


def update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """Return z_delta = (z**-2 - (2 sigma_b)**-2)**-1/2 (Andrew et al. 2021, section 3.1).

    The update's noise then leaves room for the clipped-count noise sigma_b so that the two
    together are one Gaussian mechanism of multiplier z. Refused when 2 sigma_b <= z.
    """
    if noise_multiplier == 0:
        return 0.0
    rest = noise_multiplier**-2 - (2 * count_stddev) ** -2
    if rest <= 0:
        raise ConfigError(
            f"adaptive clipping needs 2 * clipped_count_stddev ({2 * count_stddev:g}) above "
            f"noise_multiplier ({noise_multiplier:g}): the clipped-count noise alone would "
            "spend the whole privacy budget of a round; raise clipped_count_stddev"
        )
    return float(rest**-0.5)
