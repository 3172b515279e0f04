"""The TSV-C evaluation a pipeline stage runs: accuracy with the task known, and storage, per rank fraction.

For each rank fraction `f` (the default `1/T` always included) and each task `t`, the
model theta_pre + reconstruct(TSV-C_f(tau_t)) (lam = 1) is evaluated on task `t` with its
head; normalised accuracy is accuracy / fine-tuned accuracy (in %). Storage is counted in
stored numbers (`weaving.compress.storage_summary`). One full SVD per task vector serves
every fraction (`CompressedTaskVector.truncated`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from tqdm import tqdm

from weaving.compress.tsvc import (
    CompressedTaskVector,
    check_rank_fraction,
    compress_task_vector,
    default_rank_fraction,
    storage_summary,
)
from weaving.engine import apply_task_vector
from weaving.errors import ParamError

__all__ = ["mean", "normalized", "run_compression_experiment"]


def mean(values: Mapping[str, float]) -> float:
    """Arithmetic mean of the values (NaN when empty)."""
    return sum(values.values()) / len(values) if values else float("nan")


def normalized(accuracy: Mapping[str, float], finetuned: Mapping[str, float]) -> dict[str, float]:
    """`100 * accuracy[t] / finetuned[t]` per task (NaN where the fine-tuned accuracy is 0)."""
    return {t: (100.0 * a / finetuned[t] if finetuned[t] else float("nan")) for t, a in accuracy.items()}


def task_accuracy(model: torch.nn.Module, pretrained: Mapping[str, torch.Tensor], tau: Mapping[str, torch.Tensor],
                  head: torch.Tensor, cache: Mapping[str, torch.Tensor], batch_size: int) -> float:
    """Accuracy (%) of theta_pre + tau on one task's cached test tensors (loads the weights into `model.visual`)."""
    from weaving.clip import evaluate

    return evaluate(model, apply_task_vector(pretrained, tau), head, dict(cache), batch_size=batch_size)


def _fractions(rank_fractions: Sequence[float], default: float) -> list[float]:
    fractions = {check_rank_fraction(f, f"rank_fractions[{i}]") for i, f in enumerate(rank_fractions)}
    fractions = sorted(fractions | {default})
    unique: list[float] = []
    for fraction in fractions:
        if not unique or not math.isclose(fraction, unique[-1], rel_tol=1e-12):
            unique.append(fraction)
    return unique


def run_compression_experiment(
    model: torch.nn.Module,
    pretrained: Mapping[str, torch.Tensor],
    task_vectors: Mapping[str, Mapping[str, torch.Tensor]],
    heads: Mapping[str, torch.Tensor],
    caches: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    rank_fractions: Sequence[float] = (0.05, 0.1, 0.25, 0.5),
    finetuned_accuracy: Mapping[str, float] | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> tuple[dict[str, object], dict[str, CompressedTaskVector]]:
    """(JSON-able metrics, the task vectors compressed at `1/T` by name).

    `model`: an open_clip CLIP whose `visual` matches `pretrained` (its weights are
    overwritten while evaluating); `task_vectors`, `heads` (`[C, embed_dim]`) and `caches`
    (`{"images", "labels"}`) by task name. `finetuned_accuracy`: per task, else measured
    (theta_pre + tau_t). Metrics: `tasks`, `default_rank_fraction`, `finetuned`,
    `sweep` (one record per fraction, ascending: `rank_fraction`, `is_default`,
    `accuracy`, `normalized`, `mean`, `normalized_mean`, `storage`, `rank_range`),
    `default` (the `1/T` record) and `headline` (`normalized_mean`, `storage_ratio`).
    """
    tasks = list(task_vectors)
    if not tasks:
        raise ParamError("the task list is empty: give at least one task vector")
    missing = [t for t in tasks if t not in heads or t not in caches]
    if missing:
        raise ParamError(f"no head or test cache for tasks {missing}")
    default = default_rank_fraction(len(tasks))
    fractions = _fractions(rank_fractions, default)
    if finetuned_accuracy is None:
        finetuned = {t: task_accuracy(model, pretrained, task_vectors[t], heads[t], caches[t], batch_size)
                     for t in tqdm(tasks, desc="fine-tuned", disable=not progress)}
    else:
        finetuned = {t: float(finetuned_accuracy[t]) for t in tasks}
    full = {t: compress_task_vector(task_vectors[t], 1.0, name=t)
            for t in tqdm(tasks, desc="SVD", disable=not progress)}
    sweep = []
    default_set: dict[str, CompressedTaskVector] = {}
    for fraction in tqdm(fractions, desc="rank fractions", disable=not progress):
        compressed = {t: full[t].truncated(fraction) for t in tasks}
        is_default = math.isclose(fraction, default, rel_tol=1e-12)
        if is_default:
            default_set = compressed
        accuracy = {t: task_accuracy(model, pretrained, compressed[t].to_dense(), heads[t], caches[t], batch_size)
                    for t in tasks}
        norm = normalized(accuracy, finetuned)
        ranks = [k for c in compressed.values() for k in c.ranks().values()]
        sweep.append({
            "rank_fraction": fraction,
            "is_default": is_default,
            "accuracy": accuracy,
            "normalized": norm,
            "mean": mean(accuracy),
            "normalized_mean": mean(norm),
            "storage": storage_summary(list(compressed.values())),
            "rank_range": [min(ranks), max(ranks)] if ranks else [0, 0],
        })
    record = next(r for r in sweep if r["is_default"])
    metrics = {
        "tasks": tasks,
        "num_tasks": len(tasks),
        "default_rank_fraction": default,
        "finetuned": finetuned,
        "finetuned_mean": mean(finetuned),
        "sweep": sweep,
        "default": record,
        "headline": {"normalized_mean": record["normalized_mean"],
                     "storage_ratio": record["storage"]["ratio_to_one_model"]},
    }
    return metrics, default_set
