"""Stage `merge3@<model>`: MERGE3, evolutionary merging of the multi-task suite with IRT-estimated fitness.

MERGE3 (Mencattini et al., ICML 2025; `weaving.search`, docs/search.md): the validation items are
`merge3.items.per_task` images of each task of `suite.mtl`, a seeded class-proportional slice of the
prepared `merge3.items.split` (checked disjoint from the task's train and test splits by source id).
`weaving.search.run_merge3` then evaluates the response population (the pretrained encoder, the
fine-tuned endpoints and `merge3.population_size` random merges) on every item, fits the 2PL IRT
model, and runs one genetic search per method of `merge3.methods` and fitness kind of
`merge3.fitness` (`full`: every item; `anchors`, `mp_irt`, `gmp_irt`: `merge3.anchors_per_task`
anchors per task), each best genome's merge then evaluated on the test sets. The stage also
measures Task Arithmetic with one lam for all tasks on the same items and test data (the
recommended lam, and the lam chosen on the items). Writes `metrics/<model>/search/merge3.json`
(`weaving.metrics_search.Merge3Metrics`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from _common import compute_device, paths, stage, stage_params

from weaving_pipeline.params import Params

if TYPE_CHECKING:
    from weaving.metrics_search import Merge3Metrics


def merge3_stage(params: Params, model_name: str) -> Merge3Metrics:
    """Run MERGE3 and the baselines, write the metrics file (see the module docstring)."""
    from weaving import task_vectors
    from weaving.clip import load_pretrained
    from weaving.io import load_state_dict
    from weaving.metrics_search import merge3_metrics
    from weaving.search.evaluation import CandidateEvaluator
    from weaving.search.experiment import run_merge3
    from weaving.search.genome import GeneGrid, MergeDecoder
    from weaving_pipeline.search_inputs import task_arithmetic_baselines, validation_items
    from weaving_pipeline.tsv_inputs import suite_inputs

    started = time.perf_counter()
    config = params.merge3
    device = compute_device()
    model = load_pretrained(paths.pretrained(model_name), device=device)
    val = validation_items(params, model)
    heads, test, _ = suite_inputs(params, model_name)
    tasks = tuple(params.suite.mtl)
    pretrained = load_state_dict(paths.pretrained_visual(model_name))
    finetuned = {t: load_state_dict(paths.finetuned(model_name, t, seed=params.seed)) for t in tasks}
    coefficient = GeneGrid(*config.coefficient_bounds, config.step, "merge3.coefficient_bounds")
    density = GeneGrid(*config.density_bounds, config.step, "merge3.density_bounds")
    print(f"[merge3@{model_name}] {len(tasks)} tasks x {config.items.per_task} items "
          f"({config.items.split} split), {config.anchors_per_task} anchors per task; "
          f"methods {', '.join(config.methods)}; fitness {', '.join(config.fitness)}")
    val_tensors = {t: {"images": v["images"], "labels": v["labels"]} for t, v in val.items()}
    result = run_merge3(
        model.visual, pretrained, finetuned, heads, val_tensors, test,
        methods=config.methods, fitness_kinds=config.fitness, population_size=config.population_size,
        irt_dims=config.irt_dims, anchors_per_task=config.anchors_per_task,
        search_population=config.search.population, generations=config.search.generations,
        algorithm=config.search.algorithm, coefficient_grid=coefficient, density_grid=density,
        seed=config.seed, audit_estimates=config.audit, batch_size=params.eval.batch_size, device=device,
        progress=True,
    )
    evaluator = CandidateEvaluator(model.visual, pretrained, heads, val_tensors, batch_size=params.eval.batch_size,
                                   device=device)
    taus = dict(zip(tasks, task_vectors(pretrained, [finetuned[t] for t in tasks])))
    baselines = task_arithmetic_baselines(evaluator, MergeDecoder(taus, seed=config.seed), tasks, test,
                                          coefficient.values(), params.recommended_lam("task_arithmetic"))
    metrics = merge3_metrics(model_name, result, split=config.items.split, items_seed=config.items.seed,
                             reported=config.reported, baselines=baselines,
                             seconds=time.perf_counter() - started)
    metrics.write(paths.search_metrics(model_name, "merge3"))
    return metrics


def main() -> None:
    params, (model_name,) = stage_params({"model": lambda p: p.models})
    name = f"merge3@{model_name}"
    with stage(name, threads=params.threads):
        metrics = merge3_stage(params, model_name)
        for method, by_kind in metrics.searches.items():
            for kind, record in by_kind.items():
                print(f"[{name}] {method} {kind}: test {record.final.test_mean:.2f}%, "
                      f"{record.item_evaluations} item evaluations, {record.seconds:.1f} s")
        head = metrics.headline
        if head.final_gap_pp is not None:
            print(f"[{name}] {head.reported}: cost ratio {head.cost_ratio:g}x, final gap to full "
                  f"{head.final_gap_pp:+.2f} points")


if __name__ == "__main__":
    main()
