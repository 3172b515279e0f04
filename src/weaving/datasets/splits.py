"""Seeded split rules: stratified orders, limit allocation, the task-vector val split, class splits.

Stratified order (used for every subsample): a seeded order of the pool whose every prefix
holds each class in proportion to the pool, within less than one item (Tijdeman's bound, so
any segment of it is within less than two items); consecutive segments of it are disjoint by
construction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from weaving.datasets.base import DatasetError

SPLITS = ("pretrain", "train", "val", "test")


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    """An independent generator per (seed, stream...): streams never share draws."""
    return np.random.default_rng([int(seed), *map(int, stream)])


def stratified_order(labels: np.ndarray, rng: np.random.Generator, length: int | None = None) -> np.ndarray:
    """The first ``length`` (default: all) indices of ``labels`` in a seeded, class-proportional order.

    Tijdeman's chairman-assignment rule (R. Tijdeman, "The chairman assignment problem",
    Discrete Mathematics 32, 1980) over the ``n`` classes, class ``c`` holding ``n_c`` of the
    ``N`` labels (share ``s_c = n_c / N``) with ``x_c`` of them taken before step ``k`` (1-based),
    and ``sigma = 1 / (2n - 2)``: among the classes with ``k s_c - x_c >= sigma``, step ``k`` takes
    the next item of the one with the smallest ``(x_c + 1 - sigma) / s_c`` (ties: a seeded class
    priority); the items of a class come in a seeded random order. Every prefix of length ``k``
    then holds each class within ``1 - sigma`` items of its share: ``|x_c - k s_c| <= 1 - sigma < 1``
    (Tijdeman's theorem; the greedy "largest deficit first" rule does not bound this by one
    item). The rule is computed in exact integer arithmetic (times ``N (2n - 2)``).
    """
    labels = np.asarray(labels)
    total = len(labels)
    length = total if length is None else min(int(length), total)
    classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    members = [rng.permutation(np.flatnonzero(inverse == c)) for c in range(len(classes))]
    priority = rng.permutation(len(classes))
    if len(classes) == 1:
        return members[0][:length].astype(np.int64)
    scale = 2 * len(classes) - 2  # 1 / sigma
    taken = np.zeros(len(classes), dtype=np.int64)
    out = np.empty(length, dtype=np.int64)
    for k in range(1, length + 1):
        # k s_c - x_c >= sigma, times N / sigma; never true of an exhausted class while k <= N
        eligible = np.flatnonzero(scale * (k * sizes - total * taken) >= total)
        c = _smallest_deadline(eligible, scale * (taken[eligible] + 1) - 1, sizes[eligible], priority)
        out[k - 1] = members[c][taken[c]]
        taken[c] += 1
    return out


def _smallest_deadline(classes: np.ndarray, numerators: np.ndarray, sizes: np.ndarray, priority: np.ndarray) -> int:
    """The class of ``classes`` with the smallest ``numerators / sizes``, compared exactly (ties: lowest ``priority``)."""
    approx = numerators / sizes
    near = np.flatnonzero(approx <= approx.min() * (1 + 1e-9))  # float pre-filter; exact comparison below
    best = int(near[0])
    for i in map(int, near[1:]):
        left, right = int(numerators[i]) * int(sizes[best]), int(numerators[best]) * int(sizes[i])
        if left < right or (left == right and priority[classes[i]] < priority[classes[best]]):
            best = i
    return int(classes[best])


def take_segments(order: np.ndarray, sizes: Sequence[int | None]) -> list[np.ndarray]:
    """Consecutive segments of ``order``: ``sizes[k]`` items each (None: all that remain), capped by availability."""
    out, start = [], 0
    for size in sizes:
        stop = len(order) if size is None else min(len(order), start + int(size))
        out.append(np.sort(order[start:stop]))
        start = stop
    return out


def literature_val_split(n: int, fraction: float = 0.1, max_val: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The task-vector literature's val split of a train set of ``n`` items: ``(train_idx, val_idx)``.

    As ``split_train_into_train_val`` in mlfoundations/task_vectors: ``val = min(int(n * fraction),
    max_val)``, ``perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))``,
    train = ``perm[:n - val]``, val = ``perm[n - val:]`` (both in permutation order).
    """
    import torch  # only the paper profile needs this exact permutation

    val_size = min(int(n * fraction), max_val)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy().astype(np.int64)
    return perm[: n - val_size], perm[n - val_size:]


def class_splits(num_classes: int, n_splits: int, seed: int = 0) -> list[list[int]]:
    """Disjoint class chunks for class-incremental learning, covering all classes.

    The classes are put in a seeded random order ``order`` (``numpy.random.default_rng(seed)
    .permutation``); chunk ``i`` is ``order[floor(i * C / N) : floor((i + 1) * C / N)]``, the
    rule of Marczak et al.'s MagMax code, so that chunk sizes differ by at most one when ``N``
    does not divide ``C`` (the later chunks are the larger ones).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise DatasetError(f"class_splits: num_classes must be a positive int, got {num_classes!r}")
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 1:
        raise DatasetError(f"class_splits: n_splits must be a positive int, got {n_splits!r}")
    if n_splits > num_classes:
        raise DatasetError(f"class_splits: n_splits={n_splits} is more than num_classes={num_classes}; "
                           "every split needs at least one class")
    order = np.random.default_rng(int(seed)).permutation(int(num_classes))
    bounds = [(i * int(num_classes)) // int(n_splits) for i in range(int(n_splits) + 1)]
    return [[int(c) for c in order[bounds[i]: bounds[i + 1]]] for i in range(int(n_splits))]
