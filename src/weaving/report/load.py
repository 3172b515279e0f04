"""Reading and validating the pipeline's metrics files (docs/contracts.md, "Metrics").

Everything is checked before anything is computed: every problem found in every file is
collected, and one `MetricsError` names each file and what is wrong in it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from weaving.catalogue import METHOD_ENTRIES, POOL_OVER, POOLING_ENTRIES, SETUP_ENTRIES
from weaving.errors import InputError, ParamError, choices

# The registries are read at call time, so entries registered after import count too.
SETUPS = SETUP_ENTRIES.keys()
METHODS = METHOD_ENTRIES.keys()
POOLINGS = POOLING_ENTRIES.keys()
POOL_OVERS: tuple[str, ...] = POOL_OVER
RESERVED_MODEL_NAMES: frozenset[str] = frozenset({"avg"})


class MetricsError(InputError):
    """Missing or malformed metrics files; the message lists every problem, one per line."""


@dataclass(frozen=True)
class WeaveMetrics:
    """One `metrics/<model>/weave/<setup>/<method>.json`: accuracies (percent) per task."""

    model: str
    setup: str
    method: str
    hparams: dict[str, Any]
    lambdas: list[float]
    recommended_lam: float
    baseline_lam: float
    tasks: list[str]
    baseline: dict[str, float]
    recommended: dict[str, float]
    sweep: dict[str, list[float]]
    weaving: dict[str, dict[str, dict[str, float]]]

    def mean(self, per_task: Mapping[str, float]) -> float:
        """Mean over `tasks` of a per-task accuracy mapping."""
        return fmean(per_task[t] for t in self.tasks)

    @property
    def baseline_avg(self) -> float:
        return self.mean(self.baseline)

    @property
    def recommended_avg(self) -> float:
        return self.mean(self.recommended)

    def weaving_per_task(self, pooling: str = "avg", pool_over: str = "all") -> dict[str, float]:
        return self.weaving[pooling][pool_over]

    def weaving_avg(self, pooling: str = "avg", pool_over: str = "all") -> float:
        return self.mean(self.weaving[pooling][pool_over])

    def sweep_avg(self) -> list[float]:
        """Average accuracy over tasks at each lam of `lambdas`."""
        return [fmean(self.sweep[t][i] for t in self.tasks) for i in range(len(self.lambdas))]

    def best_lambda_per_task(self) -> dict[str, float]:
        """For each task, the lam of highest accuracy; ties go to the first in `lambdas` order."""
        return {t: self.lambdas[_argmax(self.sweep[t])] for t in self.tasks}

    def oracle_per_task(self) -> dict[str, float]:
        """For each task, its best accuracy over the sweep (privileged: chosen on evaluation data)."""
        return {t: max(self.sweep[t]) for t in self.tasks}

    def oracle_single(self) -> tuple[float, float]:
        """(lam, average accuracy) of the single lam with the best average over tasks; first on ties."""
        averages = self.sweep_avg()
        best = _argmax(averages)
        return self.lambdas[best], averages[best]


@dataclass(frozen=True)
class Reference:
    """`metrics/<model>/reference.json`: zero-shot and fine-tuned accuracies (percent)."""

    model: str
    zeroshot: dict[str, float]
    finetuned: dict[str, float]
    cl: dict[str, dict[str, float]]


@dataclass(frozen=True)
class SimilarityMatrix:
    labels: list[str]
    matrix: list[list[float]]


@dataclass(frozen=True)
class Similarity:
    """`metrics/<model>/similarity.json`: cosine similarity of task vectors."""

    individual: SimilarityMatrix
    sequential: dict[str, SimilarityMatrix]


@dataclass(frozen=True)
class RunMetrics:
    """Every metrics file of one run, for the configured models, setups, methods, poolings."""

    models: list[str]
    setups: list[str]
    methods: list[str]
    poolings: list[str]
    pool_overs: list[str]
    weave: dict[tuple[str, str, str], WeaveMetrics]
    reference: dict[str, Reference]
    similarity: dict[str, Similarity]

    def get(self, model: str, setup: str, method: str) -> WeaveMetrics:
        return self.weave[(model, setup, method)]


TIE_TOLERANCE = 1e-9
"""Accuracies closer than this are ties (sums of the same numbers in another order differ by rounding)."""


def _argmax(values: Sequence[float]) -> int:
    """Index of the largest value; the first of any tie."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best] + TIE_TOLERANCE:
            best = i
    return best


