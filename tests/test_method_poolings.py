"""Merge methods as poolings (docs/merging.md, "Merge methods as poolings"): the pooled vector is the
method run on the materialised members at lam 1, exactly (TSV's shortcut at positive powers of two,
and up to rounding at one lam); TIES's and TSV's shortcuts; seeds; bad requests in the library, the
command line and merge files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from cli_fixtures import make_models, one_line_error, run, weave_files
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file
from weave_strategies import AXES, counting_finalize_at, grids, small_models

import weaving.methods.ties as ties_module
from weaving import METHODS, ParamError, apply_task_vector, merge, task_vectors, weave
from weaving.methods.base import derive_seed

LAMBDAS = st.lists(st.floats(-2.0, 2.5).map(lambda x: round(x, 2)), min_size=1, max_size=3)
POWERS_OF_TWO = st.lists(st.sampled_from([0.25, 0.5, 1.0, 2.0]), min_size=1, max_size=3)


def lambdas_for(pooling: str) -> st.SearchStrategy[list[float]]:
    """Lams at which the pooling's shortcut must equal the materialised members bit for bit: any for
    every method but TSV, whose shortcut scales `M`'s singular values, exact for positive powers of two only."""
    return POWERS_OF_TWO if pooling == "tsv" else LAMBDAS


@st.composite
def pooling_params(draw, pooling: str) -> dict[str, object]:
    """Some of the pooling method's hyper-parameters, at values of `AXES`."""
    axes = AXES.get(pooling, {})
    chosen = draw(st.lists(st.sampled_from(sorted(axes)), unique=True, max_size=len(axes))) if axes else []
    return {name: draw(st.sampled_from(axes[name])) for name in chosen}


def grid_points(method: str, space: dict[str, list[object]], lambdas: list[float]) -> list[tuple[dict, float]]:
    """(non-lam values, lam) of every point, in the documented member order."""
    import itertools

    axes = [p.name for p in METHODS[method].hparams if p.name in space]
    return [(dict(zip(axes, values)), lam) for values in itertools.product(*(space[a] for a in axes))
            for lam in lambdas]


def materialised_members(method: str, taus, space, lambdas, pool_over: str, seed: int) -> list[dict[str, torch.Tensor]]:
    """The members as task-vector dicts: taus (`all`), then `lam * M_c` per point (lam in the key's dtype)."""
    members = list(taus) if pool_over == "all" else []
    for values, lam in grid_points(method, space, lambdas):
        merged = merge(method, taus, lam=1.0, **{"seed": seed, **values})
        members.append({key: torch.tensor(lam, dtype=value.dtype) * value for key, value in merged.items()})
    return members


def assert_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for key in got:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        assert torch.equal(got[key], want[key]), (key, (got[key] - want[key]).abs().max())


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("pooling", sorted(METHODS))
def test_fast_path_equals_materialised_for_methods_as_poolings(method: str, pooling: str) -> None:
    """Every method, every method as the pooling, both pool_over, over grids: exactly equal."""
    @given(small_models(), lambdas_for(pooling), grids(method), pooling_params(pooling),
           st.sampled_from(["all", "augmented"]), st.integers(0, 100))
    @settings(max_examples=2, deadline=None)
    def check(taus, lambdas, space, params, pool_over, seed) -> None:
        kwargs = dict(pooling=pooling, pooling_params=params, pool_over=pool_over, seed=seed, space=space or None)
        fast = weave(method, taus, lambdas, **kwargs)
        slow = weave(method, taus, lambdas, materialize=True, **kwargs)
        assert_equal(fast, slow)

    check()


@pytest.mark.parametrize("pooling", sorted(METHODS))
@pytest.mark.parametrize("method", ["ties", "dare", "task_arithmetic", "breadcrumbs"])
def test_pooled_is_the_method_on_the_materialised_members(method: str, pooling: str) -> None:
    """The definition: `g(members, **params)` at lam 1, members built and merged by `merge` itself.

    Exact for every method (the same per-key code on the same members); for TIES (a shortcut
    for its thresholds) this is the check of the shortcut against TIES on the members.
    """
    @given(small_models(), lambdas_for(pooling), grids(method), pooling_params(pooling),
           st.sampled_from(["all", "augmented"]), st.integers(0, 100))
    @settings(max_examples=3, deadline=None)
    def check(taus, lambdas, space, params, pool_over, seed) -> None:
        pooled = weave(method, taus, lambdas, pooling=pooling, pooling_params=params, pool_over=pool_over,
                       seed=seed, space=space or None)
        members = materialised_members(method, taus, space, lambdas, pool_over, seed)
        if "seed" in METHODS[pooling].defaults and "seed" not in params:
            params = {**params, "seed": derive_seed("pooling", pooling, seed)}
        assert_equal(pooled, merge(pooling, members, lam=1.0, **params))

    check()


