"""Every merge method against the naive reading of the spec in spec_reference.py."""

from __future__ import annotations

import math

import pytest
import spec_reference as ref
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weaving import METHODS, ParamError, apply_task_vector, merge, quantile, task_vectors, weave
from weaving.methods import base
from weaving.methods.base import ModelLayout
from weaving.methods.breadcrumbs import breadcrumbs_mask

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def models(draw, *, allow_grid: bool = True):
    num_tasks = draw(st.integers(1, 4))
    pretrained, finetuned = ref.random_model(
        num_tasks,
        seed=draw(st.integers(0, 2**31 - 1)),
        shape2d=(draw(st.integers(1, 6)), draw(st.integers(1, 6))),
        length1d=draw(st.integers(1, 9)),
        shape4d=tuple(draw(st.integers(1, 3)) for _ in range(4)),
        zero_size=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        grid=allow_grid and draw(st.booleans()),
    )
    return pretrained, finetuned


HPARAMS = {
    "task_arithmetic": st.just({}),
    "dare": st.fixed_dictionaries({"p": st.sampled_from([0.0, 0.3, 0.5, 0.9]), "seed": st.integers(0, 1000)}),
    "ties": st.fixed_dictionaries({"density": st.one_of(st.just(1.0), st.floats(0.01, 1.0))}),
    "breadcrumbs": st.fixed_dictionaries({"beta": st.floats(0.0, 1.0), "gamma": st.floats(0.0, 1.0)}),
    "magmax": st.just({}),
    "pcb": st.fixed_dictionaries({"ratio": st.one_of(st.just(1.0), st.floats(0.01, 1.0)),
                                  "summed_inter": st.booleans()}),
    "tsv": st.just({}),
    "iso_c": st.just({}),
}
SVD_METHODS = {"tsv", "iso_c"}  # degenerate spectra make SVD bases ambiguous: no grid values


def test_registry_lists_the_eight_methods() -> None:
    assert set(METHODS) == set(HPARAMS)
    assert {name for name, m in METHODS.items() if m.model_wide} == {"ties", "pcb"}
    assert METHODS["ties"].defaults == {"density": 0.2}
    assert METHODS["dare"].defaults == {"p": 0.5, "seed": 0}
    assert METHODS["breadcrumbs"].defaults == {"beta": 0.1, "gamma": 0.01}
    assert METHODS["pcb"].defaults == {"ratio": 0.05, "summed_inter": False}  # the Weight Weaving authors' pairwise form


