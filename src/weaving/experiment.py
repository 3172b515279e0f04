"""The paper's evaluation protocol for one merge method in one setup, independent of any model.

A *scenario* is one merge: the task vectors that go in and the tasks the merged model is
evaluated on. Multi-task learning is one scenario (all tasks in, every task evaluated);
domain generalisation is one scenario per held-out task (the others in, the held-out one
evaluated); continual learning is one scenario per benchmark (its sequential split
vectors in, the whole benchmark evaluated).

For each scenario the merged vector ``M = f(taus, lam=1)`` is computed once; every
evaluated point is derived from it (``lam * M`` for the sweep, the baseline and the
recommended lam, and Weight Weaving by every pooling and ``pool_over``). A method that is
not linear in lam (``MergeMethod.linear_in_lam``) is merged once per lam instead.

The setups are registered in ``weaving.catalogue.SETUP_ENTRIES``; each names its scenario
builder below, and ``build_scenarios`` calls it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor

TaskVector = dict[str, Tensor]
Evaluate = Callable[[TaskVector, str], "float | Tensor"]
"""``evaluate(merged_task_vector, task)``: the accuracy in percent of ``theta_pre + merged`` on the task,
or its per-image correctness (a 1-D bool tensor)."""


@dataclass(frozen=True)
class Scenario:
    members: tuple[str, ...]
    """Names of the task vectors merged."""
    tasks: tuple[str, ...]
    """Names of the tasks the merged model is evaluated on."""


def multitask_scenarios(tasks: Sequence[str]) -> list[Scenario]:
    """All tasks merged, every task evaluated (the paper's multi-task learning)."""
    return [Scenario(tuple(tasks), tuple(tasks))]


def leave_one_out_scenarios(tasks: Sequence[str]) -> list[Scenario]:
    """For each task, merge the others and evaluate on it (the paper's domain generalisation)."""
    return [Scenario(tuple(t for t in tasks if t != held_out), (held_out,)) for held_out in tasks]


def continual_scenarios(benchmarks: Mapping[str, Sequence[str]]) -> list[Scenario]:
    """For each benchmark, merge its sequential split vectors and evaluate on the benchmark."""
    return [Scenario(tuple(splits), (name,)) for name, splits in benchmarks.items()]


def build_scenarios(setup: str, tasks: Sequence[str], benchmarks: Mapping[str, Sequence[str]]) -> list[Scenario]:
    """The scenarios of a registered setup: its builder over the multi-task datasets (``tasks``)
    or the continual benchmarks' split names (``benchmarks``), as its entry's task vectors say."""
    from weaving.catalogue import SETUP_ENTRIES

    entry = SETUP_ENTRIES[setup]
    builder = globals()[entry.scenarios]
    return builder(tasks if entry.task_vectors == "finetuned" else benchmarks)


def pad_with_zero_keys(task_vectors: Mapping[str, TaskVector],
                       extra: Mapping[str, tuple[tuple[int, ...], object]]) -> dict[str, TaskVector]:
    """Each task vector with zero tensors added for the keys of ``extra`` (name -> (shape, dtype)).

    The Weight Weaving authors' code (``VirtualSpaceman/score_cvpr26``, built on
    ``mlfoundations/task_vectors``) takes task vectors of the whole ``ImageEncoder`` state dict,
    which still holds the frozen text-side leftovers of CLIP (``token_embedding``, the text
    ``positional_embedding``, ``ln_final``, ``text_projection``, ``logit_scale``) with zero
    deltas. Model-wide methods (TIES, PCB) flatten over those zeros too, which changes their
    thresholds: for ViT-B-32, D = 113,448,705 instead of 87,849,216 visual entries, so TIES at
    density 0.2 keeps 25.8% of the visual weights. Padding reproduces that convention; the
    padded keys are dropped again before the merged vector is applied.
    """
    import torch

    zeros = {key: torch.zeros(shape, dtype=dtype) for key, (shape, dtype) in extra.items()}
    clashes = [key for key in zeros for tau in task_vectors.values() if key in tau]
    if clashes:
        raise ValueError(f"padding keys already present in the task vectors: {sorted(set(clashes))[:5]}")
    return {name: {**tau, **zeros} for name, tau in task_vectors.items()}


def _index_of(value: float, values: Sequence[float]) -> int | None:
    return next((i for i, v in enumerate(values) if math.isclose(v, value, abs_tol=1e-9)), None)


def evaluate_method(
    method: str,
    hparams: Mapping[str, object],
    task_vectors: Mapping[str, TaskVector],
    scenarios: Sequence[Scenario],
    *,
    lambdas: Sequence[float],
    recommended_lam: float,
    poolings: Sequence[str],
    pool_over: Sequence[str],
    seed: int,
    evaluate: Evaluate,
    baseline_lam: float = 1.0,
    on_woven: Callable[[Scenario, str, str, TaskVector], None] | None = None,
    progress: bool = False,
    bootstrap: Mapping[str, float | int] | None = None,
    space: Mapping[str, Sequence[object]] | None = None,
    method_poolings: Mapping[str, Mapping[str, object]] | None = None,
    workers: int = 1,
) -> dict:
    """Accuracy of ``method`` at every lam, at the baseline and recommended lam, and woven.

    Returns the evaluated fields of ``weaving.metrics.WeaveMetrics`` (``docs/contracts.md``):
    ``tasks``, ``baseline``, ``recommended``, ``sweep`` (per task, aligned with ``lambdas``) and
    ``weaving[pooling][pool_over]``, each mapping task -> accuracy; the caller adds the run's
    names and lambdas and builds the model, which validates them
    (``WeaveMetrics(model=..., setup=..., method=..., hparams=..., lambdas=..., recommended_lam=...,
    baseline_lam=..., **result)``). ``on_woven`` receives every woven task vector (e.g. to save it).

    When ``evaluate`` returns per-image correctness (a 1-D bool tensor) instead of a percentage,
    the accuracy is its mean in percent, and with ``bootstrap`` (``resamples``, ``level``,
    ``seed``: `weaving.stats`) the result also holds ``intervals``: the baseline's and each woven
    model's task-averaged accuracy and the gain of each woven model over the baseline (paired,
    the same images), each as ``{"estimate", "low", "high"}``.

    Weight Weaving beyond lam (``docs/merging.md``; avg pooling over A* unless the pooling is a
    method): with ``space`` (hyper-parameter axes, e.g. ``{"density": [0.1, 0.2, 0.3]}``), the weave
    over lam x those axes, named ``lam_x_<axis>[_x_<axis>...]``; with ``method_poolings`` (method ->
    its hyper-parameters), the weave over lam pooled by each method, named ``<method>_pooling``.
    Their accuracies go to ``extensions[name]`` (with ``space``, ``pooling``, ``pooling_params``
    and per-task ``accuracy``) and, with ``bootstrap``, their intervals (the task average, the
    gain over the baseline and over Weight Weaving over lam only, avg over A*) to
    ``intervals["extensions"][name]``.

    ``workers > 1`` runs that many evaluations at once, in threads, while the next vectors are
    merged and woven (``evaluate`` must then be safe to call from several threads, e.g. one model
    per thread); at most ``2 * workers`` vectors wait for evaluation. The result is the same as
    with one worker: the evaluations are independent, and their results are recorded in the
    order they were asked for.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from weaving import METHODS, merge, weave, weave_from_merged

    lambdas = [float(x) for x in lambdas]
    extra = [lam for lam in (baseline_lam, recommended_lam) if _index_of(lam, lambdas) is None]
    points = lambdas + sorted(set(extra))
    extensions = weave_extensions(space, method_poolings)
    total = sum(len(s.tasks) * (len(points) + len(poolings) * len(pool_over) + len(extensions)) for s in scenarios)
    bar = tqdm(total=total, desc=f"evaluate {method}", unit="eval", disable=not progress, leave=False)

    tasks = [t for s in scenarios for t in s.tasks]
    result: dict = {
        "tasks": tasks,
        "baseline": {},
        "recommended": {},
        "sweep": {t: [math.nan] * len(lambdas) for t in tasks},
        "weaving": {p: {o: {} for o in pool_over} for p in poolings},
    }
    if extensions:
        result["extensions"] = {name: {**spec, "accuracy": {}} for name, spec in extensions.items()}
    linear = METHODS[method].linear_in_lam
    correct: dict[tuple, dict[str, Tensor]] = {}
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")

    def accuracy(value: float | Tensor, task: str, kind: tuple) -> float:
        if isinstance(value, Tensor):
            if value.ndim != 1 or value.numel() == 0:
                raise ValueError(f"evaluate({task!r}) returned a tensor of shape {tuple(value.shape)}, "
                                 f"not a non-empty 1-D correctness vector")
            correct.setdefault(kind, {})[task] = value.bool().cpu()
            return 100.0 * float(value.double().mean())
        return float(value)

    pool = ThreadPoolExecutor(workers, thread_name_prefix="evaluate") if workers > 1 else None
    waiting: deque = deque()  # (future, task, kind, record), in the order asked

    def record_oldest() -> None:
        future, task, kind, record = waiting.popleft()
        record(accuracy(future.result(), task, kind))
        bar.update()

    def score(vector: TaskVector, task: str, kind: tuple, record: Callable[[float], None]) -> None:
        """Evaluate `vector` on `task` now (one worker) or in a worker thread; `record(accuracy)` in order."""
        if pool is None:
            record(accuracy(evaluate(vector, task), task, kind))
            bar.update()
            return
        waiting.append((pool.submit(evaluate, vector, task), task, kind, record))
        while len(waiting) > 2 * workers:
            record_oldest()

    def into(table: dict, key: str) -> Callable[[float], None]:
        return lambda value: table.__setitem__(key, value)

    try:
        for scenario in scenarios:
            taus = [task_vectors[name] for name in scenario.members]
            merged = merge(method, taus, lam=1.0, **hparams)
            at_point: dict[float, dict[str, float]] = {}
            for lam in points:
                scaled = ({key: value * lam for key, value in merged.items()} if linear
                          else merge(method, taus, lam=lam, **hparams))
                at_point[lam] = {}
                is_baseline = math.isclose(lam, baseline_lam, abs_tol=1e-9)
                for task in scenario.tasks:
                    score(scaled, task, ("baseline",) if is_baseline else ("lam", lam), into(at_point[lam], task))
            for pooling in poolings:
                for over in pool_over:
                    woven = (weave_from_merged(taus, merged, lambdas=lambdas, pooling=pooling, pool_over=over,
                                               seed=seed)
                             if linear else weave(method, taus, lambdas, pooling, over, seed, **hparams))
                    if on_woven is not None:
                        on_woven(scenario, pooling, over, woven)
                    for task in scenario.tasks:
                        score(woven, task, ("weaving", pooling, over), into(result["weaving"][pooling][over], task))
            for name, spec in extensions.items():
                woven = _weave_extension(method, hparams, taus, merged if linear else None, lambdas, spec, seed)
                for task in scenario.tasks:
                    score(woven, task, ("extension", name), into(result["extensions"][name]["accuracy"], task))
            while waiting:
                record_oldest()
            for task in scenario.tasks:
                for i, lam in enumerate(lambdas):
                    result["sweep"][task][i] = at_point[lam][task]
                result["baseline"][task] = at_point[_point(baseline_lam, points)][task]
                result["recommended"][task] = at_point[_point(recommended_lam, points)][task]
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    bar.close()
    if bootstrap is not None and ("baseline",) in correct:
        result["intervals"] = _intervals(correct, poolings, pool_over, bootstrap, list(extensions))
    return result


def weave_extensions(space: Mapping[str, Sequence[object]] | None,
                     method_poolings: Mapping[str, Mapping[str, object]] | None) -> dict[str, dict]:
    """The woven variants beyond lam by name: ``lam_x_<axes>`` (avg over A* of lam x ``space``) and
    ``<method>_pooling`` (the weave over lam pooled by ``method`` at its hyper-parameters)."""
    variants: dict[str, dict] = {}
    if space:
        variants["lam_x_" + "_x_".join(space)] = {"space": {k: list(v) for k, v in space.items()}, "pooling": "avg",
                                                "pooling_params": {}}
    for pooling, params in (method_poolings or {}).items():
        variants[f"{pooling}_pooling"] = {"space": {}, "pooling": pooling, "pooling_params": dict(params)}
    return variants


def _weave_extension(method: str, hparams: Mapping[str, object], taus: Sequence[TaskVector],
                     merged: TaskVector | None, lambdas: Sequence[float], spec: Mapping, seed: int) -> TaskVector:
    """One variant of `weave_extensions` over A* (`pool_over="all"`); `merged` (the method at lam 1)
    reuses the lam-only merge when the method is linear in lam and no axis is swept."""
    from weaving import weave, weave_from_merged

    if spec["space"]:
        fixed = {k: v for k, v in hparams.items() if k not in spec["space"]}
        return weave(method, taus, space={"lam": list(lambdas), **spec["space"]}, pooling=spec["pooling"],
                     pool_over="all", seed=seed, pooling_params=spec["pooling_params"] or None, **fixed)
    if merged is not None:
        return weave_from_merged(taus, merged, lambdas=lambdas, pooling=spec["pooling"], pool_over="all", seed=seed,
                                 pooling_params=spec["pooling_params"])
    return weave(method, taus, lambdas, spec["pooling"], "all", seed, pooling_params=spec["pooling_params"],
                 **hparams)


def _intervals(correct: Mapping[tuple, Mapping[str, Tensor]], poolings: Sequence[str], pool_over: Sequence[str],
               bootstrap: Mapping[str, float | int], extensions: Sequence[str] = ()) -> dict:
    """Bootstrap intervals of the baseline, each woven model and each gain (`weaving.stats`); of each
    extension's average, its gain over the baseline and over Weight Weaving avg over A*."""
    from dataclasses import asdict

    from weaving.stats import mean_accuracy_interval, paired_difference_interval

    options = {"resamples": int(bootstrap["resamples"]), "level": float(bootstrap["level"]),
               "seed": int(bootstrap["seed"])}
    as_numpy = {kind: {task: values.numpy() for task, values in per_task.items()} for kind, per_task in correct.items()}
    baseline = as_numpy[("baseline",)]
    intervals: dict = {**options, "baseline": asdict(mean_accuracy_interval(baseline, **options)), "weaving": {},
                       "gain": {}}
    for pooling in poolings:
        for over in pool_over:
            woven = as_numpy[("weaving", pooling, over)]
            intervals["weaving"].setdefault(pooling, {})[over] = asdict(mean_accuracy_interval(woven, **options))
            intervals["gain"].setdefault(pooling, {})[over] = asdict(
                paired_difference_interval(baseline, woven, **options))
    lam_only = as_numpy.get(("weaving", "avg", "all"))
    for name in extensions:
        variant = as_numpy[("extension", name)]
        intervals.setdefault("extensions", {})[name] = {
            "accuracy": asdict(mean_accuracy_interval(variant, **options)),
            "gain": asdict(paired_difference_interval(baseline, variant, **options)),
            "gain_over_lam_only": (asdict(paired_difference_interval(lam_only, variant, **options))
                                   if lam_only is not None else None)}
    return intervals


def _point(lam: float, points: Sequence[float]) -> float:
    return points[_index_of(lam, points)]


def mean_accuracy(per_task: Mapping[str, float]) -> float:
    """The average over tasks, as the paper reports per setup."""
    return sum(per_task.values()) / len(per_task)
