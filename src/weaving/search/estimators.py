"""MERGE3's fitness estimators from a few anchor items per task (Mencattini et al., ICML 2025).

Items of all tasks are numbered together (task after task, `ItemLayout`). For a candidate
seen only on its anchors (`n_t` of the `N_t` items of task `t`):

- `anchors`: the anchor accuracy `acc_t = mean of y over the anchors of t`;
- `mp_irt`: `(n_t / N_t) * acc_t + (1 - n_t / N_t) * mean_{i unseen in t} P_i(theta)`, with
  `theta = sum_j lambda_j theta_j` and `lambda` fitted on all the anchors' responses
  (`weaving.search.irt.fit_lambda`);
- `gmp_irt`: `0.5 * acc_t + 0.5 * mp_irt_t`.

The reference (mergenetic's `estimate_fitness`) computes these per benchmark; here every
task is a benchmark, `lambda` is fitted once on the anchors of all tasks together (one
ability per candidate, the multidimensional model's), and the fitness of a merge is the
mean over tasks of the per-task estimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from weaving.errors import InputError, ParamError
from weaving.search.irt import ItemParameters, fit_lambda, item_curve

FITNESS_KINDS: tuple[str, ...] = ("full", "anchors", "mp_irt", "gmp_irt")
"""How a candidate's per-task accuracy is obtained: all items, the anchor mean, mp-IRT, gmp-IRT."""

ESTIMATED_KINDS: tuple[str, ...] = ("anchors", "mp_irt", "gmp_irt")

GMP_IRT_WEIGHT = 0.5
"""gmp-IRT's weight on the anchor accuracy (the reference's `delta`)."""


def check_fitness_kind(kind: str) -> str:
    """`kind` if it is one of `FITNESS_KINDS`, else `ParamError` listing them."""
    if kind not in FITNESS_KINDS:
        raise ParamError(f"unknown fitness kind {kind!r}; valid: {', '.join(FITNESS_KINDS)}")
    return kind


