"""Benchmark: TSV-C compression of T task vectors against one TSV-Merge, in memory.

Task vectors have the shapes of open_clip ViT-B-32's image encoder (random weights; T = 8
fine-tuned copies perturbed at random), or of its first ``--blocks`` transformer blocks
plus the embeddings and projection (each block is the same four matrices, so the time per
block is what grows with depth). Each measurement runs in a fresh subprocess that builds
the task vectors, then times

- ``compress``: ``compress_task_vectors(taus)`` (rank fraction 1/T: one thin SVD per 2-D
  tensor and task, top r/T triplets kept),
- ``tsv_merge``: ``merge("tsv", taus)`` (the same SVDs, then two polar factors per tensor),
- ``tsv_from_factors``: ``tsv_merge_compressed(compressed)`` (TSV-Merge from the factors,
  the compression done before the clock starts),

and records wall time (fastest of ``--repeats``) and peak memory (peak resident set during
the calls minus the resident set before, as ``bench_merge.py`` measures it), plus the
storage of the compressed set (and, from the shapes alone, of the whole 12-block encoder). Writes ``benchmarks/results/bench_compress.json``.

    python benchmarks/bench_compress.py --blocks 1     # ~1.5 min on 2 shared cores
    python benchmarks/bench_compress.py                # all 12 blocks (~10 min)
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

RESULTS = Path(__file__).resolve().parent / "results" / "bench_compress.json"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # this checkout's weaving
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_merge import status_kib  # noqa: E402

MODES = ("compress", "tsv_merge", "tsv_from_factors")
MMAP_THRESHOLD = 1 << 20  # freed tensors over 1 MiB leave the resident set (see bench_merge.py)


def model_shapes(blocks: int) -> dict[str, list[int]]:
    """Floating shapes of ViT-B-32's image encoder, keeping transformer blocks 0 .. blocks-1."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import open_clip

    visual = open_clip.create_model("ViT-B-32", pretrained=None).visual
    shapes = {}
    for key, tensor in visual.state_dict().items():
        if not tensor.is_floating_point():
            continue
        if key.startswith("transformer.resblocks.") and int(key.split(".")[2]) >= blocks:
            continue
        shapes[key] = list(tensor.shape)
    return shapes


def storage_from_shapes(shapes: dict[str, list[int]], tasks: int) -> dict[str, float]:
    """Stored numbers of T task vectors compressed at 1/T, counted from the shapes alone (no SVD)."""
    import torch

    from weaving.compress import is_factored, rank_for

    one = stored = 0
    for key, shape in shapes.items():
        numel = 1
        for d in shape:
            numel *= d
        one += numel
        if is_factored(key, shape, torch.float32):
            stored += rank_for(shape, 1 / tasks) * (shape[0] + shape[1] + 1)
        else:
            stored += numel
    return {"one_model_numbers": one, "stored_numbers": tasks * stored,
            "ratio_to_one_model": tasks * stored / one, "ratio_to_all_models": stored / one}


def worker(args: argparse.Namespace) -> dict[str, object]:
    import torch

    from weaving import merge
    from weaving.compress import compress_task_vectors, storage_summary, tsv_merge_compressed

    torch.set_num_threads(args.threads)
    shapes = json.loads(Path(args.shapes).read_text())
    generator = torch.Generator().manual_seed(args.seed)
    taus = [{key: 1e-3 * torch.randn(shape, generator=generator) for key, shape in shapes.items()}
            for _ in range(args.tasks)]
    compressed = compress_task_vectors(taus) if args.mode == "tsv_from_factors" else None
    call = {
        "compress": lambda: compress_task_vectors(taus),
        "tsv_merge": lambda: merge("tsv", taus),
        "tsv_from_factors": lambda: tsv_merge_compressed(compressed),
    }[args.mode]
    warmup = [{"w": tau[next(k for k in tau if tau[k].ndim == 2)][:8, :8].clone()} for tau in taus]
    compress_task_vectors(warmup), merge("tsv", warmup)  # first-call costs (lazy imports, LAPACK set-up)
    gc.collect()
    baseline_kib = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    walls, result = [], None
    for _ in range(args.repeats):
        del result
        start = time.perf_counter()
        result = call()
        walls.append(time.perf_counter() - start)
    peak_kib = status_kib("VmHWM")
    record = {
        "mode": args.mode, "tasks": args.tasks, "blocks": args.blocks, "wall_s": round(min(walls), 3),
        "wall_s_all": [round(w, 3) for w in walls], "peak_delta_mib": round((peak_kib - baseline_kib) / 1024, 1),
        "task_vector_mib": round(sum(t.numel() * t.element_size() for tau in taus for t in tau.values()) / 2**20, 1),
        "parameters_per_model": sum(t.numel() for t in taus[0].values()),
    }
    if args.mode == "compress":
        record["storage"] = storage_summary(result)
    return record


