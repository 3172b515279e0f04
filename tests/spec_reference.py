"""Deliberately naive implementations of /work/shared/spec/merging.md, for tests only.

Written straight from the spec (flatten everything, sort, loop), sharing no code with
`weaving`: tests compare the library against these. Inputs: task vectors as a list of
dicts of float tensors; outputs: dicts in float64 unless said otherwise (tests compare
with a tolerance).
"""

from __future__ import annotations

import hashlib
import math

import torch

Sd = dict[str, torch.Tensor]


def work_dtype(taus: list[Sd]) -> torch.dtype:
    return torch.float64 if any(v.dtype == torch.float64 for v in taus[0].values()) else torch.float32


def flatten(taus: list[Sd]) -> tuple[torch.Tensor, list[tuple[str, torch.Size]]]:
    """T x D matrix over the keys in sorted order."""
    dtype = work_dtype(taus)
    keys = sorted(taus[0])
    layout = [(k, taus[0][k].shape) for k in keys]
    rows = [torch.cat([tau[k].to(dtype).reshape(-1) for k in keys]) if keys else torch.zeros(0, dtype=dtype) for tau in taus]
    return torch.stack(rows), layout


def unflatten(row: torch.Tensor, layout: list[tuple[str, torch.Size]]) -> Sd:
    out, offset = {}, 0
    for key, shape in layout:
        n = math.prod(shape)
        out[key] = row[offset : offset + n].reshape(shape)
        offset += n
    return out


def sign(x: float) -> int:
    return (x > 0) - (x < 0)


def task_arithmetic(taus: list[Sd]) -> Sd:
    out = {}
    for key in taus[0]:
        total = torch.zeros(taus[0][key].shape, dtype=torch.float64)
        for tau in taus:
            total = total + tau[key].double()
        out[key] = total
    return out


def dare_seed(seed: int, task: int, key: str) -> int:
    """As documented in weaving.methods.dare: sha256 of 'dare/<seed>/<t>/<key>', 8 bytes, >> 1."""
    text = f"dare/{seed}/{task}/{key}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:16], 16) // 2


def dare(taus: list[Sd], p: float, seed: int) -> Sd:
    out = {}
    for key in taus[0]:
        total = torch.zeros(taus[0][key].shape, dtype=torch.float64)
        for t, tau in enumerate(taus):
            g = torch.Generator().manual_seed(dare_seed(seed, t, key))
            u = torch.rand(tau[key].shape, generator=g, dtype=torch.float64)
            drop = (u < p).double()
            total = total + tau[key].double() * (1 - drop) / (1 - p)
        out[key] = total
    return out


def ties(taus: list[Sd], density: float) -> Sd:
    x, layout = flatten(taus)
    t_count, d = x.shape
    k = int(d * density)
    trimmed = x.clone()
    if d - k >= 1 and d > 0:
        for t in range(t_count):
            kth = torch.kthvalue(x[t].abs(), d - k).values
            trimmed[t] = torch.where(x[t].abs() >= kth, x[t], torch.zeros_like(x[t]))
    col_sum = trimmed.sum(0)
    s = [sign(float(v)) for v in col_sum]
    majority = sign(sum(s))
    s = [majority if v == 0 else v for v in s]
    merged = torch.zeros(d, dtype=torch.float64)
    for j in range(d):
        agreeing = [float(trimmed[t, j]) for t in range(t_count) if trimmed[t, j] != 0 and sign(float(trimmed[t, j])) == s[j]]
        merged[j] = sum(agreeing) / len(agreeing) if agreeing else 0.0
    return unflatten(merged, layout)


def _breadcrumbs_row(row: list[float], beta: float, gamma: float) -> list[float]:
    d = len(row)
    by_magnitude = sorted(range(d), key=lambda i: (-abs(row[i]), i))
    dropped, kept = int(d * gamma), int(d * beta)
    keep = set(by_magnitude[dropped : dropped + kept])
    return [row[i] if i in keep else 0.0 for i in range(d)]