@dataclass(frozen=True)
class ItemLayout:
    """The items of several tasks numbered together: task `t` owns `[offsets[t], offsets[t] + sizes[t])`."""

    tasks: tuple[str, ...]
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.tasks) != len(self.sizes) or not self.tasks:
            raise ParamError(f"item layout: need one size per task, got tasks {self.tasks} and sizes {self.sizes}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ParamError(f"item layout: repeated task names in {self.tasks}")
        for task, size in zip(self.tasks, self.sizes):
            if size < 1:
                raise InputError(f"task {task!r} has no validation items")

    @property
    def num_items(self) -> int:
        return int(sum(self.sizes))

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(int(x) for x in np.concatenate([[0], np.cumsum(self.sizes)[:-1]]))

    def task_items(self, task: str) -> np.ndarray:
        """Global indices of `task`'s items."""
        t = self.tasks.index(task)
        return np.arange(self.offsets[t], self.offsets[t] + self.sizes[t])


def sample_anchors(layout: ItemLayout, per_task: int, seed: int) -> dict[str, np.ndarray]:
    """`per_task` distinct random items of each task (global indices, sorted), drawn without
    replacement by `numpy.random.default_rng(seed)` task after task in layout order.

    `ParamError` if `per_task < 1` or a task has fewer items than `per_task`.
    """
    if isinstance(per_task, bool) or not isinstance(per_task, (int, np.integer)) or per_task < 1:
        raise ParamError(f"anchors per task must be a positive integer, got {per_task!r}")
    short = [f"{task} ({size})" for task, size in zip(layout.tasks, layout.sizes) if size < per_task]
    if short:
        raise ParamError(
            f"anchors per task ({per_task}) exceed the validation items of: {', '.join(short)}; "
            "lower the anchors or enlarge the validation split"
        )
    rng = np.random.default_rng(seed)
    anchors = {}
    for task, offset, size in zip(layout.tasks, layout.offsets, layout.sizes):
        anchors[task] = np.sort(rng.choice(size, size=per_task, replace=False)) + offset
    return anchors


def anchor_accuracy(responses: np.ndarray) -> float:
    """The mean of 0/1 responses."""
    return float(np.mean(responses))


def mp_irt(anchor_acc: float, n_seen: int, n_total: int, unseen_probabilities: np.ndarray) -> float:
    """`(n/N) * anchor_acc + (1 - n/N) * mean(unseen_probabilities)`; with `n = N` it is `anchor_acc`."""
    if not 0 < n_seen <= n_total:
        raise ParamError(f"mp-IRT needs 0 < n <= N, got n={n_seen}, N={n_total}")
    weight = n_seen / n_total
    if n_seen == n_total:
        return float(anchor_acc)
    return float(weight * anchor_acc + (1.0 - weight) * np.mean(unseen_probabilities))


def gmp_irt(anchor_acc: float, mp_irt_value: float) -> float:
    """`0.5 * anchor_acc + 0.5 * mp_irt`."""
    return float(GMP_IRT_WEIGHT * anchor_acc + (1.0 - GMP_IRT_WEIGHT) * mp_irt_value)


class AnchorEstimator:
    """Per-task accuracy estimates of a candidate from its responses on the anchors.

    `items` are the IRT parameters of every item (`layout` numbering), `endpoint_abilities`
    `[J, D]` the abilities `theta_j` of the models the merges are made of, `anchors` the
    global anchor indices per task (`sample_anchors`).
    """

    def __init__(
        self,
        layout: ItemLayout,
        items: ItemParameters,
        endpoint_abilities: np.ndarray,
        anchors: Mapping[str, np.ndarray],
    ) -> None:
        if items.num_items != layout.num_items:
            raise InputError(f"IRT items ({items.num_items}) and item layout ({layout.num_items}) differ")
        thetas = np.asarray(endpoint_abilities, dtype=np.float64)
        if thetas.ndim != 2 or thetas.shape[1] != items.dims or thetas.shape[0] < 1:
            raise InputError(f"endpoint abilities must be [J >= 1, {items.dims}], got {thetas.shape}")
        if set(anchors) != set(layout.tasks):
            raise ParamError(f"anchors must be given for tasks {list(layout.tasks)}, got {sorted(anchors)}")
        self.layout = layout
        self.items = items
        self.endpoint_abilities = thetas
        self.anchors = {task: np.asarray(anchors[task], dtype=np.int64) for task in layout.tasks}
        for task in layout.tasks:
            own = layout.task_items(task)
            chosen = self.anchors[task]
            if len(chosen) == 0 or len(np.unique(chosen)) != len(chosen) or not np.isin(chosen, own).all():
                raise ParamError(f"anchors of task {task!r} must be distinct items of that task")
        self.anchor_index = np.concatenate([self.anchors[task] for task in layout.tasks])
        self._anchor_items = items.subset(self.anchor_index)
        self._unseen = {task: np.setdiff1d(layout.task_items(task), self.anchors[task]) for task in layout.tasks}

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_index)

    def estimate(self, anchor_responses: np.ndarray | Sequence[float]) -> tuple[dict[str, dict[str, float]], np.ndarray]:
        """`({kind: {task: estimate}}, lambda)` for kinds `anchors`, `mp_irt`, `gmp_irt` (fractions in [0, 1]).

        `anchor_responses` are 0/1 in `anchor_index` order (task after task); `lambda` `[J]`
        is the fitted combination of the endpoint abilities.
        """
        y = np.asarray(anchor_responses, dtype=np.float64)
        if y.shape != (self.num_anchors,):
            raise InputError(f"expected {self.num_anchors} anchor responses, got shape {y.shape}")
        lambdas = fit_lambda(y, self._anchor_items, self.endpoint_abilities)
        theta = lambdas @ self.endpoint_abilities
        probabilities = item_curve(theta, self.items)
        out: dict[str, dict[str, float]] = {"anchors": {}, "mp_irt": {}, "gmp_irt": {}}
        start = 0
        for task, size in zip(self.layout.tasks, self.layout.sizes):
            seen = len(self.anchors[task])
            accuracy = anchor_accuracy(y[start:start + seen])
            start += seen
            value = mp_irt(accuracy, seen, size, probabilities[self._unseen[task]])
            out["anchors"][task] = accuracy
            out["mp_irt"][task] = value
            out["gmp_irt"][task] = gmp_irt(accuracy, value)
        return out, lambdas
