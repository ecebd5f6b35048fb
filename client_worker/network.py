"""Simulated conditions for one worker: latency, jitter, bandwidth, dropout, crash, slowdown.

Everything is off by default. The experiment config's ``network`` list holds profiles; the
first whose ``clients`` selector ("all", "7-9", "0,2,5", "0,3-5") contains this client's
partition id applies. Randomness is seeded per worker and per purpose, so the dropout and
crash decisions of round r are the same however many requests came before. A `slowdown`
of s simulates a slower device: after a training that took t seconds, the client waits
(s - 1) * t more before it posts. Delays go through an injectable `sleep`, by default an
`Event.wait` that a stop request interrupts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

from shared.config import ExperimentConfig, NetworkProfile
from shared.errors import ConfigError

__all__ = [
    "NetworkSimulator",
    "Sleep",
    "event_sleep",
    "parse_clients",
    "select_profile",
    "slowed_clients",
]

Sleep = Callable[[float], object]

# Independent random streams, one per purpose (the last entry of the seed sequence).
_LATENCY_STREAM, _ROUND_STREAM = 0, 1
# A simulated crash keeps the client away this long (seconds, uniform) before it rejoins.
REJOIN_DELAY_S = (1.0, 5.0)


def event_sleep(stop: threading.Event | None = None) -> Sleep:
    """Return a sleep function that returns early once `stop` is set."""
    event = stop if stop is not None else threading.Event()
    return event.wait


def parse_clients(selector: str, *, section: str = "network") -> frozenset[int] | None:
    """Parse a clients selector into a set of partition ids; None means all clients."""
    text = selector.strip()
    if text == "all":
        return None
    ids: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first, last = (int(low), int(high)) if dash else (int(low), int(low))
        except ValueError:
            raise ConfigError(
                f"{section} clients selector {selector!r}: {part.strip()!r} is not an id or "
                "a range like 7-9"
            ) from None
        if first < 0 or last < first:
            raise ConfigError(f"{section} clients selector {selector!r}: bad range {part!r}")
        ids.update(range(first, last + 1))
    return frozenset(ids)


def select_profile(profiles: Sequence[NetworkProfile], client_index: int) -> NetworkProfile:
    """Return the first profile whose selector contains `client_index`, else all-off."""
    for profile in profiles:
        ids = parse_clients(profile.clients)
        if ids is None or client_index in ids:
            return profile
    return NetworkProfile()


def slowed_clients(profiles: Sequence[NetworkProfile], client_indices: Sequence[int]) -> int:
    """Count the clients among `client_indices` whose profile slows their training down."""
    return sum(select_profile(profiles, index).slowdown > 1.0 for index in client_indices)


class NetworkSimulator:
    """Adds one client's simulated delays and decides its dropped and crashed rounds."""

    def __init__(
        self,
        profile: NetworkProfile | None = None,
        *,
        seed: int = 0,
        client_index: int = 0,
        sleep: Sleep | None = None,
    ) -> None:
        self.profile = profile if profile is not None else NetworkProfile()
        self.seed = seed
        self.client_index = client_index
        self._sleep = sleep if sleep is not None else event_sleep()
        self._latency_rng = np.random.default_rng([seed, client_index, _LATENCY_STREAM])
        self._lock = threading.Lock()  # one simulator may serve requests from two threads
        self.total_delay_s = 0.0

    @classmethod
    def from_config(
        cls, config: ExperimentConfig, *, client_index: int, seed: int, sleep: Sleep | None = None
    ) -> NetworkSimulator:
        """Build the simulator for `client_index` from the config's network profiles."""
        profile = select_profile(config.network, client_index)
        return cls(profile, seed=seed, client_index=client_index, sleep=sleep)

    # ---------------------------------------------------------------- delays

    def latency_s(self) -> float:
        """Draw the delay before one request: latency_ms plus jitter, in seconds."""
        profile = self.profile
        jitter_ms = 0.0
        if profile.jitter != "none" and profile.jitter_ms > 0:
            with self._lock:
                if profile.jitter == "exponential":
                    jitter_ms = float(self._latency_rng.exponential(profile.jitter_ms))
                else:
                    jitter_ms = abs(float(self._latency_rng.normal(0.0, profile.jitter_ms)))
        return (profile.latency_ms + jitter_ms) / 1000.0

    def transfer_s(self, nbytes: int) -> float:
        """Return the time `nbytes` take at the bandwidth cap (0 when uncapped)."""
        rate = self.profile.bandwidth_mbit
        return 0.0 if rate is None else nbytes * 8 / (rate * 1e6)

    def before_request(self) -> float:
        """Sleep the latency of one request and return it."""
        return self._wait(self.latency_s())

    def after_transfer(self, nbytes: int) -> float:
        """Sleep the bandwidth-limited transfer time of `nbytes` and return it."""
        return self._wait(self.transfer_s(nbytes))

    def slowdown_s(self, train_seconds: float) -> float:
        """Return the extra time a training of `train_seconds` takes at the profile's slowdown."""
        return (self.profile.slowdown - 1.0) * max(train_seconds, 0.0)

    def slow_down(self, train_seconds: float) -> float:
        """Sleep the extra time of a training that took `train_seconds`; return it."""
        return self._wait(self.slowdown_s(train_seconds))

    def _wait(self, seconds: float) -> float:
        if seconds > 0:
            self.total_delay_s += seconds
            self._sleep(seconds)
        return seconds

    # ---------------------------------------------------------------- failures

    def drops_round(self, server_round: int) -> bool:
        """Tell whether this client skips round `server_round` (dropout)."""
        p = self.profile.dropout
        return p > 0 and bool(self._round_rng(server_round, 0).random() < p)

    def crash_point(self, server_round: int, num_batches: int) -> int | None:
        """Return after how many batches training crashes in this round, or None."""
        p = self.profile.crash
        rng = self._round_rng(server_round, 1)
        if p <= 0 or rng.random() >= p:
            return None
        return int(rng.integers(0, max(num_batches, 1)))

    def rejoin_delay_s(self, server_round: int) -> float:
        """Return how long a crashed client stays away before polling again."""
        low, high = REJOIN_DELAY_S
        return float(self._round_rng(server_round, 2).uniform(low, high))

    def rejoin(self, server_round: int) -> float:
        """Sleep the rejoin delay after a simulated crash in `server_round`; return it."""
        return self._wait(self.rejoin_delay_s(server_round))

    def _round_rng(self, server_round: int, purpose: int) -> np.random.Generator:
        return np.random.default_rng(
            [self.seed, self.client_index, _ROUND_STREAM, server_round, purpose]
        )

    # ---------------------------------------------------------------- reporting

    @property
    def enabled(self) -> bool:
        """Tell whether any simulated condition is on."""
        p = self.profile
        return bool(
            p.latency_ms
            or (p.jitter != "none" and p.jitter_ms)
            or p.bandwidth_mbit is not None
            or p.dropout
            or p.crash
            or p.slowdown != 1.0
        )

    def describe(self) -> str:
        """Return a one-line description for the log."""
        if not self.enabled:
            return "network simulation off"
        p = self.profile
        parts = [f"profile clients={p.clients!r}", f"latency {p.latency_ms:g} ms"]
        if p.jitter != "none":
            parts.append(f"{p.jitter} jitter {p.jitter_ms:g} ms")
        if p.bandwidth_mbit is not None:
            parts.append(f"bandwidth {p.bandwidth_mbit:g} Mbit/s")
        parts.append(f"dropout {p.dropout:g}")
        parts.append(f"crash {p.crash:g}")
        if p.slowdown != 1.0:
            parts.append(f"training slowed down {p.slowdown:g}x")
        return "network simulation: " + ", ".join(parts)
