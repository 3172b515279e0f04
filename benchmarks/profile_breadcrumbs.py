"""Where weaving's in-memory Breadcrumbs spends its time, against the authors' top-k masks.

    python benchmarks/profile_breadcrumbs.py [--tasks 8] [--repeats 3] [--sort]

On the task vectors of bench_peers.py (ViT-B-32 image encoder shapes, random, seeded, one
thread): the steps of `weaving.methods.breadcrumbs.breadcrumbs` on each key's stack
`[T, *shape]` (the stack, `breadcrumbs_mask`: one `torch.topk` per row and the tie-free
`|x| >= v` masks, then the rows with a tie across a rank boundary redone exactly; the masked
sum), summed over keys, against the two `torch.topk` calls per task and key of
rezazzr/breadcrumbs' `TaskVectorMiddleKeep` (`int(d * gamma)` then `int(d * beta)` largest per
row). `--sort` also times the former mask (a stable descending sort of `|x|` per row and a
scatter of the ranks) and checks that both masks are equal. Also counts the rows whose
magnitudes tie across one of the two rank boundaries (where a top-k's choice among equal
magnitudes may differ from the spec's "earlier position first", and where weaving's mask takes
its exact path).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_merge import model_shapes  # noqa: E402


def sorted_mask(stack: torch.Tensor, dropped: int, kept: int) -> torch.Tensor:
    """The former mask: ranks by a stable descending sort of |x|, scattered back."""
    order = torch.sort(stack.abs(), dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(stack.shape[-1]).expand_as(order).contiguous())
    return (rank >= dropped) & (rank < dropped + kept)


def main() -> None:
    from weaving.methods.breadcrumbs import breadcrumbs_mask

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="fastest of (default 3)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--gamma", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sort", action="store_true", help="also time the former sort-based mask")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shapes = model_shapes(quick=False)
    generator = torch.Generator().manual_seed(args.seed)  # bench_peers.write_memory_inputs' draws
    taus = [{key: 1e-3 * torch.randn(shape, generator=generator) for key, shape in shapes.items()}
            for _ in range(args.tasks)]
    names = ["stack", "breadcrumbs_mask", "where + sum", "authors: 2 top-k"]
    steps = dict.fromkeys(names + ["former: stable sort + rank scatter"] * args.sort, 1e9)
    boundary_ties = rows = 0
    for repeat in range(args.repeats):
        spent = dict.fromkeys(steps, 0.0)
        for key in shapes:
            if taus[0][key].ndim == 0:
                continue
            t0 = time.perf_counter()
            stack = torch.stack([tau[key] for tau in taus])
            t1 = time.perf_counter()
            mask = breadcrumbs_mask(stack, beta=args.beta, gamma=args.gamma)
            t2 = time.perf_counter()
            torch.where(mask, stack, torch.zeros((), dtype=stack.dtype)).sum(0)
            t3 = time.perf_counter()
            d = stack.shape[-1]
            dropped, kept = int(d * args.gamma), int(d * args.beta)
            for tau in taus:
                x = tau[key]
                torch.topk(x.abs(), dropped)
                torch.topk(x.abs(), kept)
            t4 = time.perf_counter()
            for name, took in zip(names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                spent[name] += took
            if args.sort:
                t5 = time.perf_counter()
                former = sorted_mask(stack, dropped, kept)
                spent["former: stable sort + rank scatter"] += time.perf_counter() - t5
                if not torch.equal(former, mask):
                    raise SystemExit(f"{key}: the masks differ")
            if repeat == 0:
                values = torch.sort(stack.abs(), dim=-1, descending=True).values.reshape(-1, d)
                rows += values.shape[0]
                for b in (dropped, dropped + kept):
                    if 0 < b < d:
                        boundary_ties += int((values[:, b - 1] == values[:, b]).sum())
        steps = {name: min(steps[name], spent[name]) for name in steps}
    print(f"T = {args.tasks}, {sum(v.numel() for v in taus[0].values()):,} parameters, one thread, fastest of "
          f"{args.repeats} (per step):")
    for name, took in steps.items():
        print(f"  {name}: {took:.2f} s")
    print(f"weaving (stack + mask + where + sum): {sum(steps[name] for name in names[:3]):.2f} s")
    if args.sort:
        print("masks equal to the former sort's on every key")
    print(f"rows with equal magnitudes across a rank boundary: {boundary_ties} of {rows:,}")


if __name__ == "__main__":
    main()
