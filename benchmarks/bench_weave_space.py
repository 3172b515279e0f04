"""Benchmark: Weight Weaving over a search space, K = 10 vs K = 40 lams (issue 14's target).

Task vectors have the shapes of open_clip ViT-B-32's image encoder (87.8M parameters, float32;
``--quick``: a 4-layer width-128 ViT), built as in ``bench_merge.py`` (T seeded perturbations of
random pretrained weights). Each case runs in a fresh subprocess that times ``--repeats`` calls
per K, the Ks interleaved (K=10, K=40, K=10, ...: both see the same load on a shared machine;
the fastest call is reported), and measures each call's peak memory as ``bench_merge.py`` does
(peak resident set during the call, ``VmHWM`` after ``/proc/self/clear_refs``, minus the resident
set just before; the largest over the repeats is reported; workers run with
``MALLOC_MMAP_THRESHOLD_=1048576`` and one torch thread).

Cases (``--cases``):

- ``space``: ``weave("ties", taus, space={"density": [0.1, 0.2, 0.3], "lam": K values},
  pooling=avg)``: the fast path, 3 merges (one per density) and K lams each;
- ``ties-pooling``: ``weave("task_arithmetic", taus, lambdas=K values, pooling="ties")`` (TIES as
  the pooling at its default density, through its shortcut: thresholds of the T task vectors and M);
- ``tsv-pooling``: the same with ``pooling="tsv"`` (no shortcut: members materialised key by key).

    python benchmarks/bench_weave_space.py                      # ViT-B-32, K = 10 and 40, case space
    python benchmarks/bench_weave_space.py --cases space ties-pooling tsv-pooling
    python benchmarks/bench_weave_space.py --quick              # small model, for a quick check

Writes ``benchmarks/results/bench_weave_space.json``; prints a markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_merge import (  # noqa: E402
    MMAP_THRESHOLD,
    model_shapes,
    status_kib,
    synthetic_task_vectors,
    write_results,
)

RESULTS = Path(__file__).resolve().parent / "results" / "bench_weave_space.json"
CASES = ("space", "ties-pooling", "tsv-pooling")
DENSITIES = [0.1, 0.2, 0.3]


def lams(k: int) -> list[float]:
    """K values evenly spaced in [0.05, 2.0] (both ends included)."""
    return [round(0.05 + i * 1.95 / (k - 1), 10) for i in range(k)] if k > 1 else [1.0]


def call_of(case: str, k: int):
    from weaving import weave

    if case == "space":
        return lambda taus: weave("ties", taus, space={"density": DENSITIES, "lam": lams(k)}, pooling="avg",
                                  pool_over="all", seed=0)
    pooling = case.removesuffix("-pooling")
    return lambda taus: weave("task_arithmetic", taus, lambdas=lams(k), pooling=pooling, pool_over="all", seed=0)


def worker(args: argparse.Namespace) -> list[dict[str, object]]:
    """The measurements of one case at every K, in this (fresh) process, the Ks interleaved:
    K_1, K_2, K_1, K_2, ... so that both see the same load on a shared machine."""
    import torch


    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    shapes = json.loads(Path(args.shapes).read_text())
    taus = synthetic_task_vectors(shapes, args.tasks, args.seed)
    calls = {k: call_of(args.case, k) for k in args.ks}
    warmup = [{k: (v if v.ndim == 0 else v[:2]).clone() for k, v in list(tau.items())[:4]} for tau in taus]
    for call in calls.values():
        call(warmup)  # first-call costs (lazy imports, kernels)
    del warmup
    gc.collect()
    walls: dict[int, list[float]] = {k: [] for k in args.ks}
    peaks: dict[int, list[float]] = {k: [] for k in args.ks}
    baselines: dict[int, list[float]] = {k: [] for k in args.ks}
    for _ in range(args.repeats):
        for k, call in calls.items():
            gc.collect()
            baseline_kib = status_kib("VmRSS")
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # reset VmHWM to the current resident set
            start = time.perf_counter()
            result = call(taus)
            walls[k].append(time.perf_counter() - start)
            peaks[k].append((status_kib("VmHWM") - baseline_kib) / 1024)
            baselines[k].append(baseline_kib / 1024)
            del result
    tau_mib = round(sum(t.numel() * t.element_size() for tau in taus for t in tau.values()) / 2**20, 1)
    return [{
        "case": args.case, "k": k, "tasks": args.tasks, "wall_s": round(min(walls[k]), 3),
        "wall_s_all": [round(w, 3) for w in walls[k]],
        "peak_delta_mib": round(max(peaks[k]), 1), "peak_delta_mib_all": [round(m, 1) for m in peaks[k]],
        "baseline_mib": round(min(baselines[k]), 1), "task_vector_mib": tau_mib,
    } for k in args.ks]


def measure(shapes_path: Path, case: str, args: argparse.Namespace) -> list[dict[str, object]]:
    command = [sys.executable, __file__, "--worker", "--shapes", str(shapes_path), "--case", case,
               "--ks", *map(str, args.ks), "--tasks", str(args.tasks), "--seed", str(args.seed),
               "--repeats", str(args.repeats)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return [{"case": case, "k": k, "error": tail, "returncode": done.returncode} for k in args.ks]
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(results: list[dict[str, object]], ks: list[int]) -> str:
    by = {(r["case"], r["k"]): r for r in results}
    low, high = ks[0], ks[-1]
    lines = [f"| case | s (K={low}) | s (K={high}) | time ratio | peak MiB (K={low}) | peak MiB (K={high}) | "
             "memory ratio |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for case in dict.fromkeys(r["case"] for r in results):
        a, b = by.get((case, low)), by.get((case, high))
        if not a or not b or "error" in a or "error" in b:
            lines.append(f"| {case} | failed or not run | | | | | |")
            continue
        lines.append(f"| {case} | {a['wall_s']:g} | {b['wall_s']:g} | {b['wall_s'] / a['wall_s']:.2f} | "
                     f"{a['peak_delta_mib']:g} | {b['peak_delta_mib']:g} | "
                     f"{b['peak_delta_mib'] / max(a['peak_delta_mib'], 1e-9):.2f} |")
    for r in results:
        if "error" in r:
            lines.append(f"\n- {r['case']} K={r['k']}: failed (exit {r['returncode']}): {r['error']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small ViT instead of ViT-B-32")
    parser.add_argument("--cases", nargs="+", default=["space"], choices=CASES)
    parser.add_argument("--ks", nargs="+", type=int, default=[10, 40], help="numbers of lams (default 10 40)")
    parser.add_argument("--tasks", type=int, default=8, help="fine-tuned copies T (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed calls per measurement; the fastest is reported (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS})")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shapes", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as scratch:
        shapes_path = Path(scratch) / "shapes.json"
        shapes_path.write_text(json.dumps(model_shapes(args.quick)))
        for i, case in enumerate(args.cases, start=1):
            measured = measure(shapes_path, case, args)
            results.extend(measured)
            print(f"[{i}/{len(args.cases)}] {json.dumps(measured)}", file=sys.stderr, flush=True)
    table = markdown(results, args.ks)
    print(table)
    write_results(args.out, {
        "model": "tiny ViT (4 layers, width 128)" if args.quick else "open_clip ViT-B-32 image encoder",
        "tasks": args.tasks, "ks": args.ks, "densities": DENSITIES, "repeats": args.repeats,
        "threads": args.threads, "malloc_mmap_threshold": MMAP_THRESHOLD}, results)


if __name__ == "__main__":
    main()
