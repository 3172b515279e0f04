"""Benchmark: one merge vs. Weight Weaving (fast path and materialised Algorithm 1), in memory.

Task vectors have the shapes of open_clip ViT-B-32's image encoder (87.8M parameters,
float32; ``--quick``: a 4-layer width-128 ViT), random weights; T fine-tuned copies are the
pretrained weights plus small seeded perturbations. For every method, each measurement runs
in a fresh subprocess that builds the task vectors, then times one call of

- ``merge(method, taus, lam=1)``,
- ``weave(method, taus, lambdas=K values, pooling=avg, pool_over=all)`` (fast path),
- the same with ``materialize=True`` (every pool member built, as Algorithm 1 is written),

after one warm-up call on a tiny input, and records its wall time (the fastest of
``--repeats`` calls: the machine may be shared) and peak memory: the process's peak resident
set during the calls (``VmHWM`` after resetting it through ``/proc/self/clear_refs``) minus
its resident set just before (workers run with ``MALLOC_MMAP_THRESHOLD_=1048576`` so that freed
tensors leave the resident set). Prints markdown tables; writes ``benchmarks/results/bench_merge.json``.

    python benchmarks/bench_merge.py            # ViT-B-32, K = 10 and 25, every method
    python benchmarks/bench_merge.py --quick    # small model, for a quick check

Workers use one torch thread unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bench_merge.json"
MODES = ("merge", "weave", "materialize")
# glibc otherwise raises its mmap threshold after big frees and keeps freed tensors in the
# heap, so the resident set would not fall when memory is released: a fixed threshold makes
# every tensor over 1 MiB its own mapping, returned on free, and RSS track live memory.
MMAP_THRESHOLD = 1 << 20


def model_shapes(quick: bool) -> dict[str, list[int]]:
    """Shapes of the image encoder's floating-point state dict."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import open_clip
    from open_clip.transformer import VisionTransformer

    if quick:
        visual = VisionTransformer(image_size=32, patch_size=8, width=128, layers=4, heads=2, mlp_ratio=4.0,
                                   output_dim=64)
    else:
        visual = open_clip.create_model("ViT-B-32", pretrained=None).visual
    return {key: list(t.shape) for key, t in visual.state_dict().items() if t.is_floating_point()}


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now; VmHWM: the peak), for every benchmark's workers."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def synthetic_task_vectors(shapes: dict[str, list[int]], tasks: int, seed: int) -> list[dict]:
    """`tasks` task vectors of these shapes: pretrained ~ N(0, 0.02^2), each fine-tuned copy that plus
    N(0, 1e-6), all from one seeded generator, built key by key so that no whole model is ever freed."""
    import torch

    from weaving import task_vectors

    generator = torch.Generator().manual_seed(seed)
    taus: list[dict[str, torch.Tensor]] = [{} for _ in range(tasks)]
    for key, shape in shapes.items():
        pretrained = {key: torch.randn(shape, generator=generator) * 0.02}
        finetuned = [{key: pretrained[key] + 1e-3 * torch.randn(shape, generator=generator)} for _ in range(tasks)]
        for tau, one_key in zip(taus, task_vectors(pretrained, finetuned)):
            tau.update(one_key)
    gc.collect()
    return taus