@pytest.mark.parametrize("pool_over", ["all", "augmented"])
def test_ties_pooling_selects_over_the_taus_and_each_merge_once(pool_over: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rows: list[int] = []
    original = ties_module.order_statistics

    def counting(ranks, dtype, total, **kwargs):
        rows.append(len(ranks))
        return original(ranks, dtype, total, **kwargs)

    monkeypatch.setattr(ties_module, "order_statistics", counting)
    pretrained, finetuned = make_models(seed=1, tasks=3)
    taus = task_vectors(pretrained, finetuned)
    lambdas = [0.1 * i for i in range(1, 21)]
    space = {"density": [0.2, 0.5]}
    fast = weave("dare", taus, lambdas, pooling="ties", pooling_params={"density": 0.3}, pool_over=pool_over,
                 space={"p": [0.1, 0.4]})
    tasks = 3 if pool_over == "all" else 0
    assert rows == [tasks + 2]  # not tasks + 40 members
    rows.clear()
    slow = weave("dare", taus, lambdas, pooling="ties", pooling_params={"density": 0.3}, pool_over=pool_over,
                 space={"p": [0.1, 0.4]}, materialize=True)
    assert rows == [tasks + 40]
    assert_equal(fast, slow)
    rows.clear()
    weave("ties", taus, lambdas, pooling="ties", pool_over=pool_over, space=space)
    assert rows == [3, 3, tasks + 2]  # the two merges' own selections, then the pooling's


@pytest.mark.parametrize("pool_over", ["all", "augmented"])
def test_tsv_pooling_takes_one_svd_per_task_and_merge(pool_over: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import weaving.methods.tsv as tsv_module

    calls: list[tuple[int, ...]] = []
    original = tsv_module.top_triplets

    def counting(matrix, k):
        calls.append(tuple(matrix.shape))
        return original(matrix, k)

    monkeypatch.setattr(tsv_module, "top_triplets", counting)
    taus = [{"w": torch.randn(8, 6, generator=torch.Generator().manual_seed(i)), "b": torch.ones(3) * i}
            for i in range(3)]
    lambdas = [0.1 * i for i in range(1, 11)]
    weave("dare", taus, lambdas, pooling="tsv", pool_over=pool_over, space={"p": [0.1, 0.4]})
    tasks = 3 if pool_over == "all" else 0
    assert calls == [(8, 6)] * (tasks + 2)  # not tasks + 20 members
    calls.clear()
    weave("dare", taus, lambdas, pooling="tsv", pool_over=pool_over, space={"p": [0.1, 0.4]}, materialize=True)
    assert calls == [(8, 6)] * (tasks + 20)


@pytest.mark.parametrize("lam", [0.3, 0.7, -1.3])
def test_tsv_pooling_with_one_lam_is_tsv_on_the_members_up_to_rounding(lam: float) -> None:
    """One point: the concatenated singular vectors have full rank, so the result is a continuous function
    of the members, and the shortcut's scaled singular values differ from the members' SVD by rounding only."""
    generator = torch.Generator().manual_seed(3)
    taus = [{"w": torch.randn(40, 30, generator=generator, dtype=torch.float64)} for _ in range(3)]
    pooled = weave("task_arithmetic", taus, [lam], pooling="tsv")["w"]
    members = [*taus, {"w": torch.tensor(lam, dtype=torch.float64) * merge("task_arithmetic", taus)["w"]}]
    k = 30 // 4
    triplets = [torch.linalg.svd(member["w"], full_matrices=False) for member in members]
    u = torch.cat([t.U[:, :k] for t in triplets], dim=1)
    s = torch.cat([t.S[:k] for t in triplets])
    v = torch.cat([t.Vh[:k].T for t in triplets], dim=1)

    def polar(a):  # via the symmetric square root, not an SVD: U (U^T U)^(-1/2)
        values, vectors = torch.linalg.eigh(a.T @ a)
        return a @ vectors @ torch.diag(values.rsqrt()) @ vectors.T

    expected = polar(u) @ torch.diag(s) @ polar(v).T
    assert torch.allclose(pooled, expected, rtol=0, atol=1e-9 * expected.abs().max())


def test_majority_sign_pass_of_ties_as_pooling() -> None:
    """Members whose signs cancel exactly in some column need TIES's majority-sign pass."""
    taus = [{"a": torch.tensor([1.0, -1.0, 2.0]), "b": torch.tensor([0.5])},
            {"a": torch.tensor([-1.0, 1.0, -2.0]), "b": torch.tensor([-0.5])}]
    for pool_over in ("all", "augmented"):
        pooled = weave("task_arithmetic", taus, [1.0, -1.0], pooling="ties", pooling_params={"density": 1.0},
                       pool_over=pool_over)
        slow = weave("task_arithmetic", taus, [1.0, -1.0], pooling="ties", pooling_params={"density": 1.0},
                     pool_over=pool_over, materialize=True)
        assert_equal(pooled, slow)
        members = materialised_members("task_arithmetic", taus, {}, [1.0, -1.0], pool_over, 0)
        assert_equal(pooled, merge("ties", members, density=1.0))


def test_dare_as_pooling_takes_a_seed_of_its_own() -> None:
    pretrained, finetuned = make_models(seed=2)
    taus = task_vectors(pretrained, finetuned)
    derived = weave("dare", taus, [0.5, 1.0], pooling="dare", seed=7)
    given_seed = weave("dare", taus, [0.5, 1.0], pooling="dare", seed=7,
                       pooling_params={"seed": derive_seed("pooling", "dare", 7)})
    assert_equal(derived, given_seed)
    same_as_method = weave("dare", taus, [0.5, 1.0], pooling="dare", seed=7, pooling_params={"seed": 7})
    assert any(not torch.equal(derived[k], same_as_method[k]) for k in derived)


def test_weave_from_merged_and_a_method_not_linear_in_lam(monkeypatch: pytest.MonkeyPatch) -> None:
    """A given merged vector pools as the method's own; a method declared not linear in lam is merged at
    every point (`finalize_at`) and never takes TIES's shortcut: the same members, the same result."""
    import dataclasses

    from weaving import weave_from_merged

    pretrained, finetuned = make_models(seed=4)
    taus = task_vectors(pretrained, finetuned)
    lambdas = [0.5, -1.0, 1.5]
    expected = weave("breadcrumbs", taus, lambdas, pooling="ties", pooling_params={"density": 0.4})
    given = weave_from_merged(taus, merge("breadcrumbs", taus), lambdas, pooling="ties",
                              pooling_params={"density": 0.4})
    assert_equal(given, expected)
    calls: list[float] = []
    original = METHODS["breadcrumbs"].start

    def start(hparams, layout):
        return counting_finalize_at(original(hparams, layout), calls)

    nonlinear = dataclasses.replace(METHODS["breadcrumbs"], linear_in_lam=False)
    object.__setattr__(nonlinear, "start", start)
    monkeypatch.setitem(METHODS, "breadcrumbs", nonlinear)
    pooled = weave("breadcrumbs", taus, lambdas, pooling="ties", pooling_params={"density": 0.4})
    assert calls and set(calls) == set(lambdas)
    for key in expected:  # lam * f(taus, 1) against f(taus, lam): equal up to rounding
        torch.testing.assert_close(pooled[key], expected[key], rtol=1e-6, atol=1e-7)


def test_a_keys_members_are_freed_when_the_key_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    """Members are built one key at a time and freed by reference counting (no cycle waits for the GC)."""
    import gc
    import weakref

    from weaving.methods import base

    views: list[weakref.ref] = []
    original = base.Members.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        views.append(weakref.ref(self))

    monkeypatch.setattr(base.Members, "__init__", init)
    taus = [{f"k{i}": torch.randn(6, 5) for i in range(5)} for _ in range(3)]
    gc.disable()
    try:
        for pooling in ("ties", "pcb", "tsv"):
            weave("task_arithmetic", taus, [0.5, 1.0], pooling=pooling)
            assert views and all(view() is None for view in views), pooling
    finally:
        gc.enable()


@pytest.mark.parametrize("kwargs, message", [
    ({"pooling": "nope"}, r"unknown pooling 'nope'; valid: avg, magmax, random, or a merge method as the pooling: breadcrumbs, "),
    ({"pooling": "ties", "pooling_params": {"density": 2.0}},
     r"pooling_params \(pooling 'ties'\): method 'ties': hyper-parameter 'density' must be in \(0, 1\], got 2.0"),
    ({"pooling": "ties", "pooling_params": {"rank": 2}},
     r"pooling_params \(pooling 'ties'\): method 'ties': unknown hyper-parameter\(s\) 'rank'"),
    ({"pooling": "pcb", "pooling_params": {"summed_inter": 1}}, r"hyper-parameter 'summed_inter' must be true or false"),
    ({"pooling": "avg", "pooling_params": {"density": 0.2}}, r"pooling 'avg' takes no parameters.*'density'"),
    ({"pooling": "ties", "pooling_params": "density=0.2"}, r"pooling_params must be a mapping"),
])
def test_library_refuses_bad_poolings_before_any_work(kwargs: dict[str, object], message: str) -> None:
    # the task vectors are not even valid: the request is refused before they are looked at
    with pytest.raises(ParamError, match=message):
        weave("ties", object(), [0.5, 1.0], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ParamError, match=message):
        weave("ties", object(), space={"lam": [0.5], "density": [0.1, 0.2]}, **kwargs)  # type: ignore[arg-type]


def test_pooling_params_need_a_weave() -> None:
    from weaving.request import validate_request

    with pytest.raises(ParamError, match="pooling_params needs a weave"):
        validate_request("ties", lam=1.0, pooling_params={"density": 0.2})


# ---------------------------------------------------------------------------- the command line and merge files


@pytest.fixture
def files(tmp_path: Path) -> tuple[list[str], dict[str, torch.Tensor], list[dict[str, torch.Tensor]], Path]:
    return weave_files(tmp_path, seed=5)


def test_cli_pooling_by_a_method_equals_the_library_and_round_trips(files, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    argv, pretrained, finetuned, out = files
    config = tmp_path / "weave.yaml"
    code, _, err = run(argv + ["--method", "dare", "--lambdas", "0.5:1.5:0.5", "--pooling", "ties",
                               "--pooling-set", "density=0.3", "--seed", "3", "--save-config", str(config)], capsys)
    assert code == 0, err
    taus = task_vectors(pretrained, finetuned)
    pooled = weave("dare", taus, [0.5, 1.0, 1.5], pooling="ties", pooling_params={"density": 0.3}, seed=3)
    got = load_file(out)
    for key, value in apply_task_vector(pretrained, pooled).items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6)
    with safe_open(out, framework="pt") as handle:
        meta = handle.metadata()
    assert meta["pooling"] == "ties" and json.loads(meta["pooling_params"]) == {"density": 0.3}
    text = config.read_text()
    assert "pooling: ties" in text and "pooling_params: {density: 0.3}" in text, text
    out.unlink()
    code, _, err = run(["run", str(config), "--quiet"], capsys)
    assert code == 0, err
    again = load_file(out)
    assert all(torch.equal(again[key], got[key]) for key in got)


@pytest.mark.parametrize("extra, message", [
    (["--pooling", "nope"], r"unknown pooling 'nope'; valid: avg, magmax, random, or a merge method"),
    (["--pooling", "ties", "--pooling-set", "density=2"],
     r"--pooling-set \(--pooling 'ties'\): method 'ties': hyper-parameter 'density' must be in \(0, 1\], got 2"),
    (["--pooling", "ties", "--pooling-set", "density"], r"--pooling-set expects KEY=VALUE"),
    (["--pooling", "ties", "--pooling-set", "density=0.1", "--pooling-set", "density=0.2"],
     r"--pooling-set density given twice"),
    (["--pooling", "magmax", "--pooling-set", "density=0.2"], r"--pooling 'magmax' takes no parameters"),
])
def test_cli_refuses_bad_poolings(files, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv, _, _, out = files
    code, _, err = run(argv + ["--method", "ties", "--lambdas", "0.5,1.0", *extra], capsys)
    assert code == 2
    assert re.search(message, one_line_error(err)), err
    assert not out.exists()


def test_merge_files_take_pooling_params_for_weaves_only(tmp_path: Path) -> None:
    from weaving.mergefile import load_merge_file, to_arguments

    base = "pretrained: p.safetensors\nfinetuned: [a.safetensors]\nmethod: ties\nout: o.safetensors\n"
    (tmp_path / "weave.yaml").write_text(base + "command: weave\nlambdas: '0.5,1.0'\npooling: breadcrumbs\n"
                                         "pooling_params: {beta: 0.3, gamma: 0}\n")
    merge_file, _ = load_merge_file(tmp_path / "weave.yaml")
    namespace = to_arguments(merge_file, tmp_path)
    assert namespace.pooling == "breadcrumbs" and namespace.pooling_assignments == ["beta=0.3", "gamma=0"]
    (tmp_path / "merge.yaml").write_text(base + "pooling_params: {density: 0.2}\n")
    with pytest.raises(ParamError, match="pooling_params: only for command: weave"):
        load_merge_file(tmp_path / "merge.yaml")
