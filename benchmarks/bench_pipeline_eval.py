"""Benchmark: the pipeline's own time per evaluation and per stage start-up (issue 15, item 6).

On the outputs of an embedded `dvc repro` (run it first; `--root` points at the checkout that
holds `models/` and `data/cache/`), interleaved, fastest of `--repeats`, `--threads` torch threads:

- ``evaluate``: `weaving.clip.evaluate` with a task vector's weights loaded (`load_state_dict`
  of the visual encoder, forward, head, argmax), images/s, at each ``--batch-sizes``;
- ``bare``: `model.visual(images)` alone in `torch.inference_mode()` on the same images, one batch
  of the same size at a time, cast from the cache's float16 (the floor an evaluation cannot beat);
- ``workers``: `--evaluations` evaluations (batch `--batch-sizes[0]`) one at a time on `--threads`
  torch threads, against `--workers` at once in threads, each with its own model copy and one torch
  thread, as the weave stage runs them with `eval.workers` (evaluations/s of each);
- ``startup``: a fresh interpreter importing what every model stage imports
  (`stages/_common.py` and `weaving.clip`), and `import torch` alone for scale.

Writes ``benchmarks/results/bench_pipeline_eval.json``.

    python benchmarks/bench_pipeline_eval.py --root . --repeats 5 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bench_pipeline_eval.json"
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def startup_seconds(code: str, repeats: int) -> float:
    """Fastest wall time of `python -c code` in a fresh interpreter."""
    times = []
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'stages'}", "HF_HUB_OFFLINE": "1"}
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        times.append(time.perf_counter() - started)
    return min(times)


def workers_comparison(model, woven, head, cache, args) -> dict:
    """Evaluations/s one at a time (`args.threads` torch threads) and `args.workers` at once (one each)."""
    import copy
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from weaving.clip import evaluate

    batch_size = args.batch_sizes[0]
    copies = threading.local()

    def in_worker(_: int) -> None:
        if not hasattr(copies, "model"):
            copies.model = copy.deepcopy(model)
        evaluate(copies.model, woven, head, cache, batch_size=batch_size)

    timings: dict[str, list[float]] = {"one_at_a_time": [], "workers": []}
    for _ in range(args.repeats):
        torch.set_num_threads(args.threads)
        started = time.perf_counter()
        for _ in range(args.evaluations):
            evaluate(model, woven, head, cache, batch_size=batch_size)
        timings["one_at_a_time"].append(time.perf_counter() - started)
        torch.set_num_threads(1)
        with ThreadPoolExecutor(args.workers) as pool:
            started = time.perf_counter()
            list(pool.map(in_worker, range(args.evaluations)))
            timings["workers"].append(time.perf_counter() - started)
    torch.set_num_threads(args.threads)
    best = {kind: args.evaluations / min(values) for kind, values in timings.items()}
    print(f"{args.evaluations} evaluations: one at a time on {args.threads} threads {best['one_at_a_time']:.2f}/s, "
          f"{args.workers} workers x 1 thread {best['workers']:.2f}/s ({best['workers'] / best['one_at_a_time']:.2f}x)",
          file=sys.stderr)
    return {"batch_size": batch_size, "evaluations": args.evaluations, "threads": args.threads,
            "workers": args.workers, "evaluations_per_s": best, "speedup": best["workers"] / best["one_at_a_time"],
            "repeats": timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout holding models/ and data/cache/")
    parser.add_argument("--model", default="tiny-clip")
    parser.add_argument("--task", default="mnist")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="evaluation threads of the workers comparison")
    parser.add_argument("--evaluations", type=int, default=16, help="evaluations per timing of that comparison")
    args = parser.parse_args()

    import torch

    from weaving.clip import evaluate, load_pretrained
    from weaving.io import load_state_dict

    torch.set_num_threads(args.threads)
    root = args.root.resolve()
    model = load_pretrained(root / "models" / args.model / "pretrained")
    pretrained = load_state_dict(root / "models" / args.model / "pretrained" / "visual.safetensors")
    finetuned = load_state_dict(root / "models" / args.model / "seed0" / "finetuned" / f"{args.task}.safetensors")
    head = load_state_dict(root / "models" / args.model / "heads" / f"{args.task}.safetensors")["weight"]
    cache = torch.load(root / "data" / "cache" / args.model / f"{args.task}_test.pt", weights_only=True)
    images = cache["images"]
    woven = {key: pretrained[key] + 0.3 * (finetuned[key] - pretrained[key]) for key in pretrained}

    rows = []
    for batch_size in args.batch_sizes:
        timings = {"evaluate": [], "bare": []}
        for _ in range(args.repeats):
            started = time.perf_counter()
            evaluate(model, woven, head, cache, batch_size=batch_size)
            timings["evaluate"].append(time.perf_counter() - started)
            started = time.perf_counter()
            with torch.inference_mode():
                for chunk in images.split(batch_size):
                    model.visual(chunk.float())
            timings["bare"].append(time.perf_counter() - started)
        best = {kind: min(values) for kind, values in timings.items()}
        rows.append({"batch_size": batch_size, "images": len(images),
                     "evaluate_images_per_s": len(images) / best["evaluate"],
                     "bare_images_per_s": len(images) / best["bare"],
                     "evaluate_over_bare_time": best["evaluate"] / best["bare"], "repeats": timings})
        print(f"batch {batch_size}: evaluate {len(images) / best['evaluate']:.0f} img/s, bare forward "
              f"{len(images) / best['bare']:.0f} img/s, ratio {best['evaluate'] / best['bare']:.2f}x", file=sys.stderr)

    workers = workers_comparison(model, woven, head, cache, args)
    startup = {"import torch": startup_seconds("import torch", args.repeats),
               "stage imports (_common + weaving.clip)": startup_seconds("import _common, weaving.clip", args.repeats)}
    for what, seconds in startup.items():
        print(f"start-up, {what}: {seconds:.2f} s", file=sys.stderr)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "command": " ".join(sys.argv), "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "threads": args.threads, "model": args.model, "task": args.task, "evaluation": rows,
        "workers": workers, "startup_seconds": startup}, indent=2) + "\n")


if __name__ == "__main__":
    main()
