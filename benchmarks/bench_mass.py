"""Benchmark: MASS inference throughput against one merged model's forward.

Random weights (no checkpoint needed): the embedded tiny CLIP (``weaving-tiny-clip``, 32 px)
with T = 6 task vectors, and, with ``--vit-b32``, open_clip ViT-B-32 (224 px) with T = 8.
Task vectors are seeded random perturbations, compressed at 1/T; heads are random unit
rows (10 classes per task); images are seeded noise. Measured, images per second
(fastest of ``--repeats``, one torch thread):

- ``single``: one merged model (theta_pre + TSV-Merge(all)) encoding the batch, plus its head;
- ``mass_warm``: ``MASS.forward`` (routing pass to block L, selection, one answering pass
  per selected set, head choice) with every needed merged model already cached;
- ``mass_cold``: the same from an empty cache (includes building the merged models).

The ratio ``mass_warm / single`` is the issue's target (>= 0.4). Routing of random models is
near uniform, so a batch splits into many selected sets: this is a pessimistic case for the
answering pass, which runs once per set. Writes ``benchmarks/results/bench_mass.json``.

    python benchmarks/bench_mass.py                 # tiny CLIP, ~1 min
    python benchmarks/bench_mass.py --vit-b32       # also ViT-B-32 (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bench_mass.json"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def setup(arch: str, num_tasks: int, num_images: int, seed: int):
    import torch
    import torch.nn.functional as F

    from weaving.clip.models import create_model, image_size_of
    from weaving.compress import compress_task_vectors

    model = create_model(arch, seed=seed)
    pretrained = {k: v.detach().clone() for k, v in model.visual.state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    taus = [{k: 1e-2 * v.abs().mean() * torch.randn(v.shape, generator=generator) for k, v in pretrained.items()}
            for _ in range(num_tasks)]
    compressed = compress_task_vectors(taus)
    heads = [F.normalize(torch.randn(10, model.visual.output_dim, generator=generator), dim=-1)
             for _ in range(num_tasks)]
    size = image_size_of(model)
    images = torch.randn(num_images, 3, size, size, generator=generator)
    return model, pretrained, compressed, heads, images


def best_of(repeats: int, call) -> float:
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        walls.append(time.perf_counter() - start)
    return min(walls)


def bench(arch: str, num_tasks: int, num_images: int, batch_size: int, repeats: int, seed: int) -> dict[str, object]:
    import torch
    import torch.nn.functional as F

    from weaving import apply_task_vector
    from weaving.compress import tsv_merge_compressed
    from weaving.routing import MASS

    model, pretrained, compressed, heads, images = setup(arch, num_tasks, num_images, seed)
    single = model.visual
    single.load_state_dict(apply_task_vector(pretrained, tsv_merge_compressed(compressed)))
    all_heads = torch.cat(heads)

    @torch.inference_mode()
    def run_single():
        for chunk in images.split(batch_size):
            (F.normalize(single(chunk), dim=-1) @ all_heads.T).argmax(dim=1)

    def run_mass(mass):
        for chunk in images.split(batch_size):
            mass(chunk)

    run_single()  # warm-up
    single_s = best_of(repeats, run_single)
    start = time.perf_counter()
    mass = MASS(model, pretrained, compressed, heads)
    construct_s = time.perf_counter() - start
    cold_s = best_of(1, lambda: run_mass(mass))
    builds = mass.stats.model_builds
    mass.cache_size = max(mass.cache_size, builds + 1)
    mass.reset_stats()
    warm_s = best_of(repeats, lambda: run_mass(mass))
    stats = mass.stats_dict()
    return {
        "arch": arch, "tasks": num_tasks, "images": num_images, "batch_size": batch_size, "layer": mass.layer,
        "depth": mass.depth, "single_images_per_s": round(num_images / single_s, 1),
        "mass_warm_images_per_s": round(num_images / warm_s, 1),
        "mass_cold_images_per_s": round(num_images / cold_s, 1),
        "warm_ratio": round(single_s / warm_s, 3), "cold_ratio": round(single_s / cold_s, 3),
        "construct_s": round(construct_s, 2), "merged_models_built_cold": builds,
        "groups_per_batch": round(stats["answering_groups"] / stats["batches"], 2),
        "set_size_histogram": stats["set_size_histogram"],
        "routing_pass_fraction": stats["routing_pass_fraction"],
    }


def markdown(results: list[dict[str, object]]) -> str:
    header = ("| model | T | images x batch | single img/s | MASS warm img/s | warm / single | MASS cold img/s | "
              "merged models built | answering groups / batch |")
    lines = [header, "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['arch']} | {r['tasks']} | {r['images']} x {r['batch_size']} | {r['single_images_per_s']} | "
                     f"{r['mass_warm_images_per_s']} | {r['warm_ratio']:.2f} | {r['mass_cold_images_per_s']} | "
                     f"{r['merged_models_built_cold']} | {r['groups_per_batch']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vit-b32", action="store_true", help="also ViT-B-32 (224 px, T = 8)")
    parser.add_argument("--images", type=int, default=1024, help="tiny CLIP images (default 1024)")
    parser.add_argument("--batch-size", type=int, default=256, help="tiny CLIP batch size (default 256)")
    parser.add_argument("--vit-images", type=int, default=64, help="ViT-B-32 images (default 64)")
    parser.add_argument("--vit-batch-size", type=int, default=64, help="ViT-B-32 batch size (default 64)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results = [bench("weaving-tiny-clip", 6, args.images, args.batch_size, args.repeats, args.seed)]
    print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    if args.vit_b32:
        results.append(bench("ViT-B-32", 8, args.vit_images, args.vit_batch_size, max(1, args.repeats - 1), args.seed))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    table = markdown(results)
    print(table)
    payload = {
        "threads": args.threads, "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "total_s": round(time.perf_counter() - started, 1),
        "results": results, "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
