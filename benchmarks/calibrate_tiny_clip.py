"""Calibrate the embedded tiny CLIP: times and accuracies of the whole CLIP side on the embedded suite.

Measures, with torch threads fixed (default 2):
- pretraining time (all six `pretrain` pools) and its final loss;
- per task: zero-shot accuracy, fine-tuning time, fine-tuned accuracy, time to build the
  eval cache and to evaluate one model on the cached test set (median of repeats);
- task arithmetic merges inline (pre + lam * sum_t (ft_t - pre)) at several lam, and the
  plain average of the fine-tuned encoders (lam = 1/T), evaluated on every task;
- mean pairwise cosine similarity of the task vectors;
- class-incremental sequential fine-tuning (mnist/fashion_mnist, 2 and 5 splits): time per
  split and final accuracy on the whole test set with the head over all classes.
Wall time and process CPU time are both recorded with the load average, because the machine
may be shared.

    .venv/bin/python benchmarks/calibrate_tiny_clip.py --out benchmarks/results/calibrate_tiny_clip.json
    .venv/bin/python benchmarks/calibrate_tiny_clip.py --pretrain steps=400 --finetune lr=1e-3

Task arithmetic over the whole MTL search space of params (`method_params.task_arithmetic.
search_space.mtl`): every run records, per lam, the task-averaged accuracy of
pre + lam * sum_t tau_t, the best single lam and whether it is interior (strictly between the
space's ends). `--sweep KEY=V1,V2 ...` fine-tunes every combination of the values (over
`--finetune`) in one process, from one pretrained model, and writes one record per recipe to
`--sweep-out` (records of other recipes already there are kept, so sweeps can be continued);
`--deadline HH:MM` (UTC) starts no recipe that the previous one's time says would end later.

    .venv/bin/python benchmarks/calibrate_tiny_clip.py --no-sequential --reuse-pretrained \
        --sweep lr=1e-3,5e-4 steps=250,150 --deadline 22:25
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# With OpenMP's default (active) waiting, 2 threads slow down ~30x as soon as another process
# takes a core (measured: 3.5 s instead of 0.11 s a fine-tuning step); passive waiting does not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from weaving import parse_search_space  # noqa: E402
from weaving.clip import (  # noqa: E402
    FinetuneRecipe,
    PretrainRecipe,
    cache_eval_tensors,
    create_model,
    evaluate,
    finetune,
    load_pretrained,
    pretrain,
    save_pretrained,
    zeroshot_head,
)
from weaving.datasets import class_splits, load_prepared, prepare  # noqa: E402
from weaving_pipeline.params import load_params  # noqa: E402

SUITE = ["mnist", "fashion_mnist", "optdigits", "ising", "cahn_hilliard", "textures"]
CL_BENCHMARKS = {"mnist-s2": ("mnist", 2), "mnist-s5": ("mnist", 5),
                 "fashion_mnist-s2": ("fashion_mnist", 2), "fashion_mnist-s5": ("fashion_mnist", 5)}
LIMITS = {"pretrain": 3000, "train": 2000, "val": 0, "test": 500}
LAMBDAS = [0.3, 0.5, 0.7, 1.0]


class Timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def as_dict(self) -> dict:
        return {"wall_s": round(self.wall, 3), "cpu_s": round(self.cpu, 3)}


def parse_overrides(pairs: list[str], base: dict, recipe_cls):
    """`key=value` pairs (JSON values) over `base`, validated by the recipe class."""
    fields = dict(base)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"override {pair!r} is not key=value")
        try:
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            fields[key] = value
    return recipe_cls(**fields)


def merged_visual(pre: dict, finetuned: list[dict], lam: float) -> dict:
    return {k: pre[k] + lam * sum(ft[k] - pre[k] for ft in finetuned) if pre[k].is_floating_point() else pre[k]
            for k in pre}


def ta_lambda_search(model, pre: dict, finetuned: list[dict], heads: list, caches: list, space: list[float]) -> dict:
    """Task arithmetic at every lam of `space`: task-averaged accuracy, the best lam, interior or not."""
    per_lam = {}
    for lam in space:
        visual = merged_visual(pre, finetuned, lam)
        per_lam[lam] = statistics.mean(evaluate(model, visual, h, c) for h, c in zip(heads, caches))
    best = max(space, key=lambda lam: per_lam[lam])  # first of ties: the smallest lam
    return {"space": space, "accuracy": {str(lam): acc for lam, acc in per_lam.items()},
            "best_lam": best, "best_accuracy": per_lam[best], "interior": min(space) < best < max(space)}


def parse_sweep(pairs: list[str]) -> list[dict]:
    """`KEY=V1,V2` pairs -> every combination, as lists of `key=value` overrides (JSON values)."""
    axes = []
    for pair in pairs:
        key, sep, values = pair.partition("=")
        if not sep or not values:
            raise SystemExit(f"sweep axis {pair!r} is not KEY=V1,V2,...")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(combo) for combo in itertools.product(*axes)]


def run_sweep(args, model, pre_visual: dict, datasets: dict, heads: dict, caches: dict, zeroshot: dict,
              base: dict, space: list[float], results: dict) -> None:
    """Fine-tune the tasks with each recipe of `--sweep`, task arithmetic over `space`; one record per recipe."""
    out = Path(args.sweep_out)
    previous = json.loads(out.read_text())["records"] if out.is_file() else []
    deadline = None
    if args.deadline:
        hours, minutes = (int(x) for x in args.deadline.split(":"))
        deadline = datetime.datetime.now(datetime.timezone.utc).replace(hour=hours, minute=minutes, second=0)
    last_wall = 0.0
    for overrides in parse_sweep(args.sweep):
        recipe = parse_overrides(overrides, base, FinetuneRecipe)
        now = datetime.datetime.now(datetime.timezone.utc)
        if deadline and now + datetime.timedelta(seconds=last_wall) > deadline:
            print(f"sweep: deadline {args.deadline} UTC, not starting {overrides}", file=sys.stderr)
            break
        finetuned, accuracy, seconds = {}, {}, {}
        for name in args.tasks:
            with Timer() as t_ft:
                # from theta_pre explicitly: `evaluate` leaves the last evaluated weights in `model.visual`
                finetuned[name] = finetune(model, heads[name], datasets[name].split("train"), recipe,
                                           seed=args.seed, init_visual=pre_visual, progress=False)
            seconds[name] = t_ft.wall
            accuracy[name] = evaluate(model, finetuned[name], heads[name], caches[name])
        record = {
            "recipe": recipe.model_dump(), "overrides": overrides, "seed": args.seed, "threads": args.threads,
            "zeroshot": dict(zeroshot), "zeroshot_mean": statistics.mean(zeroshot.values()),
            "finetuned": accuracy, "finetuned_mean": statistics.mean(accuracy.values()),
            "task_arithmetic_mtl": ta_lambda_search(model, pre_visual, [finetuned[n] for n in args.tasks],
                                                    [heads[n] for n in args.tasks],
                                                    [caches[n] for n in args.tasks], space),
            "task_vector_mean_cosine": mean_pairwise_cosine(pre_visual, [finetuned[n] for n in args.tasks]),
            "finetune_wall_s": round(sum(seconds.values()), 1), "loadavg_end": os.getloadavg(),
            "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        last_wall = sum(seconds.values()) * 1.1
        previous = [r for r in previous if r["recipe"] != record["recipe"] or r["seed"] != args.seed] + [record]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"pretrain": results["pretrain"], "model": args.model,
                                   "pretrain_recipe": results["recipes"]["pretrain"], "limits": LIMITS,
                                   "records": previous}, indent=2) + "\n")
        ta = record["task_arithmetic_mtl"]
        print(f"sweep {overrides}: fine-tuned mean {record['finetuned_mean']:.1f}, zero-shot mean "
              f"{record['zeroshot_mean']:.1f}, TA best lam {ta['best_lam']} ({ta['best_accuracy']:.1f}, "
              f"interior {ta['interior']}), fine-tuning {record['finetune_wall_s']:.0f} s", file=sys.stderr)
    print(sweep_table(previous))


def sweep_table(records: list[dict]) -> str:
    lines = ["| recipe (lr, steps, warmup, wd) | fine-tuned mean | zero-shot mean | TA best lam (acc) | interior | ft s |",
             "| --- | ---: | ---: | ---: | --- | ---: |"]
    for r in records:
        rc, ta = r["recipe"], r["task_arithmetic_mtl"]
        lines.append(f"| {rc['lr']:g}, {rc['steps']}, {rc['warmup_steps']}, {rc['weight_decay']:g} | "
                     f"{r['finetuned_mean']:.1f} | {r['zeroshot_mean']:.1f} | {ta['best_lam']:g} "
                     f"({ta['best_accuracy']:.1f}) | {'yes' if ta['interior'] else 'no'} | {r['finetune_wall_s']:.0f} |")
    return "\n".join(lines)


def mean_pairwise_cosine(pre: dict, finetuned: list[dict]) -> float:
    vectors = [torch.cat([(ft[k] - pre[k]).flatten().double() for k in pre if pre[k].is_floating_point()])
               for ft in finetuned]
    sims = [float(torch.nn.functional.cosine_similarity(a, b, dim=0))
            for i, a in enumerate(vectors) for b in vectors[i + 1:]]
    return statistics.mean(sims) if sims else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/weaving-calibrate", help="prepared data and pretrained-model cache")
    ap.add_argument("--out", default=None, help="write the results JSON here")
    ap.add_argument("--model", default="weaving-tiny-clip")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", nargs="+", default=SUITE)
    ap.add_argument("--params", default="params.yaml", help="the recipes to start from (overridden by the KEY=VALUE options)")
    ap.add_argument("--pretrain", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--finetune", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--sequential", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--no-sequential", action="store_true")
    ap.add_argument("--reuse-pretrained", action="store_true",
                    help="reuse a pretrained model of the same recipe from --work (time not re-measured)")
    ap.add_argument("--eval-repeats", type=int, default=5)
    ap.add_argument("--sweep", nargs="*", default=[], metavar="KEY=V1,V2",
                    help="fine-tuning recipes to sweep (every combination, over --finetune); no single run")
    ap.add_argument("--sweep-out", default="benchmarks/results/calibrate_ta_lambda.json")
    ap.add_argument("--deadline", default=None, metavar="HH:MM", help="UTC: start no recipe that would end later")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    embedded = load_params(args.params)
    pre_recipe = parse_overrides(args.pretrain, embedded.pretrain.model_dump(), PretrainRecipe)
    ft_recipe = parse_overrides(args.finetune, embedded.finetune.model_dump(exclude={"per_task"}), FinetuneRecipe)
    seq_recipe = parse_overrides(args.sequential, embedded.sequential.model_dump(exclude={"per_task"}), FinetuneRecipe)
    space = parse_search_space(embedded.method_params["task_arithmetic"].search_space["mtl"])
    work = Path(args.work)
    results: dict = {
        "model": args.model, "threads": args.threads, "seed": args.seed, "limits": LIMITS,
        "recipes": {"pretrain": pre_recipe.model_dump(), "finetune": ft_recipe.model_dump(),
                    "sequential": seq_recipe.model_dump()},
        "loadavg_start": os.getloadavg(), "torch": torch.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }

    datasets = {}
    for name in SUITE:
        folder = work / "prepared" / name
        if not (folder / "meta.json").is_file():
            prepare(name, out_dir=folder, raw_dir=work / "raw", seed=args.seed, limits=LIMITS, progress=False)
        datasets[name] = load_prepared(folder)

    pre_key = json.dumps({"model": args.model, "seed": args.seed, **pre_recipe.model_dump()}, sort_keys=True)
    pre_dir = work / "pretrained" / hashlib.sha256(pre_key.encode()).hexdigest()[:16]
    if args.reuse_pretrained and (pre_dir / "key.json").is_file() and (pre_dir / "key.json").read_text() == pre_key:
        model = load_pretrained(pre_dir)
        results["pretrain"] = {"reused": str(pre_dir)}
    else:
        model = create_model(args.model, seed=args.seed)
        with Timer() as t:
            log = pretrain(model, [datasets[n] for n in SUITE], pre_recipe, seed=args.seed, progress=True)
        results["pretrain"] = {**t.as_dict(), "steps": log["steps"], "images": log["images"],
                               "final_loss": statistics.mean(log["losses"][-20:]),
                               "logit_scale": float(model.logit_scale.detach().exp())}
        save_pretrained(model, args.model, pre_dir)
        (pre_dir / "key.json").write_text(pre_key)
        print(f"pretrain: {results['pretrain']}", file=sys.stderr)
    pre_visual = {k: v.clone() for k, v in model.visual.state_dict().items()}

    if args.sweep:
        heads = {n: zeroshot_head(model, datasets[n].classnames, datasets[n].templates) for n in args.tasks}
        caches = {n: cache_eval_tensors(model, datasets[n].split("test")) for n in args.tasks}
        zeroshot = {n: evaluate(model, pre_visual, heads[n], caches[n]) for n in args.tasks}
        print(f"zero-shot: {zeroshot}", file=sys.stderr)
        run_sweep(args, model, pre_visual, datasets, heads, caches, zeroshot,
                  ft_recipe.model_dump(), space, results)
        return

    tasks, heads, caches, finetuned = {}, {}, {}, {}
    for name in args.tasks:
        ds = datasets[name]
        heads[name] = zeroshot_head(model, ds.classnames, ds.templates)
        with Timer() as t_cache:
            caches[name] = cache_eval_tensors(model, ds.split("test"))
        evaluate(model, pre_visual, heads[name], caches[name])  # warm-up
        eval_times = []
        for _ in range(args.eval_repeats):
            with Timer() as t_eval:
                zeroshot = evaluate(model, pre_visual, heads[name], caches[name])
            eval_times.append(t_eval.wall)
        with Timer() as t_ft:
            finetuned[name] = finetune(model, heads[name], ds.split("train"), ft_recipe, seed=args.seed,
                                       progress=False)
        tasks[name] = {"zeroshot": zeroshot, "finetuned": evaluate(model, finetuned[name], heads[name], caches[name]),
                       "finetune_time": t_ft.as_dict(), "cache_time": t_cache.as_dict(),
                       "eval_time_median_s": statistics.median(eval_times), "test_images": len(caches[name]["labels"])}
        print(f"{name}: {tasks[name]}", file=sys.stderr)
    results["tasks"] = tasks

    finetuned_list = [finetuned[n] for n in args.tasks]
    merges = {}
    for label, lam in [(f"task_arithmetic_{lam}", lam) for lam in LAMBDAS] + [("average", 1 / len(args.tasks))]:
        visual = merged_visual(pre_visual, finetuned_list, lam)
        merges[label] = {n: evaluate(model, visual, heads[n], caches[n]) for n in args.tasks}
    results["merges"] = merges
    results["task_arithmetic_mtl"] = ta_lambda_search(model, pre_visual, finetuned_list,
                                                      [heads[n] for n in args.tasks],
                                                      [caches[n] for n in args.tasks], space)
    results["task_vector_mean_cosine"] = mean_pairwise_cosine(pre_visual, finetuned_list)

    if not args.no_sequential:
        sequential = {}
        for bench, (name, n_splits) in CL_BENCHMARKS.items():
            ds = datasets[name]
            head = zeroshot_head(model, ds.classnames, ds.templates)
            cache = caches.get(name) or cache_eval_tensors(model, ds.split("test"))
            visual, times, vectors = pre_visual, [], []
            for classes in class_splits(ds.num_classes, n_splits, seed=args.seed):
                with Timer() as t:
                    visual = finetune(model, head, ds.split("train"), seq_recipe, seed=args.seed,
                                      class_subset=classes, init_visual=visual, progress=False)
                times.append(t.as_dict())
                vectors.append(visual)
            sequential[bench] = {"zeroshot": evaluate(model, pre_visual, head, cache),
                                 "sequential_final": evaluate(model, visual, head, cache),
                                 "split_times": times}
            print(f"{bench}: {sequential[bench]}", file=sys.stderr)
        results["sequential"] = sequential
    results["loadavg_end"] = os.getloadavg()

    print(summary(results, args.tasks))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


def summary(results: dict, tasks: list[str]) -> str:
    lines = [f"pretrain: {results['pretrain']}", "",
             "| task | zero-shot | fine-tuned | " + " | ".join(results["merges"]) + " | ft wall s | ft cpu s | eval s |",
             "|" + " --- |" * (6 + len(results["merges"]))]
    rows = {n: results["tasks"][n] for n in tasks}
    for n, r in rows.items():
        merged = " | ".join(f"{results['merges'][m][n]:.1f}" for m in results["merges"])
        lines.append(f"| {n} | {r['zeroshot']:.1f} | {r['finetuned']:.1f} | {merged} | "
                     f"{r['finetune_time']['wall_s']:.1f} | {r['finetune_time']['cpu_s']:.1f} | "
                     f"{r['eval_time_median_s']:.3f} |")
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    merged_mean = " | ".join(f"{mean([results['merges'][m][n] for n in tasks]):.1f}" for m in results["merges"])
    lines.append(f"| **mean** | {mean([r['zeroshot'] for r in rows.values()]):.1f} | "
                 f"{mean([r['finetuned'] for r in rows.values()]):.1f} | {merged_mean} | | | |")
    lines.append(f"\ntask-vector mean pairwise cosine: {results['task_vector_mean_cosine']:.3f}")
    ta = results["task_arithmetic_mtl"]
    lines.append(f"task arithmetic over the MTL space: best lam {ta['best_lam']} ({ta['best_accuracy']:.1f}), "
                 f"interior {ta['interior']}; " + ", ".join(f"{k}: {v:.1f}" for k, v in ta["accuracy"].items()))
    for bench, r in results.get("sequential", {}).items():
        walls = [t["wall_s"] for t in r["split_times"]]
        lines.append(f"{bench}: zero-shot {r['zeroshot']:.1f}, sequential final {r['sequential_final']:.1f}, "
                     f"split wall s {walls}")
    lines.append(f"load average start {results['loadavg_start']}, end {results['loadavg_end']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
