"""Toy check of MERGE3's estimators where merging matters (not a benchmark of the pipeline).

Six synthetic tasks (10 Gaussian clusters each in 48 dims, shown as 3x4x4 "images"), a
2-layer MLP encoder at a seeded random init as the pretrained model, fixed random unit
heads, each endpoint fine-tuned 150 SGD steps on its task; 100 validation and 400 test
items per task. For several (IRT dims, anchors per task, population size) it runs
`run_merge3` (Task Arithmetic, every fitness kind, audit on) and prints the estimators'
fitness MAE (points) on the full search's candidates and on their own candidates, and the
final validation/test means. About 4 minutes on one core.

    PYTHONPATH=src python benchmarks/search_toy_quality.py
"""

import numpy as np
import torch

torch.set_num_threads(1)
from weaving.search.experiment import run_merge3

g = torch.Generator().manual_seed(0)
T, C, DIN, E = 6, 10, 48, 32


class Enc(torch.nn.Module):
    def __init__(s):
        super().__init__()
        s.l1 = torch.nn.Linear(DIN, 64)
        s.l2 = torch.nn.Linear(64, E)

    def forward(s, x):
        return s.l2(torch.relu(s.l1(x.flatten(1))))


enc = Enc()
torch.manual_seed(0)
pre = {k: v.clone() for k, v in Enc().state_dict().items()}
tasks = [f"t{i}" for i in range(T)]
centers = {t: 1.2 * torch.randn(C, DIN, generator=g) for t in tasks}
heads = {t: torch.nn.functional.normalize(torch.randn(C, E, generator=g), dim=-1) for t in tasks}


def sample(t, n):
    y = torch.randint(0, C, (n,), generator=g)
    x = centers[t][y] + torch.randn(n, DIN, generator=g) * 1.5
    return {"images": x.view(n, 3, 4, 4), "labels": y}


ft = {}
for t in tasks:
    m = Enc()
    m.load_state_dict(pre)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    d = sample(t, 1000)
    for _ in range(150):
        f = torch.nn.functional.normalize(m(d["images"]), dim=-1)
        loss = torch.nn.functional.cross_entropy(10 * f @ heads[t].T, d["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    ft[t] = {k: v.detach().clone() for k, v in m.state_dict().items()}
val = {t: sample(t, 100) for t in tasks}
test = {t: sample(t, 400) for t in tasks}
for dims, anchors, pop in [(1, 4, 20), (2, 4, 20), (4, 4, 20), (2, 10, 20), (2, 4, 60), (6, 4, 60), (6, 4, 20)]:
    r = run_merge3(
        enc,
        pre,
        ft,
        heads,
        val,
        test,
        population_size=pop,
        irt_dims=dims,
        anchors_per_task=anchors,
        audit_estimates=True,
    )
    s = r["searches"]["task_arithmetic"]
    e = r["estimator_errors"]["task_arithmetic"]
    print(
        f"D={dims} n={anchors} pop={pop}",
        "pop acc pre/ft",
        round(np.mean(list(r["population"]["val_accuracy"]["pretrained"].values())), 1),
        round(np.mean([np.mean(list(r["population"]["val_accuracy"][f"finetuned:{t}"].values())) for t in tasks]), 1),
    )
    print(
        "  MAE full-cands",
        {k: round(v["fitness_mae_pp"], 2) for k, v in e["on_full_search_candidates"].items()},
        "own",
        {k: round(v["fitness_mae_pp"], 2) for k, v in e["on_own_candidates"].items()},
    )
    print(
        "  test",
        {k: round(v["final"]["test_mean"], 2) for k, v in s.items()},
        "val",
        {k: round(v["final"]["val_mean"], 2) for k, v in s.items()},
    )
