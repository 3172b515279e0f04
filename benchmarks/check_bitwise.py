"""Before/after exactness check: every method's `merge` on small random task vectors, bit for bit.

    PYTHONPATH=<old checkout>/src python benchmarks/check_bitwise.py save /tmp/before.pt
    PYTHONPATH=src python benchmarks/check_bitwise.py compare /tmp/before.pt

Cases: seeds 0-2, float32/float64/bfloat16 inputs, T = 1, 3, 8, lam 1 and 0.7, tensors of 0 to
3 dimensions with exact zeros, equal rows and opposite rows (magnitude ties). `compare` reports
every case whose result differs in any key (`torch.equal` and dtype), or whose error differs.
"""

from __future__ import annotations

import sys

import torch

SHAPES = {"a.weight": (33, 17), "b.bias": (17,), "c.scalar": (), "d.w": (5, 3, 7), "e.big": (64, 129)}


def results() -> dict[tuple[object, ...], object]:
    from weaving import METHODS, merge

    torch.set_num_threads(1)
    out: dict[tuple[object, ...], object] = {}
    for seed in (0, 1, 2):
        generator = torch.Generator().manual_seed(seed)
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            for tasks in (1, 3, 8):
                taus = [{k: (torch.randn(s, generator=generator) * 0.01).to(dtype) for k, s in SHAPES.items()}
                        for _ in range(tasks)]
                taus[0]["e.big"][0, :5] = 0
                if tasks > 1:
                    taus[1]["e.big"][1] = taus[0]["e.big"][1]
                    taus[-1]["a.weight"][2] = -taus[0]["a.weight"][2]
                for method in sorted(METHODS):
                    for lam in (1.0, 0.7):
                        try:
                            result: object = merge(method, taus, lam=lam, seed=seed)
                        except Exception as error:  # noqa: BLE001 (errors are compared too)
                            result = repr(error)
                        out[(seed, str(dtype), tasks, method, lam)] = result
    return out


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("save", "compare"):
        raise SystemExit(__doc__)
    now = results()
    if sys.argv[1] == "save":
        torch.save(now, sys.argv[2])
        print(f"{len(now)} cases saved")
        return
    before = torch.load(sys.argv[2])
    differing = 0
    for case, old in before.items():
        new = now[case]
        if isinstance(old, str) or isinstance(new, str):
            same = old == new
        else:
            same = old.keys() == new.keys() and all(
                torch.equal(old[k], new[k]) and old[k].dtype == new[k].dtype for k in old)
        if not same:
            differing += 1
            print(f"differs: {case}")
    print(f"{len(before)} cases, {differing} differing")
    raise SystemExit(1 if differing else 0)


if __name__ == "__main__":
    main()
