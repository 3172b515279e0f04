"""Benchmark: aligning N = 5 MLPs trained on MNIST from different seeds, with every merger.

Trains ``--models`` MLPs (``weaving.align.experiment.train_models``, seeds 0..N-1) on the
prepared MNIST of the pipeline (``data/prepared/mnist``: run ``python stages/data.py mnist``
first), for every hidden-size configuration in ``--hidden`` (default: the reference's
512,512,512,256 and the pipeline's 128,128,128,64), then times ``weaving.align.align`` for
C2M3 (synchronised Frank-Wolfe), MergeMany, pairwise-to-reference and naive averaging
with 1 and 2 torch threads (``--threads``; C2M3 then solves its assignments in as many
threads), ``--repeats`` times each (the fastest is reported; every repeat is kept), and records the
merge's test accuracy and C2M3's iterations and objective. Training runs one thread. Writes
``benchmarks/results/bench_align.json`` (or ``--results``) and prints a markdown table.

    python benchmarks/bench_align.py --repeats 3
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

from weaving.align import MERGERS, align, universe_average
from weaving.align.experiment import train_models
from weaving.align.models import TrainConfig, evaluate, model_spec
from weaving.datasets import load_prepared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", nargs="+", default=["512,512,512,256", "128,128,128,64"])
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch threads and C2M3 assignment workers; every value is timed")
    parser.add_argument("--data", default=str(ROOT / "data" / "prepared" / "mnist"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "bench_align.json"))
    args = parser.parse_args()
    if not Path(args.data, "meta.json").is_file():
        raise SystemExit(f"{args.data}: no prepared MNIST; run 'python stages/data.py mnist' first")
    data = load_prepared(args.data)
    train, test = data.split("train"), data.split("test")
    records = []
    for hidden in args.hidden:
        width = [int(w) for w in hidden.split(",")]
        torch.set_num_threads(1)
        trained = train_models("mlp", train.uint8_images(), train.labels, num_models=args.models, seed=0,
                               width=width, num_classes=data.num_classes, config=TrainConfig(epochs=args.epochs))
        model = trained.build()
        spec = model_spec(model)
        x, y = trained.inputs(test.uint8_images()), torch.as_tensor(test.labels)
        endpoints = []
        for state in trained.state_dicts:
            model.load_state_dict(state)
            endpoints.append(evaluate(model, x, y)["accuracy"])
        for threads, method in [(t, m) for t in args.threads for m in MERGERS]:
            torch.set_num_threads(threads)
            seconds, result = [], None
            for _ in range(args.repeats):
                start = time.perf_counter()
                result = align(method, spec, trained.state_dicts, seed=0, workers=threads)
                seconds.append(time.perf_counter() - start)
            torch.set_num_threads(1)
            model.load_state_dict(universe_average(spec, trained.state_dicts, result.perms))
            record = {
                "hidden": width, "parameters": sum(v.numel() for v in trained.state_dicts[0].values()),
                "models": args.models, "method": method, "threads": threads, "seconds": min(seconds), "repeats": seconds,
                "accuracy": evaluate(model, x, y)["accuracy"], "endpoint_mean_accuracy": sum(endpoints) / len(endpoints),
                "train_seconds": trained.seconds,
            }
            if method == "c2m3":
                record.update({"iterations": result.info["iterations"],
                               "objective_rounded": result.info["objective_rounded"]})
            if method == "mergemany":
                record["rounds"] = result.info["rounds"]
            records.append(record)
            print(json.dumps(record), flush=True)
    out = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
        "command": " ".join(["python", *sys.argv]),
        "data": {"dataset": data.name, "train": len(train), "test": len(test)},
        "records": records,
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(out, indent=2) + "\n")
    print("\n| hidden | method | threads | seconds (best of repeats) | iterations / rounds | accuracy % | endpoints' mean % |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in records:
        steps = r.get("iterations", r.get("rounds", ""))
        print(f"| {'-'.join(map(str, r['hidden']))} | {r['method']} | {r['threads']} | {r['seconds']:.2f} | {steps} | "
              f"{r['accuracy']:.1f} | {r['endpoint_mean_accuracy']:.1f} |")


if __name__ == "__main__":
    main()
