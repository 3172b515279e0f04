"""Benchmark: MERGE3 wall time, full-data fitness against IRT-estimated fitness.

The embedded suite's shape: the tiny CLIP (`weaving-tiny-clip`: ViT 32 px, patch 8, width
128, 4 layers; 0.84M encoder parameters) at **random weights**, T = 6 tasks of synthetic
labelled tensors (Gaussian images, 10 classes, random unit heads), fine-tuned encoders =
pretrained + seeded Gaussian perturbations. Accuracies are therefore near chance and the
estimator errors say nothing about quality: this measures time only. (The pipeline's
validation tensors do not exist yet: `data.limits.val` is 0 in the embedded profile.)

It times the pieces of one candidate evaluation (decode a genome into a merge, load it,
forward-pass all validation items or the anchors only, the IRT estimate), then one
`run_merge3` (response population, IRT fit, one search per fitness kind) and records the
wall time per generation and in total of each search. Writes
`benchmarks/results/bench_search.json` (with the machine's load average before and after:
the development machines are shared) and prints a markdown table.

    python benchmarks/bench_search.py                         # embedded sizes, 1 torch thread
    python benchmarks/bench_search.py --threads 2 --val 100 --anchors 4
    python benchmarks/bench_search.py --quick                 # small, for a check
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "bench_search.json"
TASKS = ("mnist", "fashion_mnist", "optdigits", "ising", "cahn_hilliard", "textures")


def build(val_per_task: int, test_per_task: int, seed: int = 0):
    from weaving.clip.models import create_model

    g = torch.Generator().manual_seed(seed)
    encoder = create_model("weaving-tiny-clip", seed=seed).visual
    pretrained = {k: v.clone() for k, v in encoder.state_dict().items()}
    finetuned = {t: {k: v + 0.02 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                     for k, v in pretrained.items()} for t in TASKS}
    heads = {t: torch.nn.functional.normalize(torch.randn(10, 128, generator=g), dim=-1) for t in TASKS}

    def labelled(n):
        return {t: {"images": torch.randn(n, 3, 32, 32, generator=g), "labels": torch.randint(0, 10, (n,), generator=g)}
                for t in TASKS}

    return encoder, pretrained, finetuned, heads, labelled(val_per_task), labelled(test_per_task)


def best_of(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def components(encoder, pretrained, finetuned, heads, val, anchors: int, repeats: int) -> dict:
    """Seconds of each piece of one candidate evaluation (fastest of `repeats`)."""
    from weaving import task_vectors
    from weaving.search.estimators import AnchorEstimator, sample_anchors
    from weaving.search.evaluation import CandidateEvaluator
    from weaving.search.genome import GenomeSpec, MergeDecoder
    from weaving.search.irt import fit_ability, fit_irt

    evaluator = CandidateEvaluator(encoder, pretrained, heads, val)
    taus = dict(zip(TASKS, task_vectors(pretrained, [finetuned[t] for t in TASKS])))
    decoder = MergeDecoder(taus)
    rng = np.random.default_rng(0)
    out = {}
    for method in ("task_arithmetic", "ties", "dare"):
        spec = GenomeSpec(method, TASKS)
        genome = spec.decode(spec.random_levels(rng))
        decoder.merged(spec, genome)  # fills the per-(task, density) mask caches of this genome
        out[f"decode_{method}"] = best_of(lambda spec=spec, genome=genome: decoder.merged(spec, genome), repeats)
    spec = GenomeSpec("task_arithmetic", TASKS)
    merged = decoder.merged(spec, spec.decode(spec.random_levels(rng)))
    out["load"] = best_of(lambda: evaluator.load(merged), repeats)
    anchor_index = np.concatenate(list(sample_anchors(evaluator.layout, anchors, 0).values()))
    out["forward_all_items"] = best_of(lambda: evaluator.correctness(), repeats)
    out["forward_anchors"] = best_of(lambda: evaluator.correctness(anchor_index), repeats)
    out["items_all"] = evaluator.layout.num_items
    out["items_anchors"] = len(anchor_index)
    responses = (rng.random((27, evaluator.layout.num_items)) < 0.6).astype(float)
    start = time.perf_counter()
    irt = fit_irt(responses, 2, seed=0)
    out["irt_fit_27_subjects"] = time.perf_counter() - start
    abilities = np.stack([fit_ability(responses[j], irt.items, prior_scale=1.0) for j in range(7)])
    estimator = AnchorEstimator(evaluator.layout, irt.items, abilities, sample_anchors(evaluator.layout, anchors, 0))
    out["estimate"] = best_of(lambda: estimator.estimate(responses[0][estimator.anchor_index]), repeats)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--val", type=int, default=100, help="validation items per task (default 100)")
    parser.add_argument("--test", type=int, default=500, help="test items per task (default 500)")
    parser.add_argument("--anchors", type=int, default=4, help="anchors per task (default 4: 25x at 100)")
    parser.add_argument("--population-size", type=int, default=20)
    parser.add_argument("--irt-dims", type=int, default=2)
    parser.add_argument("--search-population", type=int, default=25)
    parser.add_argument("--generations", type=int, default=7)
    parser.add_argument("--methods", nargs="+", default=["task_arithmetic"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="val 20, test 20, population 8, 2 generations")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.quick:
        args.val, args.test, args.search_population, args.generations, args.repeats = 20, 20, 8, 2, 1
    torch.set_num_threads(args.threads)

    from weaving.atomic import write_json
    from weaving.search.experiment import run_merge3

    load_before = os.getloadavg()
    encoder, pretrained, finetuned, heads, val, test = build(args.val, args.test)
    parts = components(encoder, pretrained, finetuned, heads, val, args.anchors, args.repeats)
    start = time.perf_counter()
    result = run_merge3(
        encoder, pretrained, finetuned, heads, val, test, methods=args.methods, population_size=args.population_size,
        irt_dims=args.irt_dims, anchors_per_task=args.anchors, search_population=args.search_population,
        generations=args.generations, seed=0,
    )
    total = time.perf_counter() - start
    searches = {
        method: {
            kind: {
                "seconds": s["seconds"],
                "seconds_per_generation": [g["seconds"] for g in s["trace"]],
                "distinct_candidates": s["distinct_candidates"],
                "items_per_candidate": s["items_per_candidate"],
                "item_evaluations": s["item_evaluations"],
                "final_test_seconds_excluded": True,
            }
            for kind, s in by_kind.items()
        }
        for method, by_kind in result["searches"].items()
    }
    record = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads,
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "data": "tiny CLIP at random weights, synthetic Gaussian images, 6 tasks",
        "sizes": {"val_per_task": args.val, "test_per_task": args.test, "anchors_per_task": args.anchors,
                  "population_size": args.population_size, "irt_dims": args.irt_dims,
                  "search_population": args.search_population, "generations": args.generations},
        "components_seconds": parts,
        "run_merge3": {"total_seconds": total, "population_seconds": result["population"]["seconds"],
                       "irt_seconds": result["irt"]["seconds"], "searches": searches},
    }
    write_json(args.out, record)
    print("components (s): " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in parts.items()))
    print(f"population {result['population']['seconds']:.1f} s, IRT {result['irt']['seconds']:.2f} s, "
          f"total {total:.1f} s (load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f})")
    print("| method | fitness | items / candidate | candidates | item evaluations | s / generation (mean) | search s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for method, by_kind in searches.items():
        for kind, s in by_kind.items():
            print(f"| {method} | {kind} | {s['items_per_candidate']} | {s['distinct_candidates']} | "
                  f"{s['item_evaluations']} | {np.mean(s['seconds_per_generation']):.2f} | {s['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
