"""Where one setup of a weave stage spends its time: cProfile of `stages/weave.py`'s `weave_setup`.

Run it in a checkout after `make repro` (it reads the pipeline's outputs and rewrites the same
setup's metrics and woven files, byte for byte what the stage wrote, since the stage is deterministic):

    .venv/bin/python benchmarks/profile_weave_stage.py --setup dg --method ties [--top 25]

Prints the total and the functions with the largest cumulative time (forward passes:
`open_clip/transformer.py`; merges and weaves: `weaving/streaming.py`; SVDs: `linalg_svd`).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", default="dg", help="mtl, cl or dg (default dg)")
    parser.add_argument("--method", default="ties", help="a method of params.yaml (default ties)")
    parser.add_argument("--top", type=int, default=25, help="functions to list (default 25)")
    args = parser.parse_args()

    root = Path.cwd()
    sys.path.insert(0, str(root / "stages"))
    sys.argv = ["weave.py"]
    import torch
    import weave as stage

    from weaving_pipeline.params import load_params

    params = load_params(root / "params.yaml")
    torch.set_num_threads(params.threads)
    inputs = stage.EvaluationInputs(params, params.models[0])
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    stage.weave_setup(inputs, args.setup, args.method)
    profile.disable()
    print(f"weave_setup({args.setup!r}, {args.method!r}): {time.perf_counter() - started:.1f} s "
          f"({params.threads} threads)")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
