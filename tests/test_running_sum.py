"""`base.running_sum` and the methods that sum with it (Task Arithmetic, Iso-C, the `avg`
pooling's fast path): left-to-right order, chunk boundaries, stacked and unstacked paths."""

from __future__ import annotations

import pytest
import torch

from weaving import METHODS, DictSource, merge, weave
from weaving.engine import stream_merge
from weaving.methods import base
from weaving.methods.base import running_sum
from weaving.methods.iso_c import iso_c, iso_c_rows
from weaving.methods.task_arithmetic import task_arithmetic, task_arithmetic_rows

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
_INT_OF = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(
        a.contiguous().view(_INT_OF[a.element_size()]), b.contiguous().view(_INT_OF[b.element_size()]))


def _loop_sum(rows: list[torch.Tensor]) -> torch.Tensor:
    out = rows[0].clone()
    for row in rows[1:]:
        out += row
    return out


def _rows(tasks: int, shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # Mixed magnitudes, so that the order of the additions changes the rounding.
    return [(torch.randn(shape, generator=generator, dtype=torch.float64)
             * 10.0 ** torch.randint(-4, 3, shape, generator=generator)).to(dtype) for _ in range(tasks)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tasks", [1, 2, 3, 8])
@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (1,), (999,), (1000,), (1001,), (7, 431), (2, 3, 500)])
def test_running_sum_is_the_left_to_right_loop(monkeypatch, dtype, tasks, shape) -> None:
    monkeypatch.setattr(base, "SUM_CHUNK", 1000)  # sizes below, at and across chunk bounds
    rows = _rows(tasks, shape, dtype)
    out = running_sum(rows)
    assert _same_bits(out, _loop_sum(rows))
    assert out.is_contiguous() and all(out.data_ptr() != row.data_ptr() or not out.numel() for row in rows)
    reference = torch.stack([row.double() for row in rows]).sum(0)
    tolerance = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 3e-2}[dtype]
    scale = torch.stack([row.double().abs() for row in rows]).sum(0)
    assert torch.all((out.double() - reference).abs() <= tolerance * scale + 1e-30)


def test_running_sum_default_chunks_and_non_contiguous_rows() -> None:
    rows = _rows(5, (3 * base.SUM_CHUNK + 17,), torch.float32, seed=1)
    assert _same_bits(running_sum(rows), _loop_sum(rows))
    transposed = [row.view(-1)[: 60 * 70].view(60, 70).t() for row in rows]  # not contiguous
    assert _same_bits(running_sum(transposed), _loop_sum(transposed))


def test_running_sum_order_is_not_pairwise() -> None:
    # (1 + 2^-24) + 2^-24 rounds to 1 twice in float32; 1 + (2^-24 + 2^-24) does not.
    rows = [torch.tensor([1.0]), torch.tensor([2.0**-24]), torch.tensor([2.0**-24])]
    assert running_sum(rows).item() == 1.0
    assert running_sum(rows[::-1]).item() == 1.0 + 2.0**-23