def measure(shapes_path: Path, mode: str, args: argparse.Namespace) -> dict[str, object]:
    command = [sys.executable, __file__, "--worker", "--shapes", str(shapes_path), "--mode", mode, "--tasks",
               str(args.tasks), "--blocks", str(args.blocks), "--seed", str(args.seed), "--repeats", str(args.repeats),
               "--threads", str(args.threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"mode": mode, "error": tail, "returncode": done.returncode}
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(results: list[dict[str, object]]) -> str:
    by = {r["mode"]: r for r in results if "error" not in r}
    merge_s = by.get("tsv_merge", {}).get("wall_s")
    lines = ["| operation | wall s | x one TSV-Merge | peak MiB (over the task vectors) |", "|---|---:|---:|---:|"]
    for mode in MODES:
        if mode not in by:
            continue
        r = by[mode]
        ratio = f"{r['wall_s'] / merge_s:.2f}" if merge_s else "-"
        lines.append(f"| {mode} | {r['wall_s']:.1f} | {ratio} | {r['peak_delta_mib']:,.0f} |")
    if "compress" in by:
        s = by["compress"]["storage"]
        lines.append(f"\nStorage of the {s['num_tasks']} compressed task vectors: {s['stored_numbers']:,} numbers = "
                     f"{s['ratio_to_one_model']:.2f} x one model ({s['one_model_numbers']:,}), "
                     f"{100 * s['ratio_to_all_models']:.1f}% of {s['num_tasks']} models.")
    lines += [f"\n- {r['mode']}: failed (exit {r['returncode']}): {r['error']}" for r in results if "error" in r]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=12, help="transformer blocks of ViT-B-32 kept (default all 12)")
    parser.add_argument("--tasks", type=int, default=8, help="task vectors T (default 8)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per measurement, fastest kept")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS})")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shapes", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if not 1 <= args.blocks <= 12:
        parser.error("--blocks must be in [1, 12]")
    results = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        shapes_path = Path(scratch) / "shapes.json"
        shapes_path.write_text(json.dumps(model_shapes(args.blocks)))
        for mode in args.modes:
            result = measure(shapes_path, mode, args)
            results.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    full_storage = storage_from_shapes(model_shapes(12), args.tasks)
    table = markdown(results) + (
        f"\n\nThe whole ViT-B-32 image encoder (12 blocks), counted from its shapes: {args.tasks} compressed task "
        f"vectors store {full_storage['stored_numbers']:,} numbers = {full_storage['ratio_to_one_model']:.2f} x one "
        f"model ({full_storage['one_model_numbers']:,}), {100 * full_storage['ratio_to_all_models']:.1f}% of "
        f"{args.tasks} models.")
    print(table)
    payload = {
        "model": f"open_clip ViT-B-32 image encoder, blocks 0-{args.blocks - 1} of 12 (random weights)",
        "tasks": args.tasks, "repeats": args.repeats, "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "total_s": round(time.perf_counter() - started, 1),
        "results": results,
        "full_model_storage": full_storage,
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