def weave_path(metrics_dir: Path, model: str, setup: str, method: str) -> Path:
    return metrics_dir / model / "weave" / setup / f"{method}.json"


class _Problems:
    """Collects problems per file so one error reports them all."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: Path, message: str) -> None:
        self.items.append(f"{path}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            head = f"{len(self.items)} problem(s) in the metrics files; nothing was written:"
            raise MetricsError("\n  ".join([head, *self.items]))


def _read_json(path: Path, problems: _Problems) -> dict | None:
    if not path.is_file():
        problems.add(path, "file is missing")
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problems.add(path, f"not valid JSON ({error})")
        return None
    if not isinstance(data, dict):
        problems.add(path, f"top level must be a JSON object, got {type(data).__name__}")
        return None
    return data


def _is_accuracy(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and 0.0 <= value <= 100.0)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_per_task(path: Path, key: str, value: Any, tasks: list[str], problems: _Problems) -> bool:
    if not isinstance(value, dict):
        problems.add(path, f"'{key}' must be an object {{task: accuracy}}, got {type(value).__name__}")
        return False
    ok = True
    missing = [t for t in tasks if t not in value]
    if missing:
        problems.add(path, f"'{key}' lacks task(s) {missing} (tasks: {tasks})")
        ok = False
    bad = [t for t in tasks if t in value and not _is_accuracy(value[t])]
    if bad:
        problems.add(path, f"'{key}' has non-accuracy value(s) (need a number in [0, 100]) for {bad}")
        ok = False
    return ok


def _parse_weave(path: Path, data: dict, expect: tuple[str, str, str], poolings: Sequence[str],
                 pool_overs: Sequence[str], problems: _Problems) -> WeaveMetrics | None:
    n_before = len(problems.items)
    required = ["model", "setup", "method", "lambdas", "recommended_lam", "baseline_lam", "tasks",
                "baseline", "recommended", "sweep", "weaving"]
    missing = [k for k in required if k not in data]
    if missing:
        problems.add(path, f"missing key(s) {missing}")
        return None
    for key, want in zip(("model", "setup", "method"), expect):
        if data[key] != want:
            problems.add(path, f"'{key}' is {data[key]!r} but the file's path says {want!r}")
    tasks = data["tasks"]
    if (not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks)
            or len(set(tasks)) != len(tasks)):
        problems.add(path, f"'tasks' must be a non-empty list of distinct names, got {tasks!r}")
        return None
    lambdas = data["lambdas"]
    if not isinstance(lambdas, list) or not lambdas or not all(_is_number(x) for x in lambdas):
        problems.add(path, f"'lambdas' must be a non-empty list of numbers, got {lambdas!r}")
        return None
    for key in ("recommended_lam", "baseline_lam"):
        if not _is_number(data[key]):
            problems.add(path, f"'{key}' must be a number, got {data[key]!r}")
    _check_per_task(path, "baseline", data["baseline"], tasks, problems)
    _check_per_task(path, "recommended", data["recommended"], tasks, problems)
    sweep = data["sweep"]
    if not isinstance(sweep, dict):
        problems.add(path, "'sweep' must be an object {task: [accuracy per lam]}")
    else:
        missing_tasks = [t for t in tasks if t not in sweep]
        if missing_tasks:
            problems.add(path, f"'sweep' lacks task(s) {missing_tasks} (tasks: {tasks})")
        for t in tasks:
            if t in sweep and (not isinstance(sweep[t], list) or len(sweep[t]) != len(lambdas)
                               or not all(_is_accuracy(v) for v in sweep[t])):
                problems.add(path, f"'sweep'['{t}'] must list {len(lambdas)} accuracies in [0, 100] "
                                   f"(one per lam in 'lambdas')")
    weaving = data["weaving"]
    if not isinstance(weaving, dict):
        problems.add(path, "'weaving' must be an object {pooling: {pool_over: {task: accuracy}}}")
    else:
        for pooling in poolings:
            if not isinstance(weaving.get(pooling), dict):
                problems.add(path, f"'weaving' lacks pooling '{pooling}' (configured: {list(poolings)})")
                continue
            for pool_over in pool_overs:
                if pool_over not in weaving[pooling]:
                    problems.add(path, f"'weaving'['{pooling}'] lacks pool_over '{pool_over}' "
                                       f"(configured: {list(pool_overs)})")
                    continue
                _check_per_task(path, f"weaving.{pooling}.{pool_over}", weaving[pooling][pool_over],
                                tasks, problems)
    if len(problems.items) > n_before:
        return None
    hparams = data.get("hparams") or {}
    return WeaveMetrics(
        model=data["model"], setup=data["setup"], method=data["method"],
        hparams=dict(hparams) if isinstance(hparams, dict) else {},
        lambdas=[float(x) for x in lambdas], recommended_lam=float(data["recommended_lam"]),
        baseline_lam=float(data["baseline_lam"]), tasks=list(tasks),
        baseline={t: float(data["baseline"][t]) for t in tasks},
        recommended={t: float(data["recommended"][t]) for t in tasks},
        sweep={t: [float(v) for v in sweep[t]] for t in tasks},
        weaving={p: {o: {t: float(weaving[p][o][t]) for t in tasks} for o in pool_overs} for p in poolings},
    )


def _accuracy_map(path: Path, key: str, value: Any, problems: _Problems) -> dict[str, float]:
    if not isinstance(value, dict) or not all(_is_accuracy(v) for v in value.values()):
        problems.add(path, f"'{key}' must be an object {{name: accuracy in [0, 100]}}")
        return {}
    return {k: float(v) for k, v in value.items()}


def _parse_reference(path: Path, data: dict, model: str, problems: _Problems) -> Reference | None:
    missing = [k for k in ("zeroshot", "finetuned") if k not in data]
    if missing:
        problems.add(path, f"missing key(s) {missing}")
        return None
    if data.get("model", model) != model:
        problems.add(path, f"'model' is {data['model']!r} but the file's path says {model!r}")
    zeroshot = _accuracy_map(path, "zeroshot", data["zeroshot"], problems)
    finetuned = _accuracy_map(path, "finetuned", data["finetuned"], problems)
    cl: dict[str, dict[str, float]] = {}
    raw_cl = data.get("cl", {})
    if not isinstance(raw_cl, dict):
        problems.add(path, "'cl' must be an object {benchmark: {'zeroshot': acc, 'sequential_final': acc}}")
    else:
        for bench, entry in raw_cl.items():
            cl[bench] = _accuracy_map(path, f"cl.{bench}", entry, problems)
    return Reference(model=model, zeroshot=zeroshot, finetuned=finetuned, cl=cl)


def _parse_matrix(path: Path, key: str, value: Any, problems: _Problems) -> SimilarityMatrix | None:
    if not isinstance(value, dict) or "labels" not in value or "matrix" not in value:
        problems.add(path, f"'{key}' must be an object with 'labels' and 'matrix'")
        return None
    labels, matrix = value["labels"], value["matrix"]
    n = len(labels) if isinstance(labels, list) else -1
    square = (isinstance(matrix, list) and len(matrix) == n
              and all(isinstance(row, list) and len(row) == n and all(_is_number(x) for x in row)
                      for row in matrix))
    if n < 1 or not square:
        problems.add(path, f"'{key}.matrix' must be a {max(n, 0)}x{max(n, 0)} list of numbers matching "
                           f"'{key}.labels' (non-empty)")
        return None
    return SimilarityMatrix(labels=[str(x) for x in labels], matrix=[[float(x) for x in row] for row in matrix])


def _parse_similarity(path: Path, data: dict, problems: _Problems) -> Similarity | None:
    if "individual" not in data:
        problems.add(path, "missing key 'individual'")
        return None
    individual = _parse_matrix(path, "individual", data["individual"], problems)
    sequential: dict[str, SimilarityMatrix] = {}
    raw = data.get("sequential", {})
    if not isinstance(raw, dict):
        problems.add(path, "'sequential' must be an object {benchmark: {'labels', 'matrix'}}")
    else:
        for bench, entry in raw.items():
            parsed = _parse_matrix(path, f"sequential.{bench}", entry, problems)
            if parsed is not None:
                sequential[bench] = parsed
    if individual is None:
        return None
    return Similarity(individual=individual, sequential=sequential)


def _check_choices(name: str, given: Sequence[str], valid: Sequence[str]) -> None:
    if not given:
        raise ParamError(f"no {name} given; valid: {choices(valid)}")
    unknown = [g for g in given if g not in valid]
    if unknown:
        raise ParamError(f"unknown {name} {unknown}; valid: {choices(valid)}")
    if len(set(given)) != len(given):
        raise ParamError(f"{name} {list(given)} has duplicates")


def load_metrics(metrics_dir: str | Path, models: Sequence[str], setups: Sequence[str], methods: Sequence[str],
                 poolings: Sequence[str] | None = None, pool_overs: Sequence[str] = POOL_OVERS) -> RunMetrics:
    """Read and validate every metrics file of the configured run.

    Raises `ParamError` for a bad model/setup/method/pooling list and `MetricsError` listing
    every missing file and every missing or malformed entry (file, key, what is wrong).
    """
    poolings = list(POOLINGS) if poolings is None else poolings
    if not models:
        raise ParamError("no models given")
    if len(set(models)) != len(models):
        raise ParamError(f"models {list(models)} has duplicates")
    reserved = [m for m in models if m in RESERVED_MODEL_NAMES]
    if reserved:
        raise ParamError(f"model name(s) {reserved} are reserved in the report's summary")
    _check_choices("setups", setups, SETUPS)
    _check_choices("methods", methods, METHODS)
    _check_choices("poolings", poolings, POOLINGS)
    _check_choices("pool_over", pool_overs, POOL_OVERS)
    if "avg" not in poolings or "all" not in pool_overs:
        raise ParamError("the report needs pooling 'avg' with pool_over 'all' (the paper's Weight Weaving)")
    metrics_dir = Path(metrics_dir)
    problems = _Problems()
    weave: dict[tuple[str, str, str], WeaveMetrics] = {}
    reference: dict[str, Reference] = {}
    similarity: dict[str, Similarity] = {}
    for model in models:
        ref_path = metrics_dir / model / "reference.json"
        data = _read_json(ref_path, problems)
        if data is not None:
            parsed_ref = _parse_reference(ref_path, data, model, problems)
            if parsed_ref is not None:
                reference[model] = parsed_ref
        sim_path = metrics_dir / model / "similarity.json"
        data = _read_json(sim_path, problems)
        if data is not None:
            parsed_sim = _parse_similarity(sim_path, data, problems)
            if parsed_sim is not None:
                similarity[model] = parsed_sim
        for setup in setups:
            for method in methods:
                path = weave_path(metrics_dir, model, setup, method)
                data = _read_json(path, problems)
                if data is None:
                    continue
                parsed = _parse_weave(path, data, (model, setup, method), poolings, pool_overs, problems)
                if parsed is not None:
                    weave[(model, setup, method)] = parsed
    problems.raise_if_any()
    return RunMetrics(models=list(models), setups=[s for s in SETUPS if s in setups],
                      methods=[m for m in METHODS if m in methods], poolings=[p for p in POOLINGS if p in poolings],
                      pool_overs=[o for o in POOL_OVERS if o in pool_overs],
                      weave=weave, reference=reference, similarity=similarity)