def test_running_sum_refuses_mixed_or_no_rows() -> None:
    with pytest.raises(ValueError):
        running_sum([])
    with pytest.raises(ValueError):
        running_sum([torch.zeros(3), torch.zeros(4)])
    with pytest.raises(ValueError):
        running_sum([torch.zeros(3), torch.zeros(3, dtype=torch.float64)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tasks", [1, 3, 8])
@pytest.mark.parametrize("shape", [(), (0,), (5,), (0, 4), (9, 7), (4, 3, 2)])
def test_stacked_and_rows_paths_agree_bit_for_bit(monkeypatch, dtype, tasks, shape) -> None:
    monkeypatch.setattr(base, "SUM_CHUNK", 16)
    rows = _rows(tasks, shape, dtype, seed=2)
    stacked = torch.stack(rows)
    assert _same_bits(task_arithmetic(stacked), task_arithmetic_rows(rows))
    assert _same_bits(task_arithmetic(stacked), _loop_sum(rows))
    if dtype == torch.bfloat16 and len(shape) == 2 and 0 not in shape:
        return  # no SVD in bfloat16
    assert _same_bits(iso_c(stacked), iso_c_rows(rows))
    if len(shape) != 2:
        assert _same_bits(iso_c_rows(rows), _loop_sum(rows) / tasks)


def test_iso_c_svd_of_the_running_sum() -> None:
    rows = _rows(4, (6, 5), torch.float64, seed=3)
    u, s, vh = torch.linalg.svd(_loop_sum(rows), full_matrices=False)
    assert _same_bits(iso_c_rows(rows), s.mean() * (u @ vh))


def test_registry_wires_both_paths() -> None:
    for name, function in (("task_arithmetic", task_arithmetic_rows), ("iso_c", iso_c_rows)):
        assert METHODS[name].merge_rows is function


def _task_vectors(tasks: int, seed: int) -> list[dict[str, torch.Tensor]]:
    shapes = {"a.weight": (33, 17), "b.bias": (17,), "c.scalar": (), "d.w": (5, 3, 7)}
    return [{key: row for key, row in zip(shapes, [_rows(1, s, torch.float32, seed=seed * 100 + t * 10 + i)[0]
                                                   for i, s in enumerate(shapes.values())], strict=True)}
            for t in range(tasks)]


@pytest.mark.parametrize("method", ["task_arithmetic", "iso_c"])
def test_merge_streams_the_rows_path_with_the_stacked_bits(method) -> None:
    taus = _task_vectors(8, seed=4)
    merged = merge(method, taus, lam=1.0)
    for key in taus[0]:
        stacked = torch.stack([tau[key] for tau in taus])
        assert _same_bits(merged[key], METHODS[method].merge_tensor(stacked, key=key)), key


@pytest.mark.parametrize("method", ["task_arithmetic", "iso_c"])
def test_streaming_from_models_stacks_and_agrees_with_merge(method) -> None:
    # Models (pretrained and fine-tuned sources) take the stacked path; dicts of task vectors the rows path.
    taus = _task_vectors(8, seed=8)
    pretrained = {key: torch.zeros_like(value) for key, value in taus[0].items()}
    streamed = dict(stream_merge(DictSource(pretrained, "pre"), [DictSource(tau, f"ft{t}") for t, tau in enumerate(taus)],
                                 method, lam=1.0))
    merged = merge(method, taus, lam=1.0)
    for key, value in merged.items():
        assert torch.equal(streamed[key], value), key
    if method == "task_arithmetic":
        assert _same_bits(merged["a.weight"], _loop_sum([tau["a.weight"] for tau in taus]))


def test_merge_lam_scales_the_running_sum() -> None:
    taus = _task_vectors(3, seed=5)
    merged = merge("task_arithmetic", taus, lam=0.7)
    for key in taus[0]:
        total = _loop_sum([tau[key] for tau in taus])
        assert _same_bits(merged[key], torch.tensor(0.7, dtype=total.dtype) * total), key


def test_nonfinite_task_vector_is_refused_on_the_rows_path() -> None:
    taus = _task_vectors(3, seed=6)
    taus[1]["b.bias"][4] = float("nan")
    with pytest.raises(Exception, match="b.bias"):
        merge("task_arithmetic", taus)


def test_avg_pooling_fast_path_sums_the_taus_as_task_arithmetic() -> None:
    taus = _task_vectors(5, seed=7)
    lambdas = [0.3, 0.6, 1.0]
    woven = weave("task_arithmetic", taus, lambdas, pooling="avg", pool_over="all")
    for key in taus[0]:
        total = _loop_sum([tau[key] for tau in taus])
        scaled = torch.tensor(lambdas, dtype=total.dtype).sum() * total
        assert _same_bits(woven[key], (_loop_sum([tau[key] for tau in taus]) + scaled) / 8), key
