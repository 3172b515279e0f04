"""Bootstrap intervals over test images for task-averaged accuracies and their differences.

A setup's average accuracy is `A = (1/T) sum_t acc_t`, with `acc_t = 100 * mean_i c_t[i]` over the
`n_t` test images of task t (`c_t[i]` is 1 when image i is classified correctly). The
percentile bootstrap draws, `resamples` times and independently per task, `n_t` image indices
with replacement, recomputes `A` on them, and takes the `(1 - level) / 2` and `(1 + level) / 2`
quantiles of the draws (Efron and Tibshirani, "An Introduction to the Bootstrap", 1993,
ch. 13). A difference of two models evaluated on the same images (Weight Weaving minus the
baseline) is bootstrapped *paired*: the same indices serve both, so the interval reflects
the images on which the two disagree, not the spread of either alone.

The draws come from `numpy.random.default_rng(seed)`, task by task in the order given, so an
interval is a deterministic function of the correctness vectors, `resamples`, `level` and `seed`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

MIN_RESAMPLES = 100
"""Fewer draws than this make the 2.5% and 97.5% quantiles rest on a handful of values."""


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap interval (percent or percentage points)."""

    estimate: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0


def _check(correct: Mapping[str, np.ndarray], resamples: int, level: float) -> dict[str, np.ndarray]:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < MIN_RESAMPLES:
        raise ValueError(f"bootstrap resamples must be an integer >= {MIN_RESAMPLES}, got {resamples!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap level must be in (0, 1), got {level!r}")
    if not correct:
        raise ValueError("bootstrap needs at least one task")
    arrays = {}
    for task, values in correct.items():
        array = np.asarray(values)
        if array.ndim != 1 or array.size == 0:
            raise ValueError(f"task {task!r}: correctness must be a non-empty 1-D array, got shape {array.shape}")
        arrays[task] = array.astype(np.float64)
    return arrays


def _draws(arrays: Sequence[Mapping[str, np.ndarray]], tasks: Sequence[str], resamples: int,
           seed: int) -> list[np.ndarray]:
    """For each model of `arrays`, the `resamples` bootstrap task-averages (percent), paired."""
    rng = np.random.default_rng(seed)
    totals = [np.zeros(resamples) for _ in arrays]
    for task in tasks:
        size = arrays[0][task].size
        for model in arrays[1:]:
            if model[task].size != size:
                raise ValueError(f"task {task!r}: paired correctness vectors differ in length "
                                 f"({size} vs {model[task].size})")
        indices = rng.integers(0, size, size=(resamples, size))
        for total, model in zip(totals, arrays, strict=True):
            total += 100.0 * model[task][indices].mean(axis=1)
    return [total / len(tasks) for total in totals]


def _interval(estimate: float, draws: np.ndarray, level: float) -> Interval:
    low, high = np.quantile(draws, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return Interval(float(estimate), float(low), float(high))


def mean_accuracy_interval(correct: Mapping[str, Sequence[bool] | np.ndarray], *, resamples: int = 1000,
                           level: float = 0.95, seed: int = 0) -> Interval:
    """The task-averaged accuracy (percent) of one model and its percentile bootstrap interval."""
    arrays = _check(correct, resamples, level)
    tasks = list(arrays)
    estimate = float(np.mean([100.0 * arrays[t].mean() for t in tasks]))
    (draws,) = _draws([arrays], tasks, resamples, seed)
    return _interval(estimate, draws, level)


def paired_difference_interval(correct_a: Mapping[str, Sequence[bool] | np.ndarray],
                               correct_b: Mapping[str, Sequence[bool] | np.ndarray], *, resamples: int = 1000,
                               level: float = 0.95, seed: int = 0) -> Interval:
    """`A(b) - A(a)` (percentage points) over the same images, with its paired bootstrap interval."""
    arrays_a = _check(correct_a, resamples, level)
    arrays_b = _check(correct_b, resamples, level)
    if set(arrays_a) != set(arrays_b):
        raise ValueError(f"paired models cover different tasks: {sorted(arrays_a)} vs {sorted(arrays_b)}")
    tasks = list(arrays_a)
    estimate = float(np.mean([100.0 * (arrays_b[t].mean() - arrays_a[t].mean()) for t in tasks]))
    draws_a, draws_b = _draws([arrays_a, arrays_b], tasks, resamples, seed)
    return _interval(estimate, draws_b - draws_a, level)
