"""Benchmark: preparing each embedded dataset from its installed source.

For every embedded dataset, a fresh subprocess imports ``weaving.datasets`` (timed apart:
the parent package ``weaving`` imports torch), then times one ``prepare`` call with the
default profile's limits (pretrain 3000, train 2000, val 0, test 500) and, with ``--full``,
one more without caps. Records wall seconds of the call and the child's peak resident set
(``ru_maxrss`` from ``os.wait4``). Prints a markdown table; writes
``benchmarks/results/bench_datasets_prepare.json`` (or ``--results``).

    python benchmarks/bench_datasets_prepare.py
    python benchmarks/bench_datasets_prepare.py --full --datasets mnist textures
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = ["mnist", "fashion_mnist", "optdigits", "ising", "cahn_hilliard", "textures"]
DEFAULT_LIMITS = {"pretrain": 3000, "train": 2000, "val": 0, "test": 500}

CHILD = r"""
import json, sys, time
started = time.perf_counter()
from weaving.datasets import prepare
imported = time.perf_counter()
meta = prepare(sys.argv[1], out_dir=sys.argv[2], raw_dir=sys.argv[3], seed=0,
               limits=json.loads(sys.argv[4]), progress=False)
done = time.perf_counter()
print(json.dumps({"import_s": imported - started, "prepare_s": done - imported, "splits": meta["splits"]}))
"""


def run_one(name: str, limits: dict, workdir: Path) -> dict:
    out = workdir / f"{name}-{len(os.listdir(workdir))}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, name, str(out), str(workdir / "raw"), json.dumps(limits)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name}: child failed:\n{stderr}")
    record = json.loads(stdout.strip().splitlines()[-1])
    record["peak_rss_mib"] = usage.ru_maxrss / 1024
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=EMBEDDED)
    parser.add_argument("--full", action="store_true", help="also prepare without caps")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "bench_datasets_prepare.json"))
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-datasets-") as tmp:
        for name in args.datasets:
            settings = [("default limits", DEFAULT_LIMITS)]
            if args.full:
                settings.append(("no caps", {"pretrain": 0, "train": None, "val": 0, "test": None}))
            for label, limits in settings:
                record = run_one(name, limits, Path(tmp))
                runs.append({"dataset": name, "limits": label, **record})
                print(f"{name:14s} {label:15s} prepare {record['prepare_s']:6.2f} s  import {record['import_s']:5.2f} s  "
                      f"peak RSS {record['peak_rss_mib']:7.0f} MiB  {record['splits']}", file=sys.stderr)
    print("| dataset | limits | prepare (s) | import (s) | peak RSS (MiB) | sizes |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for r in runs:
        sizes = ", ".join(f"{k} {v}" for k, v in r["splits"].items())
        print(f"| {r['dataset']} | {r['limits']} | {r['prepare_s']:.2f} | {r['import_s']:.2f} | {r['peak_rss_mib']:.0f} | {sizes} |")
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                               "python": platform.python_version()}, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