def breadcrumbs(taus: list[Sd], beta: float, gamma: float) -> Sd:
    out = {}
    for key in taus[0]:
        shape = taus[0][key].shape
        total = torch.zeros(shape, dtype=torch.float64)
        for tau in taus:
            value = tau[key].double()
            if value.ndim == 0:
                total = total + value
                continue
            rows = value.reshape(-1, shape[-1]).tolist() if shape[-1] > 0 else []
            masked = [_breadcrumbs_row(r, beta, gamma) for r in rows]
            total = total + torch.tensor(masked, dtype=torch.float64).reshape(shape)
        out[key] = total
    return out


def magmax_members(members: list[torch.Tensor]) -> torch.Tensor:
    """Per element, the member of largest |x|; ties: later member wins."""
    flat = [m.double().reshape(-1).tolist() for m in members]
    result = []
    for j in range(len(flat[0])):
        best = None
        for values in flat:
            if best is None or abs(values[j]) >= abs(best):
                best = values[j]
        result.append(best)
    return torch.tensor(result, dtype=torch.float64).reshape(members[0].shape)


def magmax(taus: list[Sd]) -> Sd:
    return {key: magmax_members([tau[key] for tau in taus]) for key in taus[0]}


def _row_norm(v: torch.Tensor) -> torch.Tensor:
    low = v.min(dim=1, keepdim=True).values
    high = v.max(dim=1, keepdim=True).values
    span = high - low
    out = torch.zeros_like(v)
    for t in range(v.shape[0]):
        if span[t] > 0:
            out[t] = (v[t] - low[t]) / span[t]
    return out


def pcb(taus: list[Sd], ratio: float, summed_inter: bool = False) -> Sd:
    x, layout = flatten(taus)
    n, d = x.shape
    if d == 0:
        return unflatten(torch.zeros(0, dtype=torch.float64), layout)
    magnitudes = x.abs()
    ordered = torch.sort(magnitudes, dim=1).values
    lo_pos, hi_pos = int(0.01 * d), int(0.99 * d) - 1
    a = torch.stack([magnitudes[t].clamp(ordered[t, lo_pos], ordered[t, hi_pos]) for t in range(n)])
    xc = torch.sign(x) * a
    na = _row_norm(a)
    xn = torch.sign(x) * na
    intra = torch.exp(n * na**2)
    if summed_inter:  # the PCB repository's tanh(X_i * sum_j X_j), on the raw task vectors
        column_sums = sum(x[j] for j in range(n))
        inter = torch.stack([torch.tanh(x[t] * column_sums) for t in range(n)])
    else:
        inter = torch.tanh(xn[:, None, :] * xn[None, :, :]).sum(1)
    b = intra * inter
    b_sorted = torch.sort(b, dim=1).values
    b_pos = min(int(d * (1 - ratio)), d - 1)
    clamped = torch.stack([b[t].clamp(min=b_sorted[t, b_pos]) for t in range(n)])
    w = _row_norm(clamped)
    merged = (xc * w).sum(0) / torch.clamp(w.sum(0), min=1e-12)
    return unflatten(merged.double(), layout)


def _polar(a: torch.Tensor) -> torch.Tensor:
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