@given(models())
@settings(max_examples=20, deadline=None)
def test_task_vectors_are_float_differences(model) -> None:
    pretrained, finetuned = model
    taus = task_vectors(pretrained, finetuned)
    expected = ref.direct_task_vectors(pretrained, finetuned)
    for tau, want in zip(taus, expected, strict=True):
        assert set(tau) == {k for k, v in pretrained.items() if v.is_floating_point()}
        for key, value in want.items():
            assert tau[key].dtype == value.dtype and tau[key].shape == value.shape
            torch.testing.assert_close(tau[key], value, rtol=1e-6, atol=1e-6)
    restored = apply_task_vector(pretrained, taus[0])
    assert list(restored) == list(pretrained)
    for key, value in pretrained.items():
        if value.is_floating_point():
            torch.testing.assert_close(restored[key], finetuned[0][key], rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(restored[key], value)


def _check_against_reference(name: str, model, hparams: dict) -> None:
    pretrained, finetuned = model
    taus = task_vectors(pretrained, finetuned)
    merged = merge(name, taus, lam=1.0, **{k: v for k, v in hparams.items() if k != "seed"}, seed=hparams.get("seed", 0))
    expected = ref.REFERENCE[name](taus, hparams)
    assert list(merged) == sorted(taus[0])
    for key, want in expected.items():
        got = merged[key]
        assert got.dtype == taus[0][key].dtype and got.shape == taus[0][key].shape, key
        tolerance = 1e-4 if got.dtype == torch.float32 else 1e-9
        torch.testing.assert_close(got.double(), want.double(), rtol=tolerance, atol=tolerance, msg=lambda m, key=key: f"{name} {key}: {m}")


@pytest.mark.parametrize("name", sorted(HPARAMS))
def test_method_matches_reference(name: str) -> None:
    @given(models(allow_grid=name not in SVD_METHODS), HPARAMS[name])
    @SETTINGS
    def check(model, hparams) -> None:
        _check_against_reference(name, model, hparams)

    check()


@pytest.mark.parametrize("name", sorted(HPARAMS))
def test_every_method_is_linear_in_lam(name: str) -> None:
    @given(models(), HPARAMS[name], st.floats(-3.0, 3.0))
    @settings(max_examples=10, deadline=None)
    def check(model, hparams, lam) -> None:
        taus = task_vectors(*model)
        seed = hparams.pop("seed", 0)
        at_one = merge(name, taus, lam=1.0, seed=seed, **hparams)
        scaled = merge(name, taus, lam=lam, seed=seed, **hparams)
        for key, value in at_one.items():
            assert torch.equal(scaled[key], torch.tensor(lam, dtype=value.dtype) * value), key

    check()


def test_ties_keeps_exactly_the_top_density_per_task_when_signs_agree() -> None:
    # one task: nothing competes, so TIES is the trim of that task at its own k-th magnitude
    values = torch.tensor([[0.5, -3.0, 2.0], [1.0, -0.25, 4.0]])
    taus = [{"w": values, "b": torch.tensor([-1.5, 0.1])}]
    merged = merge("ties", taus, density=0.5)  # D = 8, k = 4: keep |x| >= 4th largest = 1.0
    assert torch.equal(merged["w"], torch.tensor([[0.0, -3.0, 2.0], [1.0, 0.0, 4.0]]))
    assert torch.equal(merged["b"], torch.tensor([-1.5, 0.0]))


def test_ties_majority_sign_fills_tied_columns() -> None:
    # column 0 sums to 0 (tie): the majority sign over columns is + (two positive columns)
    taus = [{"w": torch.tensor([2.0, 1.0, 1.0])}, {"w": torch.tensor([-2.0, 3.0, 1.0])}]
    merged = merge("ties", taus, density=1.0)
    assert torch.equal(merged["w"], torch.tensor([2.0, 2.0, 1.0]))


def test_magmax_later_task_wins_ties() -> None:
    taus = [{"w": torch.tensor([1.0, -2.0])}, {"w": torch.tensor([-1.0, 2.0])}]
    assert torch.equal(merge("magmax", taus)["w"], torch.tensor([-1.0, 2.0]))


def test_breadcrumbs_drops_outliers_then_keeps_the_next_largest() -> None:
    row = torch.tensor([[5.0, -1.0, 4.0, 0.5, -3.0, 2.0, 0.1, 0.2, -0.3, 0.4]])
    merged = merge("breadcrumbs", [{"w": row}], beta=0.3, gamma=0.1)  # drop 1 (5.0), keep 3
    assert torch.equal(merged["w"], torch.tensor([[0.0, 0.0, 4.0, 0.0, -3.0, 2.0, 0.0, 0.0, 0.0, 0.0]]))


def stable_sort_mask(x: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """The spec's Breadcrumbs mask by a plain sort per row: ranks by (-|x|, position), NaN first."""
    if x.ndim == 0 or x.numel() == 0:
        return torch.ones_like(x, dtype=torch.bool)
    d = x.shape[-1]
    dropped, kept = int(d * gamma), int(d * beta)
    rows = []
    for row in x.double().reshape(-1, d).tolist():
        order = sorted(range(d), key=lambda i: (not math.isnan(row[i]), -abs(row[i]) if row[i] == row[i] else 0.0, i))
        keep = set(order[dropped : dropped + kept])
        rows.append([i in keep for i in range(d)])
    return torch.tensor(rows, dtype=torch.bool).reshape(x.shape)


@st.composite
def breadcrumbs_rows(draw):
    """0-D to 3-D tensors (a stack [T, ..., d]), sometimes empty, of small integers (many ties in |x|),
    continuous values, or either with -0.0, NaN and +-inf; every float dtype."""
    shape = draw(st.lists(st.integers(0, 3), max_size=2)) + draw(st.lists(st.integers(1, 24), max_size=1))
    numbers = draw(st.sampled_from([st.integers(-3, 3), st.floats(-4.0, 4.0, width=16)]))
    if draw(st.booleans()):
        numbers = st.one_of(numbers, st.sampled_from([-0.0, math.nan, -math.nan, math.inf, -math.inf]))
    values = draw(st.lists(numbers, min_size=math.prod(shape), max_size=math.prod(shape)))
    dtype = draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]))
    return torch.tensor(values, dtype=torch.float64).reshape(shape).to(dtype)


