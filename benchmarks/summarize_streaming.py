"""Print the streaming-CLI benchmark table (markdown) from every `results/bench_streaming_cli*.json`.

    python benchmarks/summarize_streaming.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
METHOD_ORDER = ["task_arithmetic", "dare", "ties", "breadcrumbs", "magmax", "pcb", "tsv", "iso_c"]


def main() -> None:
    runs = []
    for path in sorted(RESULTS.glob("bench_streaming_cli*.json")):
        for run in json.loads(path.read_text())["runs"]:
            runs.append({**run, "file": path.name})
    runs.sort(key=lambda r: (METHOD_ORDER.index(r["method"]), r["command"] != "merge"))
    print("| method | command | wall s | peak RSS MiB | peak / inputs | inputs GiB | results file |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in runs:
        status = "" if r["returncode"] == 0 else f" (failed: {r['error']})"
        print(f"| {r['method']} | {r['command']}{status} | {r['wall_s']:.1f} | {r['peak_rss_mib']:,.0f} | "
              f"{r['peak_rss_mib'] / 1024 / r['inputs_gib']:.1%} | {r['inputs_gib']:.1f} | `{r['file']}` |")


if __name__ == "__main__":
    main()
