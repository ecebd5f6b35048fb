"""The weighted mean of McMahan et al. 2017, folded in one update at a time.

FedAvg (https://arxiv.org/abs/1602.05629) counts each client's tensors in proportion to its
`num_examples`. `WeightedMean` folds updates one by one: `begin_round` allocates one float64
running sum per floating tensor, `accumulate` adds one update, `finalize` divides by the
total. Memory stays O(model size) however many updates come; no list of updates is kept.

Rules of the aggregate:

- Floating tensors: sum(w_i * n_i) / sum(n_i), computed in float64 (no float32
  intermediate) and cast back to the global model's dtype. An update may send any floating
  dtype for a floating tensor (e.g. float16 for a float32 model).
- Integer and bool tensors (BatchNorm's int64 ``num_batches_tracked``) are never averaged
  as floats: their aggregate is the element-wise maximum over the round's updates (for
  bool, a logical or). ``num_batches_tracked`` counts optimizer steps, so the maximum is
  the most-trained client's count.
- Delta updates (compression): an update of trained - global adds num_examples * global
  and then num_examples * delta to the sums; a compressed tensor map is added piece by
  piece, decoded into float64 (`shared.compression.accumulate_into`), with no float32
  copy of the tensor.

Updates are read, never written: they may be read-only views of journal files. Their
names, shapes and dtypes were checked once, when they were received
(`federation.ingest`); the fold only checks `num_examples`. The federation folds a round's
updates in client-id order, so the float64 sum, and the result, do not depend on the order
in which uploads arrived.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from aggregator_service.strategy.base import AggregationError
from shared.compression import accumulate_into, decode_tensor, is_compressed
from shared.wire import TensorSpec

__all__ = ["WeightedMean", "is_floating"]


_BLOCK = 1 << 16  # elements folded per step (512 KiB of float64 scratch)


class _Slot(NamedTuple):
    """One tensor of the global model and where its aggregate accumulates."""

    shape: tuple[int, ...]
    dtype: np.dtype[np.generic]
    floating: bool


class WeightedMean:
    """The num_examples-weighted mean of a round's updates, folded in one at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server_round: int | None = None
        self._open = False
        self._slots: dict[str, _Slot] = {}
        self._global: Mapping[str, np.ndarray] = {}  # what delta updates are relative to
        self._sums: dict[str, np.ndarray] = {}  # float64 running sums of w * n
        self._maxima: dict[str, np.ndarray] = {}  # integer/bool tensors: element-wise max
        self._scratch = np.empty(0, dtype=np.float64)  # reused for every w * n product
        self._num_updates = 0
        self._total_examples = 0

    @property
    def server_round(self) -> int | None:
        """The round begun last, or None before the first `begin_round`."""
        return self._server_round

    @property
    def num_updates(self) -> int:
        """Number of updates accumulated in the current round."""
        return self._num_updates

    @property
    def total_examples(self) -> int:
        """Sum of num_examples over the updates accumulated in the current round."""
        return self._total_examples

    def begin_round(self, server_round: int, global_weights: Mapping[str, np.ndarray]) -> None:
        """Start `server_round`: zero the sums and remember the model's names, shapes, dtypes."""
        slots = {
            name: _Slot(tuple(a.shape), a.dtype, is_floating(a.dtype))
            for name, a in global_weights.items()
        }
        largest = max((math.prod(s.shape) for s in slots.values() if s.floating), default=0)
        with self._lock:
            self._server_round = server_round
            self._slots = slots
            self._global = global_weights
            self._sums = self._zeroed_sums(slots)
            self._maxima = {}
            self._scratch = np.empty(min(largest, _BLOCK), dtype=np.float64)
            self._num_updates = 0
            self._total_examples = 0
            self._open = True

    def accumulate(self, weights: Mapping[str, np.ndarray], num_examples: int) -> None:
        """Fold one update into the running sums; its tensors are only read."""
        self._fold(weights, num_examples, delta=False)

    def accumulate_delta(self, deltas: Mapping[str, Any], num_examples: int) -> None:
        """Fold one update sent as checked raw tensor maps of trained - global."""
        self._fold(deltas, num_examples, delta=True)

    def _fold(self, update: Mapping[str, Any], num_examples: int, *, delta: bool) -> None:
        if not self._open:  # checked again under the lock; this gives the clearer error early
            raise AggregationError(self._closed_message("accumulate"))
        slots = self._slots
        _check_num_examples(num_examples)
        with self._lock:
            if not self._open:
                raise AggregationError(self._closed_message("accumulate"))
            if slots is not self._slots:
                raise AggregationError(
                    f"round {self._server_round} began while the update was being checked; "
                    "the update belongs to an earlier round"
                )
            for name, slot in slots.items():
                if delta:
                    self._fold_delta(name, update[name], slot, num_examples)
                elif slot.floating:
                    self._fold_floating(name, update[name], num_examples)
                else:
                    self._fold_integer(name, update[name], slot.dtype)
            self._num_updates += 1
            self._total_examples += int(num_examples)

    def finalize(self) -> dict[str, np.ndarray]:
        """Return the weighted mean (integer tensors: maximum) in the global model's dtypes."""
        with self._lock:
            if not self._open:
                raise AggregationError(self._closed_message("finalize"))
            if self._num_updates == 0:
                raise AggregationError(
                    f"round {self._server_round}: no update was accumulated; "
                    "wait for at least one accepted update before finalizing"
                )
            result: dict[str, np.ndarray] = {}
            for name, slot in self._slots.items():
                if slot.floating:  # popped: each sum is freed before the next one is cast
                    total = self._sums.pop(name)
                    np.divide(total, self._total_examples, out=total)
                    result[name] = total.astype(slot.dtype)
                else:
                    result[name] = self._maxima[name]
            self._open = False
            self._maxima = {}
            self._global = {}
            self._scratch = np.empty(0, dtype=np.float64)
            return result

    def _zeroed_sums(self, slots: Mapping[str, _Slot]) -> dict[str, np.ndarray]:
        """Return fresh float64 sums, written with zeros here.

        np.full, not np.zeros: otherwise the kernel would zero their pages one fault at a
        time inside the first update's fold, 170 ms for ResNet18 on the benchmark machine,
        with the fold's lock held and uploads waiting. Last round's sums are not kept for
        reuse: between rounds the aggregator holds no sums at all.
        """
        return {name: np.full(s.shape, 0.0) for name, s in slots.items() if s.floating}

    def _fold_floating(self, name: str, update: np.ndarray, num_examples: int) -> None:
        """Add update * num_examples to the tensor's float64 sum, block by block.

        Each block is cast into the float64 scratch, multiplied there and added to the sum:
        the scratch stays small (512 KiB) and in cache. The product of a float32 (or
        float16) weight and an integer below 2**29 is exact in float64, so the sum changes
        by exactly one rounding per element and update. One thread: the fold is bound by
        memory bandwidth, and a second thread cost more CPU than it saved time on two cores
        shared with the uploads (docs/benchmarks.md).
        """
        total = self._sums[name].reshape(-1)
        flat = update.reshape(-1)
        for start in range(0, flat.size, _BLOCK):
            stop = min(start + _BLOCK, flat.size)
            scratch = self._scratch[: stop - start]
            np.copyto(scratch, flat[start:stop])
            np.multiply(scratch, num_examples, out=scratch)
            np.add(total[start:stop], scratch, out=total[start:stop])

    def _fold_delta(self, name: str, raw: Any, slot: _Slot, num_examples: int) -> None:
        """Add num_examples * (global + delta) of one raw tensor map to the tensor's sum."""
        expected = TensorSpec(slot.shape, slot.dtype.name)
        if not slot.floating:  # integer and bool tensors travel as their values
            self._fold_integer(name, decode_tensor(name, raw, expected), slot.dtype)
            return
        self._fold_floating(name, self._global[name], num_examples)
        if is_compressed(raw):
            accumulate_into(self._sums[name], raw, num_examples, name=name)
        else:
            self._fold_floating(name, decode_tensor(name, raw, expected), num_examples)

    def _fold_integer(self, name: str, update: np.ndarray, dtype: np.dtype[np.generic]) -> None:
        current = self._maxima.get(name)
        if current is None:
            self._maxima[name] = np.array(update, dtype=dtype, copy=True)
        else:
            np.maximum(current, update, out=current, dtype=dtype)

    def _closed_message(self, action: str) -> str:
        if self._server_round is None:
            return f"cannot {action}: no round has begun; call begin_round first"
        return f"cannot {action}: round {self._server_round} is already finalized"


def is_floating(dtype: np.dtype[np.generic]) -> bool:
    """Whether tensors of `dtype` are averaged (floats) or take the maximum (ints, bools)."""
    return bool(np.issubdtype(dtype, np.floating))


def _check_num_examples(num_examples: int) -> None:
    if not isinstance(num_examples, int | np.integer) or isinstance(num_examples, bool):
        raise AggregationError(f"num_examples must be an int, got {num_examples!r}")
    if num_examples <= 0:
        raise AggregationError(f"num_examples must be positive, got {num_examples}")
