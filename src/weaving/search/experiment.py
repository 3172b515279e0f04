"""MERGE3 end to end on CLIP-style classifiers: response population, IRT fit, searches.

`run_merge3` is the core a pipeline stage or the CLI calls. Steps (Mencattini et al.,
ICML 2025, adapted as `docs/search.md` states):

1. Response population: the pretrained encoder, every fine-tuned endpoint and
   `population_size` seeded random merges (Task Arithmetic and TIES alternately, per-task
   coefficients and densities drawn uniformly on the gene grids), each evaluated on every
   validation item. No published IRT fits exist for these items, so the item parameters
   are fitted here on this population.
2. IRT: the multidimensional 2PL model fitted by MAP (`fit_irt`); each endpoint's ability
   (pretrained and fine-tuned, `J = T + 1`) refitted on all items with the items fixed
   (`fit_ability`); anchors drawn per task (`sample_anchors`).
3. Searches: for every method and fitness kind, `evolve` over the method's genome; a
   candidate is merged (`MergeDecoder`), loaded, and forward-passed on all items
   (`full`) or on the anchors only (the estimators). A genome met twice within a search
   is not evaluated again. The best genome's merge is then evaluated on the test data.
4. Estimator errors: every candidate of the `full` search has all its responses, so each
   estimator is computed from its anchor responses and compared with its full-data
   fitness at no extra forward pass. `audit_estimates=True` also forward-passes every
   candidate of the estimated searches on all items (not counted as spent) and reports
   the errors on their own candidates.

Accuracies and fitness values are in percent; the fitness of a merge is the mean over
tasks of its per-task (estimated) accuracy.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from weaving.errors import InputError, ParamError
from weaving.methods.base import derive_seed
from weaving.search.estimators import (
    ESTIMATED_KINDS,
    FITNESS_KINDS,
    AnchorEstimator,
    check_fitness_kind,
    sample_anchors,
)
from weaving.search.evaluation import (
    CandidateEvaluator,
    LabelledTensors,
    check_disjoint,
)
from weaving.search.evolve import ALGORITHMS, evolve
from weaving.search.genome import (
    GeneGrid,
    Genome,
    GenomeSpec,
    MergeDecoder,
    check_search_method,
    default_coefficient_grid,
    default_density_grid,
)
from weaving.search.irt import fit_ability, fit_irt, minimum_subjects

POPULATION_METHODS: tuple[str, ...] = ("task_arithmetic", "ties")
"""Methods of the random merges in the response population (alternating)."""


def minimum_population_size(num_tasks: int, irt_dims: int) -> int:
    """The fewest random merges `run_merge3` accepts: `max(0, minimum_subjects(irt_dims) - 1 - num_tasks)`.

    The IRT fit sees `1 + num_tasks + population_size` subjects (pretrained, endpoints, merges).
    """
    return max(0, minimum_subjects(irt_dims) - 1 - num_tasks)


def _per_task_percent(responses: np.ndarray, layout) -> dict[str, float]:
    out, start = {}, 0
    for task, size in zip(layout.tasks, layout.sizes):
        out[task] = 100.0 * float(np.mean(responses[start:start + size]))
        start += size
    return out


def _mean(values: Mapping[str, float]) -> float:
    return float(np.mean(list(values.values())))


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ParamError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def build_population(
    evaluator: CandidateEvaluator,
    decoder: MergeDecoder,
    finetuned_sds: Mapping[str, Mapping[str, torch.Tensor]],
    population_size: int,
    *,
    seed: int,
    coefficient_grid: GeneGrid,
    density_grid: GeneGrid,
    progress: bool = False,
) -> dict:
    """Responses `[S, N]` (bool) of the pretrained encoder, the endpoints and `population_size` random merges.

    Returns `{"names": [...], "genomes": [...], "responses": ndarray}`; merge `k` uses
    `POPULATION_METHODS[k % 2]` at per-task levels drawn by `numpy.random.default_rng(seed)`.
    """
    tasks = evaluator.tasks
    rng = np.random.default_rng(seed)
    names, genomes, rows = ["pretrained"], [None], []
    bar = tqdm(total=1 + len(tasks) + population_size, desc="response population", unit="model",
               file=sys.stderr, disable=not progress)
    evaluator.load(None)
    rows.append(evaluator.correctness())
    bar.update()
    for task in tasks:
        evaluator.load_state(finetuned_sds[task])
        rows.append(evaluator.correctness())
        names.append(f"finetuned:{task}")
        genomes.append(None)
        bar.update()
    for k in range(population_size):
        method = POPULATION_METHODS[k % len(POPULATION_METHODS)]
        spec = GenomeSpec(method, tasks, coefficient_grid, density_grid)
        genome = spec.decode(spec.random_levels(rng))
        evaluator.load(decoder.merged(spec, genome))
        rows.append(evaluator.correctness())
        names.append(f"{method}#{k}")
        genomes.append({"method": method, **genome.to_dict()})
        bar.update()
    bar.close()
    return {"names": names, "genomes": genomes, "responses": np.stack(rows)}


class _Search:
    """The fitness of one search: merge, load, forward-pass (all items or anchors), estimate."""

    def __init__(self, spec: GenomeSpec, kind: str, decoder: MergeDecoder, evaluator: CandidateEvaluator,
                 estimator: AnchorEstimator, audit: bool) -> None:
        self.spec, self.kind, self.decoder, self.evaluator, self.estimator = spec, kind, decoder, evaluator, estimator
        self.audit = audit and kind != "full"
        self.cache: dict[tuple[int, ...], list[float]] = {}
        self.full_responses: dict[tuple[int, ...], np.ndarray] = {}
        self.audited: dict[tuple[int, ...], tuple[dict[str, float], dict[str, float]]] = {}
        self.calls = 0

    def __call__(self, levels: list[int]) -> list[float]:
        self.calls += 1
        key = tuple(levels)
        if key in self.cache:
            return self.cache[key]
        genome = self.spec.decode(levels)
        self.evaluator.load(self.decoder.merged(self.spec, genome))
        layout = self.evaluator.layout
        if self.kind == "full":
            responses = self.evaluator.correctness()
            self.full_responses[key] = responses
            per_task = _per_task_percent(responses, layout)
        else:
            if self.audit:
                full = self.evaluator.correctness()
                anchor_responses = full[self.estimator.anchor_index]
            else:
                anchor_responses = self.evaluator.correctness(self.estimator.anchor_index)
            estimates, _ = self.estimator.estimate(anchor_responses)
            per_task = {t: 100.0 * v for t, v in estimates[self.kind].items()}
            if self.audit:
                self.audited[key] = (per_task, _per_task_percent(full, layout))
        values = [per_task[t] for t in layout.tasks]
        self.cache[key] = values
        return values

    @property
    def items_per_candidate(self) -> int:
        return self.evaluator.layout.num_items if self.kind == "full" else self.estimator.num_anchors


def estimator_errors(
    estimator: AnchorEstimator, full_responses: Mapping[tuple[int, ...], np.ndarray], layout
) -> dict[str, dict[str, float]]:
    """Per estimator, over candidates with all responses known: the mean absolute error (points)
    of the fitness (mean over tasks) and of the per-task accuracies against the full-data values."""
    errors: dict[str, dict[str, list[float]]] = {k: {"fitness": [], "task": []} for k in ESTIMATED_KINDS}
    for responses in full_responses.values():
        truth = _per_task_percent(responses, layout)
        estimates, _ = estimator.estimate(responses[estimator.anchor_index])
        for kind in ESTIMATED_KINDS:
            per_task = {t: 100.0 * v for t, v in estimates[kind].items()}
            errors[kind]["fitness"].append(abs(_mean(per_task) - _mean(truth)))
            errors[kind]["task"].extend(abs(per_task[t] - truth[t]) for t in layout.tasks)
    return {
        kind: {
            "fitness_mae_pp": float(np.mean(v["fitness"])) if v["fitness"] else float("nan"),
            "task_mae_pp": float(np.mean(v["task"])) if v["task"] else float("nan"),
            "candidates": len(v["fitness"]),
        }
        for kind, v in errors.items()
    }


def _audit_errors(audited: Mapping[tuple[int, ...], tuple[dict[str, float], dict[str, float]]]) -> dict[str, float]:
    fitness = [abs(_mean(est) - _mean(truth)) for est, truth in audited.values()]
    task = [abs(est[t] - truth[t]) for est, truth in audited.values() for t in truth]
    return {"fitness_mae_pp": float(np.mean(fitness)), "task_mae_pp": float(np.mean(task)), "candidates": len(fitness)}


def _run_evolve(search: _Search, spec: GenomeSpec, algorithm: str, num_tasks: int, population: int,
                generations: int, seed: int, progress: bool):
    """GA on the mean over tasks of `search`, or NSGA-II on its per-task values."""
    levels = [grid.levels for grid in spec.grids]
    if algorithm == "nsga2":
        return evolve(search, levels, seed=seed, population=population, generations=generations,
                      algorithm="nsga2", num_objectives=num_tasks, progress=progress)
    return evolve(lambda genes: [float(np.mean(search(genes)))], levels, seed=seed, population=population,
                  generations=generations, algorithm="ga", progress=progress)


def run_merge3(
    encoder: torch.nn.Module,
    pretrained_sd: Mapping[str, torch.Tensor],
    finetuned_sds: Mapping[str, Mapping[str, torch.Tensor]],
    heads: Mapping[str, torch.Tensor],
    val: Mapping[str, LabelledTensors],
    test: Mapping[str, LabelledTensors] | None = None,
    *,
    methods: Sequence[str] = ("task_arithmetic",),
    fitness_kinds: Sequence[str] = FITNESS_KINDS,
    population_size: int = 20,
    irt_dims: int = 2,
    anchors_per_task: int = 10,
    search_population: int = 25,
    generations: int = 7,
    algorithm: str = "ga",
    coefficient_grid: GeneGrid | None = None,
    density_grid: GeneGrid | None = None,
    seed: int = 0,
    ability_prior_scale: float | None = 1.0,
    audit_estimates: bool = False,
    disjoint_from: Mapping[str, Mapping[str, LabelledTensors]] | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    keep_candidates: bool = False,
    progress: bool = False,
) -> dict:
    """MERGE3 on the tasks of `val` (see the module docstring); a JSON-able dict of results.

    `encoder` is the image encoder (keys of `pretrained_sd`), `finetuned_sds[task]` each
    task's fine-tuned encoder state, `heads[task]` `[C, E]`, `val`/`test` labelled tensors
    per task. `disjoint_from` (e.g. `{"test": test, "train": train}`) is checked against
    `val` by `check_disjoint`. Every argument is validated before any forward pass.
    Seeds: anchors, population, IRT initialisation and each search derive theirs from
    `seed` (`weaving.methods.base.derive_seed`); DARE's masks use `seed`.
    """
    started = time.perf_counter()
    methods = [check_search_method(m) for m in methods]
    kinds = [check_fitness_kind(k) for k in fitness_kinds]
    if not methods or not kinds:
        raise ParamError("give at least one method and one fitness kind")
    if algorithm not in ALGORITHMS:
        raise ParamError(f"unknown search algorithm {algorithm!r}; valid: {', '.join(ALGORITHMS)}")
    irt_dims = _check_int(irt_dims, "irt_dims", 1)
    population_size = _check_int(population_size, "population_size", 0)
    search_population = _check_int(search_population, "search_population", 2)
    generations = _check_int(generations, "generations", 1)
    coefficient_grid = coefficient_grid or default_coefficient_grid()
    density_grid = density_grid or default_density_grid()
    tasks = tuple(val)
    if not tasks:
        raise InputError("no validation data")
    if set(finetuned_sds) != set(tasks):
        raise InputError(f"fine-tuned models given for {sorted(finetuned_sds)}, validation data for {sorted(tasks)}")
    if test is not None and set(test) != set(tasks):
        raise InputError(f"test data given for {sorted(test)}, validation data for {sorted(tasks)}")
    least = minimum_population_size(len(tasks), irt_dims)
    if population_size < least:
        raise ParamError(
            f"population_size={population_size} is too small to fit the IRT model with irt_dims={irt_dims}: "
            f"the fit needs {minimum_subjects(irt_dims)} subjects, the pretrained model and {len(tasks)} endpoints "
            f"give {1 + len(tasks)}, so population_size must be >= {least}"
        )
    specs = {m: GenomeSpec(m, tasks, coefficient_grid, density_grid) for m in methods}
    GenomeSpec("ties", tasks, coefficient_grid, density_grid)  # the population's TIES merges
    if disjoint_from:
        check_disjoint(val, disjoint_from)

    evaluator = CandidateEvaluator(encoder, pretrained_sd, heads, val, batch_size=batch_size, device=device)
    layout = evaluator.layout
    anchors = sample_anchors(layout, anchors_per_task, derive_seed("merge3", seed, "anchors"))

    from weaving import task_vectors

    taus = dict(zip(tasks, task_vectors(pretrained_sd, [finetuned_sds[t] for t in tasks])))
    decoder = MergeDecoder(taus, seed=seed)

    clock = time.perf_counter()
    population = build_population(
        evaluator, decoder, finetuned_sds, population_size, seed=derive_seed("merge3", seed, "population"),
        coefficient_grid=coefficient_grid, density_grid=density_grid, progress=progress,
    )
    population_seconds = time.perf_counter() - clock

    clock = time.perf_counter()
    responses = population["responses"]
    irt = fit_irt(responses, irt_dims, seed=derive_seed("merge3", seed, "irt"))
    endpoint_rows = range(1 + len(tasks))  # pretrained, then the fine-tuned endpoints
    endpoint_abilities = np.stack([
        fit_ability(responses[j], irt.items, prior_scale=ability_prior_scale, init=irt.abilities[j])
        for j in endpoint_rows
    ])
    estimator = AnchorEstimator(layout, irt.items, endpoint_abilities, anchors)
    irt_seconds = time.perf_counter() - clock

    observed = responses.mean(axis=1)
    from weaving.search.irt import item_curve

    predicted = item_curve(irt.abilities, irt.items).mean(axis=1)
    result: dict = {
        "tasks": list(tasks),
        "config": {
            "methods": methods, "fitness_kinds": kinds, "population_size": population_size, "irt_dims": irt_dims,
            "anchors_per_task": anchors_per_task, "search_population": search_population,
            "generations": generations, "algorithm": algorithm, "seed": seed,
            "coefficient_grid": [coefficient_grid.low, coefficient_grid.high, coefficient_grid.step],
            "density_grid": [density_grid.low, density_grid.high, density_grid.step],
            "ability_prior_scale": ability_prior_scale, "audit_estimates": audit_estimates,
        },
        "items": {
            "per_task": dict(zip(layout.tasks, layout.sizes)),
            "total": layout.num_items,
            "anchors_per_task": anchors_per_task,
            "anchors_total": estimator.num_anchors,
            "anchors": {t: (anchors[t] - layout.task_items(t)[0]).tolist() for t in tasks},
        },
        "population": {
            "subjects": population["names"],
            "genomes": population["genomes"],
            "val_accuracy": {
                name: _per_task_percent(row, layout) for name, row in zip(population["names"], responses)
            },
            "seconds": population_seconds,
            "item_evaluations": int(responses.size),
        },
        "irt": {
            "dims": irt_dims,
            "subjects": int(responses.shape[0]),
            "negative_log_posterior": irt.negative_log_posterior,
            "iterations": irt.iterations,
            "subject_accuracy_mae_pp": float(100.0 * np.mean(np.abs(observed - predicted))),
            "endpoint_abilities": {name: endpoint_abilities[j].tolist()
                                   for j, name in zip(endpoint_rows, population["names"])},
            "seconds": irt_seconds,
        },
        "cost_ratio": {kind: layout.num_items / (layout.num_items if kind == "full" else estimator.num_anchors)
                       for kind in kinds},
        "searches": {},
        "estimator_errors": {},
    }

    for method in methods:
        spec = specs[method]
        result["searches"][method] = {}
        full_candidates: dict[tuple[int, ...], np.ndarray] = {}
        audit: dict[str, dict[str, float]] = {}
        for kind in kinds:
            search = _Search(spec, kind, decoder, evaluator, estimator, audit_estimates)
            forwarded_before = evaluator.items_forwarded
            clock = time.perf_counter()
            outcome = _run_evolve(search, spec, algorithm, len(tasks), search_population, generations,
                                  derive_seed("merge3", seed, "search", method, kind), progress)
            search_seconds = time.perf_counter() - clock
            forwarded = evaluator.items_forwarded - forwarded_before
            best_genome: Genome = spec.decode(outcome.best_levels)
            best_per_task = dict(zip(tasks, search.cache[tuple(outcome.best_levels)]))
            evaluator.load(decoder.merged(spec, best_genome))
            final_val = _per_task_percent(evaluator.correctness(), layout)
            final_test = evaluator.accuracy(test) if test is not None else None
            record = {
                "method": method,
                "kind": kind,
                "algorithm": algorithm,
                "best_levels": outcome.best_levels,
                "best_genome": best_genome.to_dict(),
                "best_fitness": _mean(best_per_task),
                "best_fitness_per_task": best_per_task,
                "trace": outcome.generations,
                "fitness_calls": search.calls,
                "distinct_candidates": len(search.cache),
                "items_per_candidate": search.items_per_candidate,
                "item_evaluations": len(search.cache) * search.items_per_candidate,
                "items_forwarded": forwarded,
                "seconds": search_seconds,
                "final": {
                    "val_accuracy": final_val,
                    "val_mean": _mean(final_val),
                    "test_accuracy": final_test,
                    "test_mean": _mean(final_test) if final_test is not None else None,
                },
            }
            if keep_candidates:
                record["candidates"] = [
                    {"generation": e.generation, "levels": e.levels, "fitness": e.fitness} for e in outcome.evaluations
                ]
            result["searches"][method][kind] = record
            if kind == "full":
                full_candidates = search.full_responses
            if search.audited:
                audit[kind] = _audit_errors(search.audited)
        errors = estimator_errors(estimator, full_candidates, layout) if full_candidates else {}
        result["estimator_errors"][method] = {"on_full_search_candidates": errors, "on_own_candidates": audit}
    result["seconds"] = time.perf_counter() - started
    return result


def merged_encoder_state(
    pretrained_sd: Mapping[str, torch.Tensor],
    finetuned_sds: Mapping[str, Mapping[str, torch.Tensor]],
    method: str,
    genome: Mapping[str, Mapping[str, float]],
    *,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """`theta_pre + M(genome)`: the encoder of a genome (`{"coefficients": {task: c}, "densities": ...}`,
    as `run_merge3` records `best_genome`); tasks in `finetuned_sds` order, `seed` DARE's."""
    from weaving import apply_task_vector, task_vectors

    tasks = tuple(finetuned_sds)
    spec = GenomeSpec(check_search_method(method), tasks)
    if set(genome.get("coefficients", {})) != set(tasks):
        raise ParamError(f"genome coefficients must name the tasks {list(tasks)}, got {sorted(genome.get('coefficients', {}))}")
    taus = dict(zip(tasks, task_vectors(pretrained_sd, [finetuned_sds[t] for t in tasks])))
    decoded = Genome(dict(genome["coefficients"]), dict(genome["densities"]) if genome.get("densities") else None)
    if spec.has_density and decoded.densities is None:
        raise ParamError(f"a {method} genome needs densities")
    return apply_task_vector(pretrained_sd, MergeDecoder(taus, seed=seed).merged(spec, decoded))