def tsv(taus: list[Sd]) -> Sd:
    out = {}
    t_count = len(taus)
    dtype = work_dtype(taus)
    for key in taus[0]:
        values = [tau[key].to(dtype) for tau in taus]
        if values[0].ndim != 2:
            out[key] = sum(v.double() for v in values) / t_count
            continue
        m, n = values[0].shape
        if min(m, n) == 0:
            out[key] = torch.zeros(m, n, dtype=torch.float64)
            continue
        k = max(1, min(m, n) // t_count)
        us, ss, vs = [], [], []
        for v in values:
            u, s, vh = torch.linalg.svd(v, full_matrices=False)
            us.append(u[:, :k])
            ss.append(s[:k])
            vs.append(vh.T[:, :k])
        u_perp, v_perp = _polar(torch.cat(us, dim=1)), _polar(torch.cat(vs, dim=1))
        out[key] = (u_perp @ torch.diag(torch.cat(ss)) @ v_perp.T).double()
    return out


def iso_c(taus: list[Sd]) -> Sd:
    out = {}
    t_count = len(taus)
    dtype = work_dtype(taus)
    for key in taus[0]:
        values = [tau[key].to(dtype) for tau in taus]
        total = sum(values[1:], values[0])
        if total.ndim != 2:
            out[key] = total.double() / t_count
        elif min(total.shape) == 0:
            out[key] = torch.zeros(total.shape, dtype=torch.float64)
        else:
            u, s, vh = torch.linalg.svd(total, full_matrices=False)
            out[key] = (u @ torch.diag(torch.full_like(s, float(s.mean()))) @ vh).double()
    return out


REFERENCE = {
    "task_arithmetic": lambda taus, hp: task_arithmetic(taus),
    "dare": lambda taus, hp: dare(taus, hp.get("p", 0.5), hp.get("seed", 0)),
    "ties": lambda taus, hp: ties(taus, hp.get("density", 0.2)),
    "breadcrumbs": lambda taus, hp: breadcrumbs(taus, hp.get("beta", 0.1), hp.get("gamma", 0.01)),
    "magmax": lambda taus, hp: magmax(taus),
    "pcb": lambda taus, hp: pcb(taus, hp.get("ratio", 0.05), hp.get("summed_inter", False)),
    "tsv": lambda taus, hp: tsv(taus),
    "iso_c": lambda taus, hp: iso_c(taus),
}


def members(taus: list[Sd], merged: Sd, lambdas: list[float], pool_over: str) -> list[Sd]:
    """Algorithm 1's member list: taus (for 'all') then lam_k * M."""
    scaled = [{k: lam * v.double() for k, v in merged.items()} for lam in lambdas]
    return ([{k: v.double() for k, v in tau.items()} for tau in taus] + scaled) if pool_over == "all" else scaled


def pool_avg(member_list: list[Sd]) -> Sd:
    return {k: sum(m[k] for m in member_list) / len(member_list) for k in member_list[0]}


def pool_magmax(member_list: list[Sd]) -> Sd:
    return {k: magmax_members([m[k] for m in member_list]) for k in member_list[0]}


# ---------------------------------------------------------------------------- test models


def random_model(
    num_tasks: int,
    *,
    seed: int,
    shape2d: tuple[int, int] = (4, 5),
    length1d: int = 5,
    shape4d: tuple[int, int, int, int] = (2, 1, 2, 3),
    zero_size: bool = False,
    dtype: torch.dtype = torch.float32,
    grid: bool = False,
) -> tuple[Sd, list[Sd]]:
    """A pretrained state dict and `num_tasks` fine-tuned ones: 0-D, 1-D, 2-D, 4-D float
    tensors, int64 position ids and a bool buffer (optionally a zero-size tensor). With
    `grid`, differences are multiples of 0.25 so that magnitudes and column sums tie."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"blocks.0.weight": shape2d, "blocks.0.bias": (length1d,), "logit_scale": (), "conv.weight": shape4d}
    if zero_size:
        shapes["empty.weight"] = (0, 3)
    pretrained: Sd = {k: torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for k, s in shapes.items()}
    if grid:  # exact in every float dtype, so theta_t - theta_pre is exactly the noise
        pretrained = {k: torch.round(v * 8) / 8 for k, v in pretrained.items()}
    pretrained["position_ids"] = torch.arange(7)
    pretrained["attn_mask"] = torch.tensor([True, False, True])
    finetuned = []
    for _ in range(num_tasks):
        sd = {}
        for key, value in pretrained.items():
            if not value.is_floating_point():
                sd[key] = value.clone()
                continue
            noise = torch.randn(value.shape, generator=g, dtype=torch.float64)
            noise = torch.round(noise * 4) / 4 if grid else noise * 0.1
            sd[key] = (value.double() + noise).to(dtype)
        finetuned.append(sd)
    return pretrained, finetuned


def direct_task_vectors(pretrained: Sd, finetuned: list[Sd]) -> list[Sd]:
    """`theta_t - theta_pre` for the floating keys, computed plainly."""
    return [{k: ft[k] - v for k, v in pretrained.items() if v.is_floating_point()} for ft in finetuned]