def write_results(out: Path, settings: dict[str, object], results: list) -> None:
    """`settings`, the machine, the command line and `results` as JSON at `out` (written beside it, then renamed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {**settings,
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version(), "load_average_at_end": os.getloadavg()},
               "command": " ".join([Path(sys.executable).name, *sys.argv]), "results": results}
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, out)


def worker(args: argparse.Namespace) -> dict[str, object]:
    """One measurement, in this (fresh) process."""
    import torch

    from weaving import merge, weave

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    shapes = json.loads(Path(args.shapes).read_text())
    taus = synthetic_task_vectors(shapes, args.tasks, args.seed)
    lambdas = [round(0.1 * (i + 1), 10) for i in range(args.k)]
    call = {
        "merge": lambda: merge(args.method, taus, lam=1.0),
        "weave": lambda: weave(args.method, taus, lambdas=lambdas, pooling=args.pooling, pool_over="all", seed=0),
        "materialize": lambda: weave(args.method, taus, lambdas=lambdas, pooling=args.pooling, pool_over="all",
                                     seed=0, materialize=True),
    }[args.mode]
    warmup = [{k: (v if v.ndim == 0 else v[:2]).clone() for k, v in list(tau.items())[:4]} for tau in taus]
    first_call = {"merge": lambda t: merge(args.method, t, lam=1.0),
                  "weave": lambda t: weave(args.method, t, lambdas=lambdas, pooling=args.pooling, seed=0),
                  "materialize": lambda t: weave(args.method, t, lambdas=lambdas, pooling=args.pooling, seed=0,
                                                 materialize=True)}[args.mode]
    first_call(warmup)  # first-call costs (lazy imports, kernels)
    del warmup
    gc.collect()
    baseline_kib = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset VmHWM to the current resident set
    walls = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = call()
        walls.append(time.perf_counter() - start)
        del result
    peak_kib = status_kib("VmHWM")
    return {
        "method": args.method, "mode": args.mode, "k": args.k if args.mode != "merge" else None,
        "tasks": args.tasks, "pooling": args.pooling, "wall_s": round(min(walls), 3),
        "wall_s_all": [round(w, 3) for w in walls],
        "peak_delta_mib": round((peak_kib - baseline_kib) / 1024, 1),
        "baseline_mib": round(baseline_kib / 1024, 1),
        "task_vector_mib": round(sum(t.numel() * t.element_size() for tau in taus for t in tau.values()) / 2**20, 1),
    }


def measure(shapes_path: Path, method: str, mode: str, k: int, args: argparse.Namespace) -> dict[str, object]:
    command = [sys.executable, __file__, "--worker", "--shapes", str(shapes_path), "--method", method,
               "--mode", mode, "--k", str(k), "--tasks", str(args.tasks), "--pooling", args.pooling,
               "--seed", str(args.seed), "--repeats", str(args.repeats)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"method": method, "mode": mode, "k": k if mode != "merge" else None, "error": tail,
                "returncode": done.returncode}
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(results: list[dict[str, object]], ks: list[int]) -> str:
    by = {(r["method"], r["mode"], r["k"]): r for r in results}
    header = "| method | merge s | merge MiB |"
    rule = "| --- | ---: | ---: |"
    for k in ks:
        header += f" weave s (K={k}) | x merge | weave MiB | materialize s | materialize MiB |"
        rule += " ---: | ---: | ---: | ---: | ---: |"
    lines = [header, rule]

    def cell(r: dict[str, object] | None, field: str) -> str:
        if r is None:
            return "not run"
        if "error" in r:
            return "failed"
        return f"{r[field]:g}"

    for method in sorted({r["method"] for r in results}):
        m = by.get((method, "merge", None))
        row = f"| {method} | {cell(m, 'wall_s')} | {cell(m, 'peak_delta_mib')} |"
        for k in ks:
            w, x = by.get((method, "weave", k)), by.get((method, "materialize", k))
            ratio = (f"{w['wall_s'] / m['wall_s']:.2f}" if w and m and "error" not in w and "error" not in m
                     and m["wall_s"] > 0 else "-")
            row += (f" {cell(w, 'wall_s')} | {ratio} | {cell(w, 'peak_delta_mib')} | {cell(x, 'wall_s')} |"
                    f" {cell(x, 'peak_delta_mib')} |")
        lines.append(row)
    failures = [r for r in results if "error" in r]
    for r in failures:
        lines.append(f"\n- {r['method']} {r['mode']} K={r['k']}: failed (exit {r['returncode']}): {r['error']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small ViT instead of ViT-B-32")
    parser.add_argument("--methods", nargs="+", help="methods to run (default: every registered one)")
    parser.add_argument("--ks", nargs="+", type=int, default=[10, 25], help="search-space sizes (default 10 25)")
    parser.add_argument("--tasks", type=int, default=8, help="fine-tuned copies T (default 8)")
    parser.add_argument("--pooling", default="avg", help="pooling for weave (default avg)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per worker (default 1: on a shared machine, OpenMP threads "
                             "that wait on each other make timings erratic)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed calls per measurement; the fastest is reported (default 3)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS})")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shapes", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    from weaving import METHODS

    methods = args.methods or sorted(METHODS)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; valid: {sorted(METHODS)}")
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as scratch:
        shapes_path = Path(scratch) / "shapes.json"
        shapes_path.write_text(json.dumps(model_shapes(args.quick)))
        # Method by method, so that the runs compared with each other share the machine's load.
        plan = [(m, mode, k) for m in methods
                for mode, k in [("merge", 0)] + [(mode, k) for k in args.ks for mode in ("weave", "materialize")]
                if mode in args.modes]
        for i, (method, mode, k) in enumerate(plan, start=1):
            result = measure(shapes_path, method, mode, k, args)
            results.append(result)
            print(f"[{i}/{len(plan)}] {json.dumps(result)}", file=sys.stderr, flush=True)
    table = markdown(results, args.ks)
    print(table)
    write_results(args.out, {
        "model": "tiny ViT (4 layers, width 128)" if args.quick else "open_clip ViT-B-32 image encoder",
        "tasks": args.tasks, "ks": args.ks, "pooling": args.pooling,
        "repeats": args.repeats, "threads": args.threads, "malloc_mmap_threshold": MMAP_THRESHOLD}, results)


if __name__ == "__main__":
    main()
