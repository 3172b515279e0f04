"""Reading and validating the pipeline's metrics files (docs/contracts.md, "Metrics").

Every file is validated by its model in `weaving.metrics` (the one its stage writes with);
on top, what depends on the run: each file's `model`, `setup` and `method` agree with its
path, and every weave record has the configured poolings and pool_over. Everything is
checked before anything is computed: every problem found in every file is collected, and
one `MetricsError` names each file and what is wrong in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from weaving.catalogue import METHOD_ENTRIES, POOL_OVER, POOLING_ENTRIES, SETUP_ENTRIES
from weaving.errors import InputError, ParamError, choices
from weaving.metrics import (
    MetricsFile,
    MetricsFileError,
    ReferenceMetrics,
    SimilarityMatrix,
    SimilarityMetrics,
    WeaveMetrics,
    read_json_object,
)

# The registries are read at call time, so entries registered after import count too.
SETUPS = SETUP_ENTRIES.keys()
METHODS = METHOD_ENTRIES.keys()
POOLINGS = POOLING_ENTRIES.keys()
POOL_OVERS: tuple[str, ...] = POOL_OVER
RESERVED_MODEL_NAMES: frozenset[str] = frozenset({"avg", "seeds"})

__all__ = ["MetricsError", "RunMetrics", "WeaveMetrics", "ReferenceMetrics", "SimilarityMetrics", "SimilarityMatrix",
           "load_metrics", "weave_path", "SETUPS", "METHODS", "POOLINGS", "POOL_OVERS"]


class MetricsError(InputError):
    """Missing or malformed metrics files; the message lists every problem, one per line."""


@dataclass(frozen=True)
class RunMetrics:
    """Every metrics file of one run, for the configured models, setups, methods, poolings."""

    models: list[str]
    setups: list[str]
    methods: list[str]
    poolings: list[str]
    pool_overs: list[str]
    weave: dict[tuple[str, str, str], WeaveMetrics]
    reference: dict[str, ReferenceMetrics]
    similarity: dict[str, SimilarityMetrics]

    def get(self, model: str, setup: str, method: str) -> WeaveMetrics:
        return self.weave[(model, setup, method)]


def replicate_folder(metrics_dir: Path, model: str, seed: int | None = None) -> Path:
    """`<metrics_dir>/<model>/seed<seed>/`: the metrics of one replicate (the pipeline's params `seeds`);
    `<metrics_dir>/<model>/` when `seed` is None (a run without replicate folders)."""
    folder = Path(metrics_dir) / model
    return folder if seed is None else folder / f"seed{seed}"


def weave_path(metrics_dir: Path, model: str, setup: str, method: str, seed: int | None = None) -> Path:
    return replicate_folder(metrics_dir, model, seed) / "weave" / method / f"{setup}.json"


class _Problems:
    """Collects problems per file so one error reports them all."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: Path, message: str) -> None:
        self.items.append(f"{path}: {message}")

    def add_file_error(self, error: MetricsFileError) -> None:
        for message in error.problems:
            self.add(error.path, message)

    def raise_if_any(self) -> None:
        if self.items:
            head = f"{len(self.items)} problem(s) in the metrics files; nothing was written:"
            raise MetricsError("\n  ".join([head, *self.items]))


F = TypeVar("F", bound=MetricsFile)


def _read(model: type[F], path: Path, expect: dict[str, str], problems: _Problems) -> F | None:
    """`path` validated by `model`, or None with its problems collected. `expect`: the values the
    file's path gives to keys of the file (a disagreement is reported even if the file is otherwise bad)."""
    try:
        data: dict[str, Any] = read_json_object(path)
    except MetricsFileError as error:
        problems.add_file_error(error)
        return None
    for key, want in expect.items():
        if key in data and data[key] != want:
            problems.add(path, f"'{key}' is {data[key]!r} but the file's path says {want!r}")
    try:
        return model.from_data(data, path)
    except MetricsFileError as error:
        problems.add_file_error(error)
        return None


def _check_configured_weaving(path: Path, record: WeaveMetrics, poolings: Sequence[str], pool_overs: Sequence[str],
                              problems: _Problems) -> None:
    """Every configured pooling and pool_over is in `record.weaving` (the report reads them all)."""
    for pooling in poolings:
        if pooling not in record.weaving:
            problems.add(path, f"'weaving' lacks pooling '{pooling}' (configured: {list(poolings)})")
            continue
        for pool_over in pool_overs:
            if pool_over not in record.weaving[pooling]:
                problems.add(path, f"'weaving'['{pooling}'] lacks pool_over '{pool_over}' "
                                   f"(configured: {list(pool_overs)})")


def _check_choices(name: str, given: Sequence[str], valid: Sequence[str]) -> None:
    if not given:
        raise ParamError(f"no {name} given; valid: {choices(valid)}")
    unknown = [g for g in given if g not in valid]
    if unknown:
        raise ParamError(f"unknown {name} {unknown}; valid: {choices(valid)}")
    if len(set(given)) != len(given):
        raise ParamError(f"{name} {list(given)} has duplicates")


def load_metrics(metrics_dir: str | Path, models: Sequence[str], setups: Sequence[str], methods: Sequence[str],
                 poolings: Sequence[str] | None = None, pool_overs: Sequence[str] = POOL_OVERS,
                 seed: int | None = None) -> RunMetrics:
    """Read and validate every metrics file of the configured run (of replicate `seed`: the files under
    `<model>/seed<seed>/`, see `replicate_folder`).

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
    reference: dict[str, ReferenceMetrics] = {}
    similarity: dict[str, SimilarityMetrics] = {}
    for model in models:
        folder = replicate_folder(metrics_dir, model, seed)
        ref = _read(ReferenceMetrics, folder / "reference.json", {"model": model}, problems)
        if ref is not None:
            reference[model] = ref
        sim = _read(SimilarityMetrics, folder / "similarity.json", {}, problems)
        if sim is not None:
            similarity[model] = sim
        for setup in setups:
            for method in methods:
                path = weave_path(metrics_dir, model, setup, method, seed)
                record = _read(WeaveMetrics, path, {"model": model, "setup": setup, "method": method}, problems)
                if record is not None:
                    _check_configured_weaving(path, record, poolings, pool_overs, problems)
                    weave[(model, setup, method)] = record
    problems.raise_if_any()
    return RunMetrics(models=list(models), setups=[s for s in SETUPS if s in setups],
                      methods=[m for m in METHODS if m in methods], poolings=[p for p in POOLINGS if p in poolings],
                      pool_overs=[o for o in POOL_OVERS if o in pool_overs],
                      weave=weave, reference=reference, similarity=similarity)