@given(breadcrumbs_rows(), st.one_of(st.sampled_from([0.0, 0.1, 0.5, 1.0]), st.floats(0.0, 1.0)),
       st.one_of(st.sampled_from([0.0, 0.01, 0.2, 0.6, 1.0]), st.floats(0.0, 1.0)))
@settings(max_examples=300, deadline=None)
def test_breadcrumbs_mask_equals_a_stable_sort(x: torch.Tensor, beta: float, gamma: float) -> None:
    mask = breadcrumbs_mask(x, beta=beta, gamma=gamma)
    assert mask.dtype == torch.bool and torch.equal(mask, stable_sort_mask(x, beta, gamma))


def test_dare_drops_about_p_and_rescales_survivors() -> None:
    tau = {"w": torch.ones(200_000)}
    merged = merge("dare", [tau], p=0.3, seed=5)["w"]
    kept = merged != 0
    assert abs(kept.double().mean().item() - 0.7) < 0.005
    torch.testing.assert_close(merged[kept], torch.full_like(merged[kept], 1 / 0.7))
    assert torch.equal(merge("dare", [tau], p=0.3, seed=5)["w"], merged)
    assert not torch.equal(merge("dare", [tau], p=0.3, seed=6)["w"], merged)


def test_dare_masks_depend_on_task_and_key_not_on_other_keys() -> None:
    g = torch.Generator().manual_seed(0)
    taus = [{"a": torch.randn(50, generator=g), "b": torch.randn(50, generator=g)} for _ in range(2)]
    both = merge("dare", taus, seed=1)
    only_b = merge("dare", [{"b": tau["b"]} for tau in taus], seed=1)
    assert torch.equal(both["b"], only_b["b"])
    ones = merge("dare", [{"a": torch.ones(1000)}] * 2, p=0.5, seed=1)["a"]
    assert (ones == 2.0).any()  # kept in one task only: the task index enters the seed


def test_pcb_constant_rows_give_zero_weights_not_nan() -> None:
    taus = [{"w": torch.full((4,), 2.0)}, {"w": torch.full((4,), -2.0)}]
    merged = merge("pcb", taus)
    assert torch.isfinite(merged["w"]).all()
    assert torch.equal(merged["w"], torch.zeros(4))


def test_tsv_and_iso_c_of_a_single_task() -> None:
    g = torch.Generator().manual_seed(3)
    tau = {"w": torch.randn(5, 3, generator=g, dtype=torch.float64), "b": torch.randn(3, generator=g, dtype=torch.float64)}
    torch.testing.assert_close(merge("tsv", [tau])["w"], tau["w"])  # k = r: the polar factor of U is U
    u, s, vh = torch.linalg.svd(tau["w"], full_matrices=False)
    torch.testing.assert_close(merge("iso_c", [tau])["w"], s.mean() * u @ vh)
    assert torch.equal(merge("iso_c", [tau])["b"], tau["b"])


def test_tsv_svd_reuse_gives_the_same_bits_and_computes_each_matrix_once() -> None:
    """Overlapping subsets of task vectors, as the pipeline's scenarios: within `reuse_svds`, each
    distinct matrix is decomposed once, and every merge and weave is bit for bit the one without it."""
    from weaving.methods.tsv import reuse_svds

    g = torch.Generator().manual_seed(5)
    taus = [{"w": torch.randn(12, 9, generator=g), "b": torch.randn(9, generator=g)} for _ in range(4)]
    subsets = [taus[:3], taus[1:]]

    def run() -> list[dict[str, torch.Tensor]]:
        return ([merge("tsv", subset) for subset in subsets]
                + [weave("task_arithmetic", subset, [0.5, 1.0], pooling="tsv") for subset in subsets])

    without = run()
    with reuse_svds() as memo:
        within = run()
    assert all(torch.equal(a[key], b[key]) for a, b in zip(without, within) for key in a)
    # computed: the 4 task vectors' w, then each weave's M once (its two points share M's SVD);
    # reused: 2 of the second merge's 3, and the 3 of each weave's task vectors
    assert (memo.misses, memo.hits) == (4 + 2, 2 + 3 + 3)
    run()
    assert (memo.misses, memo.hits) == (6, 8)  # after the block, nothing is reused


