"""`merge("task_arithmetic", taus)` as a multiple of one read of its inputs (issue 15's per-element bound).

    PYTHONPATH=src python benchmarks/bench_read_ratio.py [--repeats 5] [--methods task_arithmetic magmax]

In one process with one torch thread: the task vectors of open_clip ViT-B-32's image encoder
(`bench_merge.model_shapes`, T = 8, `1e-3 * randn`, seeded as `bench_peers.write_memory_inputs`),
then, alternating, "one read" (a `sum` of every input tensor) and each method's `merge(method,
taus)` at lam 1, `--repeats` times; prints the fastest of each and the ratio to the fastest read
as JSON. The ratio is what to compare across runs on a loaded machine (both are timed in the same
process, one after the other); run the old code with its own PYTHONPATH for a before/after.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_merge import model_shapes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=["task_arithmetic"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    import weaving
    from weaving import merge

    generator = torch.Generator().manual_seed(args.seed)
    shapes = model_shapes(quick=False)
    taus = [{key: 1e-3 * torch.randn(shape, generator=generator) for key, shape in shapes.items()}
            for _ in range(args.tasks)]
    merge(args.methods[0], [{k: v for k, v in list(tau.items())[:4]} for tau in taus])  # warm-up
    walls: dict[str, list[float]] = {"read": [], **{m: [] for m in args.methods}}
    for _ in range(args.repeats):
        start = time.perf_counter()
        for tau in taus:
            for value in tau.values():
                value.sum()
        walls["read"].append(time.perf_counter() - start)
        for method in args.methods:
            start = time.perf_counter()
            result = merge(method, taus, lam=1.0)
            walls[method].append(time.perf_counter() - start)
            del result
    best = {name: min(values) for name, values in walls.items()}
    print(json.dumps({"weaving": str(Path(weaving.__file__).parent), "tasks": args.tasks, "repeats": args.repeats,
                      "parameters": sum(v.numel() for v in taus[0].values()),
                      "fastest_s": {k: round(v, 4) for k, v in best.items()},
                      "times_one_read": {m: round(best[m] / best["read"], 2) for m in args.methods},
                      "all_s": {k: [round(w, 4) for w in v] for k, v in walls.items()}}))


if __name__ == "__main__":
    main()
