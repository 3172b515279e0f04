"""Benchmark: the ``weaving`` CLI streams checkpoints larger than memory.

Generates a synthetic set of sharded checkpoints (Hugging Face layout: an index JSON plus
safetensors shards) — a pretrained model and T fine-tuned ones, transformer-shaped tensors
of random values — whose inputs total ``--total-gib`` (default 26, more than this machine's
24 GiB of memory), then runs ``weaving merge`` / ``weaving weave`` on them for each method in
a subprocess, recording its wall time and peak resident set (the child's ``ru_maxrss`` from
``os.wait4``) against the input total. Prints a markdown table; writes
``benchmarks/results/bench_streaming_cli.json`` (or ``--results``).

    python benchmarks/bench_streaming_cli.py --total-gib 1 --methods task_arithmetic ties
    nohup python benchmarks/bench_streaming_cli.py --total-gib 26 > bench.log 2>&1 &

The synthetic files are deleted at the end unless ``--keep``; ``--reuse`` runs on files an
earlier ``--keep`` run left in ``--dir``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bench_streaming_cli.json"
DTYPES = {"float32": 4, "bfloat16": 2}


def block_shapes(width: int, block: int) -> dict[str, tuple[int, ...]]:
    """One transformer block's tensors (attention and 4x MLP), named like open_clip's."""
    prefix = f"blocks.{block:03d}."
    return {
        prefix + "ln_1.weight": (width,),
        prefix + "ln_1.bias": (width,),
        prefix + "attn.in_proj_weight": (3 * width, width),
        prefix + "attn.in_proj_bias": (3 * width,),
        prefix + "attn.out_proj.weight": (width, width),
        prefix + "attn.out_proj.bias": (width,),
        prefix + "ln_2.weight": (width,),
        prefix + "ln_2.bias": (width,),
        prefix + "mlp.c_fc.weight": (4 * width, width),
        prefix + "mlp.c_fc.bias": (4 * width,),
        prefix + "mlp.c_proj.weight": (width, 4 * width),
        prefix + "mlp.c_proj.bias": (width,),
    }


def model_shapes(total_bytes_per_model: int, width: int, itemsize: int) -> dict[str, tuple[int, ...]]:
    """Blocks until the model reaches ``total_bytes_per_model`` (at least one block)."""
    per_block = sum(math.prod(s) for s in block_shapes(width, 0).values()) * itemsize
    blocks = max(1, round(total_bytes_per_model / per_block))
    shapes: dict[str, tuple[int, ...]] = {}
    for b in range(blocks):
        shapes.update(block_shapes(width, b))
    return shapes


def generate_model(folder: Path, shapes: dict[str, tuple[int, ...]], dtype_name: str, model_index: int,
                   shard_bytes: int) -> None:
    """Write one model as ``model-0000i-of-0000n.safetensors`` shards plus ``model.safetensors.index.json``.

    Pretrained values are ``0.02 * randn`` seeded per key; model i > 0 adds ``1e-3 * randn``
    seeded by (i, key), so every fine-tuned model is the pretrained one plus a small change.
    """
    import torch

    from weaving.io import write_safetensors

    dtype = getattr(torch, dtype_name)
    itemsize = DTYPES[dtype_name]
    shards: list[list[str]] = [[]]
    size = 0
    for key, shape in shapes.items():
        nbytes = math.prod(shape) * itemsize
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(shapes)

    def tensor(key: str) -> torch.Tensor:
        index = keys.index(key)
        value = torch.randn(shapes[key], generator=torch.Generator().manual_seed(index)) * 0.02
        if model_index > 0:
            g = torch.Generator().manual_seed(1_000_003 * model_index + index)
            value += 1e-3 * torch.randn(shapes[key], generator=g)
        return value.to(dtype)

    weight_map: dict[str, str] = {}
    for i, shard_keys in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        specs = {k: (shapes[k], dtype) for k in shard_keys}
        write_safetensors(folder / name, specs, ((k, tensor(k)) for k in shard_keys), {"format": "pt"})
        weight_map.update({k: name for k in shard_keys})
    total = sum(math.prod(s) * itemsize for s in shapes.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_cli(command: list[str], log: Path, threads: int) -> dict[str, object]:
    """Run one CLI command; wall time, exit status and the child's peak RSS (ru_maxrss)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    with open(log, "w") as stderr:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    error = None
    if child.returncode != 0:
        lines = log.read_text(errors="replace").strip().splitlines()
        error = lines[-1] if lines else "(no output)"
    return {"returncode": child.returncode, "wall_s": round(wall, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "error": error}


def markdown(rows: list[dict[str, object]]) -> str:
    lines = ["| command | method | inputs GiB | largest tensor MiB | wall s | peak RSS MiB | peak RSS / inputs | status |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        status = "ok" if r["returncode"] == 0 else f"exit {r['returncode']}: {r['error']}"
        lines.append(
            f"| {r['command']} | {r['method']} | {r['inputs_gib']:.2f} | {r['largest_tensor_mib']:.0f} | "
            f"{r['wall_s']:g} | {r['peak_rss_mib']:g} | {r['peak_rss_mib'] / 1024 / r['inputs_gib']:.3f} | {status} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/weaving-bench-streaming"),
                        help="where the synthetic checkpoints go (default /tmp/weaving-bench-streaming)")
    parser.add_argument("--total-gib", type=float, default=26.0, help="total size of all inputs (default 26)")
    parser.add_argument("--tasks", type=int, default=3, help="fine-tuned models T (default 3)")
    parser.add_argument("--width", type=int, default=2048, help="transformer width (default 2048)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--shard-gib", type=float, default=2.0, help="maximum shard size (default 2)")
    parser.add_argument("--methods", nargs="+", default=["task_arithmetic"], help="methods to run")
    parser.add_argument("--commands", nargs="+", choices=["merge", "weave"], default=["merge", "weave"])
    parser.add_argument("--lambdas", default="0.1:1.0:0.1", help="weave search space (default 0.1:1.0:0.1)")
    parser.add_argument("--pooling", default="avg", help="a pooling or a merge method (default avg)")
    parser.add_argument("--space", action="append", default=[], metavar="KEY=SPEC",
                        help="a hyper-parameter axis of the weave's search space (repeatable; the CLI's --space)")
    parser.add_argument("--pooling-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a hyper-parameter of a merge method used as the pooling (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the CLI (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints")
    parser.add_argument("--reuse", action="store_true", help="use checkpoints already in --dir")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    itemsize = DTYPES[args.dtype]
    models = ["pretrained"] + [f"finetuned_{i}" for i in range(args.tasks)]
    per_model = int(args.total_gib * 2**30 / len(models))
    shapes = model_shapes(per_model, args.width, itemsize)
    model_bytes = sum(math.prod(s) for s in shapes.values()) * itemsize
    largest_mib = max(math.prod(s) for s in shapes.values()) * itemsize / 2**20

    args.dir.mkdir(parents=True, exist_ok=True)
    if not args.reuse:
        needed = model_bytes * (len(models) + 1) + 2**30  # inputs, one output, slack
        free = shutil.disk_usage(args.dir).free
        if free < needed:
            sys.exit(f"bench_streaming_cli: {args.dir} has {free / 2**30:.1f} GiB free; "
                     f"{needed / 2**30:.1f} GiB needed (inputs + one output); lower --total-gib or choose --dir")
        for i, name in enumerate(models):
            start = time.perf_counter()
            if (args.dir / name).exists():
                shutil.rmtree(args.dir / name)
            generate_model(args.dir / name, shapes, args.dtype, i, int(args.shard_gib * 2**30))
            print(f"generated {name}: {model_bytes / 2**30:.2f} GiB in {time.perf_counter() - start:.0f} s",
                  file=sys.stderr, flush=True)
    inputs_bytes = sum(folder_bytes(args.dir / name) for name in models)
    print(f"inputs: {inputs_bytes / 2**30:.2f} GiB in {len(models)} models", file=sys.stderr, flush=True)

    weaving_cli = [sys.executable, "-m", "weaving.cli"]
    rows: list[dict[str, object]] = []
    out = args.dir / "out.safetensors"
    try:
        for method in args.methods:
            for command in args.commands:
                cli = weaving_cli + [command, "--pretrained", str(args.dir / "pretrained"), "--finetuned",
                                     *[str(args.dir / m) for m in models[1:]], "--method", method,
                                     "--out", str(out)]
                if command == "weave":
                    cli += ["--lambdas", args.lambdas, "--pooling", args.pooling]
                    cli += [arg for axis in args.space for arg in ("--space", axis)]
                    cli += [arg for value in args.pooling_set for arg in ("--pooling-set", value)]
                result = run_cli(cli, args.dir / f"{command}-{method}.log", args.threads)
                row = {"command": command, "method": method, "inputs_gib": inputs_bytes / 2**30,
                       "largest_tensor_mib": largest_mib, **result,
                       "output_gib": round(out.stat().st_size / 2**30, 2) if out.exists() else None}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                out.unlink(missing_ok=True)
                write_results(args, rows, inputs_bytes, shapes)
    finally:
        out.unlink(missing_ok=True)
        if not args.keep:
            for name in models:
                shutil.rmtree(args.dir / name, ignore_errors=True)
    print(markdown(rows))


def write_results(args: argparse.Namespace, rows: list[dict[str, object]], inputs_bytes: int,
                  shapes: dict[str, tuple[int, ...]]) -> None:
    payload = {
        "inputs_gib": round(inputs_bytes / 2**30, 3), "tasks": args.tasks, "width": args.width,
        "dtype": args.dtype, "tensors_per_model": len(shapes), "shard_gib": args.shard_gib,
        "lambdas": args.lambdas, "pooling": args.pooling, "space": args.space, "pooling_set": args.pooling_set,
        "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                    "platform": platform.platform()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "runs": rows,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.results.with_name(f".{args.results.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, args.results)


if __name__ == "__main__":
    main()
