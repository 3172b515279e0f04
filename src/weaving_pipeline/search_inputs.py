"""The MERGE3 stage's inputs: the validation items (a seeded class-proportional slice of a prepared split,
checked disjoint from the fine-tuning train split and the test split), the fine-tuned encoders, and the
Task Arithmetic baselines it measures on the same items."""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

from weaving_pipeline import paths
from weaving_pipeline.params import Params

ITEMS_STREAM = 12
"""The `weaving.datasets.splits.rng_for` stream of the item slice (the data stage uses 1 to 4)."""


def item_indices(labels: np.ndarray, per_task: int, seed: int, task: str) -> np.ndarray:
    """`per_task` indices of a split (sorted), the prefix of a seeded stratified order: every class within
    less than one item of its share (`weaving.datasets.splits.stratified_order`), drawn per task from
    `rng_for(seed, ITEMS_STREAM, crc32(task))`."""
    from weaving.datasets.splits import rng_for, stratified_order

    rng = rng_for(seed, ITEMS_STREAM, zlib.crc32(task.encode("utf-8")))
    return np.sort(stratified_order(np.asarray(labels), rng, length=per_task))


def check_items_disjoint(task: str, split: str, ids: np.ndarray, others: Mapping[str, np.ndarray]) -> None:
    """`InputError` naming `merge3.items.split` when an item's source id is also in another split (train, test)."""
    from weaving.errors import InputError

    for name, other in others.items():
        shared = np.intersect1d(np.asarray(ids, dtype=str), np.asarray(other, dtype=str))
        if len(shared):
            raise InputError(
                f"merge3.items.split: the {split!r} items of {task} overlap its {name} split on {len(shared)} "
                f"image(s) (ids {shared[:3].tolist()}...); the validation items must be disjoint from train and test")


class _Subset:
    """A few images of a prepared split, as `weaving.clip.preprocess.Split` (for `split_to_tensor`)."""

    def __init__(self, split, index: np.ndarray) -> None:
        self.split, self.index = split, index
        self.labels = split.labels[index]
        self.format = split.dataset.format

    def __len__(self) -> int:
        return len(self.index)

    def uint8_images(self) -> np.ndarray:
        return self.split.uint8_images()[self.index]

    def pil(self, i: int):
        return self.split.pil(int(self.index[i]))


def validation_items(params: Params, model) -> dict[str, dict]:
    """Per task of `suite.mtl`: `{"images": float16 [n, 3, S, S] normalised for `model`, "labels": int64 [n],
    "ids": str [n]}`, `n = merge3.items.per_task` images of the prepared `merge3.items.split`.

    `InputError` naming the key when the split holds fewer images or meets train or test."""
    import torch

    from weaving.clip.preprocess import split_to_tensor
    from weaving.datasets import load_prepared
    from weaving.errors import InputError

    items = params.merge3.items
    out = {}
    for task in params.suite.mtl:
        dataset = load_prepared(paths.prepared(task))
        split = dataset.split(items.split)
        if len(split) < items.per_task:
            raise InputError(f"merge3.items.per_task: {items.per_task} items per task, but the {items.split!r} "
                             f"split of {task} holds {len(split)} images")
        index = item_indices(split.labels, items.per_task, items.seed, task)
        ids = np.asarray(split.ids, dtype=str)[index]
        check_items_disjoint(task, items.split, ids, {name: dataset.split(name).ids for name in ("train", "test")})
        subset = _Subset(split, index)
        images = split_to_tensor(model, subset)
        out[task] = {"images": images.to(torch.float16),
                     "labels": torch.as_tensor(subset.labels, dtype=torch.int64), "ids": ids}
    return out


def task_arithmetic_baselines(evaluator, decoder, tasks: tuple[str, ...], test: Mapping[str, dict],
                              lambdas: list[float], recommended_lam: float) -> dict:
    """Task Arithmetic with one lam for all tasks (`sum_t lam tau_t`, `decoder` a `MergeDecoder`), on the
    evaluator's validation items at every lam of `lambdas` and at `recommended_lam`; the test accuracy of
    the recommended lam and of the lam of highest mean validation accuracy (the first of ties)."""
    from weaving.search.genome import Genome, GenomeSpec

    spec = GenomeSpec("task_arithmetic", tasks)
    layout = evaluator.layout

    def measure(lam: float, with_test: bool) -> dict:
        evaluator.load(decoder.merged(spec, Genome({t: lam for t in tasks})))
        responses = evaluator.correctness()
        val = {t: 100.0 * float(np.mean(responses[layout.task_items(t)])) for t in tasks}
        out = {"val_accuracy": val, "val_mean": float(np.mean(list(val.values())))}
        if with_test:
            test_accuracy = evaluator.accuracy(test)
            out.update(test_accuracy=test_accuracy, test_mean=float(np.mean(list(test_accuracy.values()))))
        return out

    import sys

    from tqdm import tqdm

    val_means = [measure(lam, False)["val_mean"]
                 for lam in tqdm(lambdas, desc="Task Arithmetic, one lam", unit="lam", file=sys.stderr)]
    best = int(np.argmax(val_means))  # the first of ties
    return {
        "recommended_lam": recommended_lam,
        "recommended": measure(recommended_lam, True),
        "lambdas": list(lambdas),
        "val_means": val_means,
        "best_val_lam": lambdas[best],
        "best_val": measure(lambdas[best], True),
    }
