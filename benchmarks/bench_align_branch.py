"""Benchmark: the proposed embedded C2M3 pipeline branch, end to end, timed per part.

For every dataset (prepared by the pipeline's data stage: ``python stages/data.py mnist``)
and architecture, what the proposed stages would do: ``train_models`` (5 models) on the
``train`` split, then ``run_alignment_experiment`` (subset sizes 2, 3, 5, up to
``--subsets-per-size`` subsets each; naive, pairwise,
MergeMany, C2M3; REPAIR for the ResNet on the first 500 training images; the interpolation
path between models 0 and 1) evaluated on the ``test`` split. Torch runs ``--threads``
threads, C2M3's assignments as many. Writes every metrics dict, the times and the targets'
check to ``benchmarks/results/bench_align_branch.json`` (or ``--results``); prints a table.

    python benchmarks/bench_align_branch.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch

from weaving.align.experiment import run_alignment_experiment, train_models
from weaving.align.models import TrainConfig
from weaving.datasets import load_prepared

CONFIGS = {
    "mlp": {"width": [128, 128, 128, 64], "train": TrainConfig(epochs=10, batch_size=128, lr=1e-3)},
    "resnet": {"width": [16, 32, 64], "blocks_per_stage": 1, "norm": "layer", "stem_kernel": 4, "stem_stride": 4,
               "train": TrainConfig(epochs=8, batch_size=64, lr=3e-3)},
}


def order_holds(subset: dict, variant: str | None) -> bool:
    """C2M3 >= MergeMany > naive in mean test accuracy over the subsets of one size
    (``variant='repair'``: after REPAIR)."""
    def acc(name):
        record = subset["mergers"][name]
        return record[variant]["accuracy"] if variant else record["accuracy"]
    return acc("c2m3") >= acc("mergemany") > acc("naive")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"])
    parser.add_argument("--archs", nargs="+", default=["mlp", "resnet"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subsets-per-size", type=int, default=3,
                        help="subsets merged per size (the first n models, then drawn with the seed)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "bench_align_branch.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs, started = [], time.perf_counter()
    for dataset in args.datasets:
        folder = ROOT / "data" / "prepared" / dataset
        if not (folder / "meta.json").is_file():
            raise SystemExit(f"{folder}: not prepared; run 'python stages/data.py {dataset}' first")
        data = load_prepared(folder)
        train, test = data.split("train"), data.split("test")
        for arch in args.archs:
            config = dict(CONFIGS[arch])
            train_config = config.pop("train")
            trained = train_models(arch, train.uint8_images(), train.labels, num_models=5, seed=args.seed,
                                   num_classes=data.num_classes, config=train_config, **config)
            metrics = run_alignment_experiment(trained, test.uint8_images(), test.labels,
                                               repair_images=train.uint8_images(), seed=args.seed,
                                               subsets_per_size=args.subsets_per_size, workers=args.threads)
            checks = {f"n{s['size']}": order_holds(s, None) for s in metrics["summary"] if s["size"] >= 3}
            if metrics["repair"]:
                checks.update({f"n{s['size']}_repair": order_holds(s, "repair")
                               for s in metrics["summary"] if s["size"] >= 3})
            runs.append({"dataset": dataset, "arch": arch, "train_config": train_config.to_dict(),
                         "train_seconds": trained.seconds, "merge_seconds": metrics["seconds"],
                         "order_holds": checks, "metrics": metrics})
            print(f"{dataset} {arch}: train {trained.seconds:.1f} s, merges {metrics['seconds']:.1f} s, "
                  f"order {checks}", flush=True)
    total = time.perf_counter() - started
    out = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                       "torch": torch.__version__, "cpus": os.cpu_count(), "threads": args.threads},
           "command": " ".join(["python", *sys.argv]), "total_seconds": total, "runs": runs}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\ntotal {total:.1f} s\n")
    print("| dataset | arch | N | subsets | endpoints | naive | pairwise | MergeMany | C2M3 | C2M3 range | "
          "cycle max: pairwise |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        for s in run["metrics"]["summary"]:
            m = s["mergers"]

            def cell(name, m=m):
                text = f"{m[name]['accuracy']:.1f}"
                return text + (f" / {m[name]['repair']['accuracy']:.1f}" if "repair" in m[name] else "")

            cycle = m["pairwise"].get("cycle_error_max")
            spread = f"{m['c2m3']['accuracy_min']:.1f}-{m['c2m3']['accuracy_max']:.1f}"
            print(f"| {run['dataset']} | {run['arch']} | {s['size']} | {s['subsets']} | "
                  f"{s['endpoint_mean']['accuracy']:.1f} | {cell('naive')} | {cell('pairwise')} | "
                  f"{cell('mergemany')} | {cell('c2m3')} | {spread} | {'' if cycle is None else f'{cycle:.1f}'} |")


if __name__ == "__main__":
    main()