def test_tsv_svd_reuse_keeps_at_most_its_byte_budget() -> None:
    from weaving.methods.tsv import reuse_svds

    g = torch.Generator().manual_seed(6)
    taus = [{"w": torch.randn(16, 16, generator=g)} for _ in range(3)]
    one = (16 * 16 + 16 + 16 * 16) * 4  # U, S and V^T of one 16 x 16 float32 matrix
    with reuse_svds(max_bytes=2 * one) as memo:
        merge("tsv", taus)
        assert memo.bytes == 2 * one and memo.misses == 3
        merge("tsv", taus[:1])  # evicted first (least recently used): computed again
        assert memo.misses == 4 and memo.bytes <= 2 * one


def test_half_precision_inputs_are_computed_in_float32_and_cast_back() -> None:
    g = torch.Generator().manual_seed(0)
    taus = [{"w": torch.randn(8, 8, generator=g).to(torch.bfloat16)} for _ in range(3)]
    for name in METHODS:
        merged = merge(name, taus)["w"]
        assert merged.dtype == torch.bfloat16
        want = ref.REFERENCE[name]([{"w": t["w"].float()} for t in taus], {})["w"]
        torch.testing.assert_close(merged.double(), want.to(torch.bfloat16).double(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    "name, hparams, culprit",
    [
        ("ties", {"dnsity": 0.2}, "valid: density"),
        ("ties", {"density": 0.0}, "(0, 1]"),
        ("ties", {"density": 1.5}, "density"),
        ("dare", {"p": 1.0}, "[0, 1)"),
        ("dare", {"p": -0.1}, "'p'"),
        ("breadcrumbs", {"beta": 1.1}, "'beta'"),
        ("breadcrumbs", {"gamma": -0.5}, "'gamma'"),
        ("pcb", {"ratio": 0.0}, "'ratio'"),
        ("pcb", {"ratio": float("nan")}, "'ratio'"),
        ("task_arithmetic", {"density": 0.2}, "valid: (none)"),
        ("ties", {"density": "0.2"}, "must be a float"),
        ("pcb", {"summed_inter": 1}, "must be true or false"),
    ],
)
def test_bad_hyperparameters_are_named(name: str, hparams: dict, culprit: str) -> None:
    taus = [{"w": torch.ones(3)}]
    with pytest.raises(ParamError) as info:
        merge(name, taus, **hparams)
    assert culprit in str(info.value) and name in str(info.value)


def test_unknown_method_lists_the_valid_ones() -> None:
    with pytest.raises(ParamError) as info:
        merge("tie", [{"w": torch.ones(3)}])
    assert "'tie'" in str(info.value) and "ties" in str(info.value) and "task_arithmetic" in str(info.value)


def test_model_layout_counts_d() -> None:
    layout = ModelLayout(keys=("a", "b"), shapes={"a": (2, 3), "b": ()}, num_tasks=2, compute_dtype=torch.float32)
    assert layout.total_numel == 7 == math.prod((2, 3)) + 1


@pytest.mark.parametrize("name, hparams", [("pcb", {}), ("pcb", {"ratio": 0.1}), ("ties", {"density": 0.05})])
def test_tail_and_radix_order_statistics_give_identical_merges(name: str, hparams: dict, monkeypatch) -> None:
    pretrained, finetuned = ref.random_model(3, seed=8, shape2d=(30, 40), grid=True)
    taus = task_vectors(pretrained, finetuned)
    with_tails = merge(name, taus, **hparams)
    monkeypatch.setattr(quantile, "TAIL_FRACTION", 0.0)  # forces radix selection
    with_radix = merge(name, taus, **hparams)
    for key, value in with_tails.items():
        assert torch.equal(value, with_radix[key]), key



_INT_OF = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(
        a.view(_INT_OF[a.element_size()]), b.view(_INT_OF[b.element_size()]))


def test_column_chunks_bounds(monkeypatch) -> None:
    monkeypatch.setattr(base, "CHUNK_COLUMNS", 3 * 4096)
    assert base.column_chunks(2 * 3 * 4096 - 1) is None  # under two chunks: whole
    assert base.column_chunks(7 * 4096 + 5) == [(0, 3 * 4096), (3 * 4096, 7 * 4096 + 5)]  # the last takes the rest
    # whole rows of 2816: steps of lcm(4096, 2816) = 45056
    assert base.column_chunks(5 * 45056, row=2816) == [(i * 45056, (i + 1) * 45056) for i in range(5)]


def test_stack_column_chunks_guard(monkeypatch) -> None:
    """`column_chunks` of `taus[0].numel()` for a contiguous stack of at least 1-D tensors, else None."""
    monkeypatch.setattr(base, "CHUNK_COLUMNS", 4096)
    taus = torch.zeros(3, 4, 5 * 4096)
    assert base.stack_column_chunks(taus) == base.column_chunks(4 * 5 * 4096) is not None
    assert base.stack_column_chunks(taus, row=5 * 4096) == base.column_chunks(4 * 5 * 4096, row=5 * 4096)
    assert base.stack_column_chunks(taus.transpose(1, 2)) is None  # not contiguous
    assert base.stack_column_chunks(torch.zeros(3 * 4096 * 4)) is None  # stacked 0-D tensors
    assert base.stack_column_chunks(torch.zeros(3, 4096)) is None  # under two chunks


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_column_chunks_sum_like_the_whole_matrix(dtype: torch.dtype, threads: int, monkeypatch) -> None:
    """The property chunked methods rely on: `x[:, a:b].sum(0)` (view or contiguous copy) has the
    bits of `x.sum(0)[a:b]` on `column_chunks`' bounds (aligned starts, no short last chunk)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(3)
        for tasks in (1, 2, 3, 5, 8):
            for columns, step, row in ((2 * 4096, 4096, 1), (3 * 4096 + 7, 4096, 1), (7 * 4096 + 1000, 8192, 1),
                                       (51 * 2816, 45056, 2816)):
                monkeypatch.setattr(base, "CHUNK_COLUMNS", step)
                x = torch.randn(tasks, columns, generator=generator).to(dtype)
                x[x.abs() < 0.01] = -0.0
                x[:, ::97] *= 1e3
                whole = x.sum(0)
                bounds = base.column_chunks(columns, row=row)
                assert bounds is not None and bounds[-1][1] == columns
                for a, b in bounds:
                    assert _same_bits(x[:, a:b].sum(0), whole[a:b]), (tasks, columns, a, b)
                    assert _same_bits(x[:, a:b].contiguous().sum(0), whole[a:b]), (tasks, columns, a, b)
    finally:
        torch.set_num_threads(before)


CHUNKED = [("dare", {"p": 0.3, "seed": 4}), ("ties", {"density": 0.2}), ("ties", {"density": 0.01}),
           ("ties", {"density": 1.0}), ("breadcrumbs", {"beta": 0.1, "gamma": 0.01})]


@pytest.mark.parametrize("name, hparams", CHUNKED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_chunked_keys_merge_like_whole_keys(name: str, hparams: dict, dtype: torch.dtype, monkeypatch) -> None:
    """Large keys worked on in column chunks (`column_chunks`) give the bits of the whole-key
    computation, small ones (0-D, 1-D, under two chunks) are worked on whole."""
    generator = torch.Generator().manual_seed(5)
    shapes = {"a": (100, 129), "b": (3, 5000), "c": (20000,), "d": (7, 11, 300), "e": (9000, 3), "f": (40, 256),
              "g": (3, 4, 1024), "s": (), "z": (0, 4)}
    for tasks in (1, 3):
        taus = [{k: (torch.randn(s, generator=generator) * 0.01).to(dtype) for k, s in shapes.items()}
                for _ in range(tasks)]
        if tasks > 1:  # columns whose signs cancel: TIES' majority-sign pass, requested from a chunk
            taus[1]["b"][1] = -taus[0]["b"][1]
            taus[2]["b"][1] = 0.0
        monkeypatch.setattr(base, "CHUNK_COLUMNS", 1 << 40)
        whole = merge(name, taus, lam=0.7, **hparams)
        for step in (4096, 8192):
            monkeypatch.setattr(base, "CHUNK_COLUMNS", step)
            chunked = merge(name, taus, lam=0.7, **hparams)
            for key, value in whole.items():
                assert _same_bits(chunked[key], value), (tasks, step, key)
