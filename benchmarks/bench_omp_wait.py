"""Benchmark: OpenMP's waiting policy for the pipeline's 2-thread stages (the `make repro` setting).

On the embedded outputs (`--root`: a checkout after `make repro`), the tiny CLIP's image encoder on
2 torch threads: evaluation (500 random images, batch 100, images/s) and training steps (batch 128,
AdamW, images/s), best of `--repeats`, each in a fresh interpreter under one OpenMP setting:

- ``passive``: `OMP_WAIT_POLICY=PASSIVE` (what `stages/_common.py` sets unless the caller chose);
- ``spin``: `OMP_WAIT_POLICY=ACTIVE GOMP_SPINCOUNT=300000` (what `make repro` sets: libgomp's own
  default, spin ~300,000 times, then sleep).

Each setting runs alone (`quiet`) and as two such processes at once (`shared`: what
`dvc queue start -j 2` does on 2 cores). Writes ``benchmarks/results/bench_omp_wait.json``.

    python benchmarks/bench_omp_wait.py --root . --repeats 3
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

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "bench_omp_wait.json"
SETTINGS = {"passive": {"OMP_WAIT_POLICY": "PASSIVE"},
            "spin": {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "300000"}}

WORKER = """
import json, sys, time, torch
from weaving.clip import load_pretrained
torch.set_num_threads(2)
visual = load_pretrained(sys.argv[1]).visual
images, batch = torch.randn(500, 3, 32, 32), torch.randn(128, 3, 32, 32)
optimizer = torch.optim.AdamW(visual.parameters(), lr=1e-4)
def evaluate():
    visual.eval()
    with torch.inference_mode():
        for chunk in images.split(100):
            visual(chunk)
def train(steps=10):
    visual.train()
    for _ in range(steps):
        optimizer.zero_grad()
        visual(batch).pow(2).mean().backward()
        optimizer.step()
def best(run, repeats):
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)
repeats = int(sys.argv[2])
print(json.dumps({"evaluate_images_per_s": 500 / best(evaluate, repeats),
                  "train_images_per_s": 1280 / best(train, repeats)}))
"""


def run_workers(setting: str, copies: int, model_dir: Path, repeats: int) -> list[dict]:
    env = {**os.environ, **SETTINGS[setting], "PYTHONPATH": str(HERE.parent / "src"), "HF_HUB_OFFLINE": "1"}
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        if name not in SETTINGS[setting]:
            env.pop(name, None)
    processes = [subprocess.Popen([sys.executable, "-c", WORKER, str(model_dir), str(repeats)], env=env,
                                  stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    return [json.loads(process.communicate()[0]) for process in processes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=HERE.parent, help="checkout holding models/")
    parser.add_argument("--model", default="tiny-clip")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the settings")
    args = parser.parse_args()
    model_dir = args.root.resolve() / "models" / args.model / "pretrained"
    rows: dict[str, dict[str, list]] = {s: {"quiet": [], "shared": []} for s in SETTINGS}
    started = time.perf_counter()
    for _ in range(args.rounds):
        for setting in SETTINGS:
            rows[setting]["quiet"] += run_workers(setting, 1, model_dir, args.repeats)
            rows[setting]["shared"].append(run_workers(setting, 2, model_dir, args.repeats))
    summary = {}
    for setting, runs in rows.items():
        quiet = {k: max(r[k] for r in runs["quiet"]) for k in ("evaluate_images_per_s", "train_images_per_s")}
        shared = {k: max(sum(r[k] for r in pair) for pair in runs["shared"])
                  for k in ("evaluate_images_per_s", "train_images_per_s")}
        summary[setting] = {"quiet": quiet, "shared_total": shared}
        print(f"{setting}: quiet eval {quiet['evaluate_images_per_s']:.0f} img/s, train "
              f"{quiet['train_images_per_s']:.0f} img/s; two processes at once (sum): eval "
              f"{shared['evaluate_images_per_s']:.0f}, train {shared['train_images_per_s']:.0f}", file=sys.stderr)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()},
        "seconds": round(time.perf_counter() - started, 1), "settings": SETTINGS, "summary": summary,
        "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
