"""Weight Weaving over search spaces with hyper-parameter axes (docs/merging.md, "Search spaces
over hyper-parameters"): the fast path against the materialised members, grids against point
lists, the member order, the number of merges, and bad spaces in the library and the CLI."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path

import pytest
import spec_reference as ref
import torch
from cli_fixtures import one_line_error, run, weave_files
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file
from weave_strategies import counting_finalize_at, grids, small_models

from weaving import METHODS, POOLINGS, ParamError, apply_task_vector, merge, task_vectors, weave
from weaving.methods.base import ModelWideMethod, PerTensorMethod
from weaving.poolings import member_draws
from weaving.request import validate_request

LAMBDAS = st.lists(st.floats(-2.0, 2.5).map(lambda x: round(x, 2)), min_size=1, max_size=3)

def grid_points(method: str, space: dict[str, list[object]], lambdas: list[float]) -> list[dict[str, object]]:
    """The documented member order: the non-lam axes in the method's declaration order, the last
    fastest, then lam innermost."""
    axes = [p.name for p in METHODS[method].hparams if p.name in space]
    return [{**dict(zip(axes, values)), "lam": lam}
            for values in itertools.product(*(space[a] for a in axes)) for lam in lambdas]


def assert_same(fast: dict[str, torch.Tensor], slow: dict[str, torch.Tensor], exact: bool) -> None:
    assert list(fast) == list(slow)
    for key in fast:
        assert fast[key].dtype == slow[key].dtype and fast[key].shape == slow[key].shape
        if exact:
            assert torch.equal(fast[key], slow[key]), key
        else:
            torch.testing.assert_close(fast[key], slow[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("pooling", sorted(POOLINGS))
@pytest.mark.parametrize("pool_over", ["all", "augmented"])
def test_fast_path_equals_materialised_members(method: str, pooling: str, pool_over: str) -> None:
    @given(small_models(), LAMBDAS, grids(method), st.integers(0, 100))
    @settings(max_examples=3, deadline=None)
    def check(taus, lambdas, space, seed) -> None:
        kwargs = dict(pooling=pooling, pool_over=pool_over, seed=seed)
        fast = weave(method, taus, lambdas, space=space, **kwargs)
        slow = weave(method, taus, lambdas, space=space, materialize=True, **kwargs)
        assert_same(fast, slow, exact=pooling == "random")
        # the same space as an explicit list of points, in the documented order: the same members
        points = weave(method, taus, space=grid_points(method, space, lambdas), **kwargs)
        assert_same(points, fast, exact=True)

    check()


@given(small_models(), LAMBDAS, st.sampled_from(["all", "augmented"]))
@settings(max_examples=10, deadline=None)
def test_avg_and_magmax_follow_the_spec_over_a_grid(taus, lambdas, pool_over) -> None:
    space = {"density": [0.2, 0.6]}
    members: list[dict[str, torch.Tensor]] = []
    for density in space["density"]:  # non-lam combinations outer, lams inner
        merged = ref.ties(taus, density)
        members += ref.members(taus, merged, lambdas, "augmented")
    if pool_over == "all":
        members = [{k: v.double() for k, v in tau.items()} for tau in taus] + members
    for pooling, reference in (("avg", ref.pool_avg), ("magmax", ref.pool_magmax)):
        got = weave("ties", taus, lambdas, pooling=pooling, pool_over=pool_over, space=space)
        want = reference(members)
        for key in want:
            torch.testing.assert_close(got[key].double(), want[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pool_over", ["all", "augmented"])
def test_random_draws_members_in_the_documented_order(pool_over: str) -> None:
    """Member n is the n-th point: non-lam combinations in grid order, lams inner (after the taus)."""
    g = torch.Generator().manual_seed(0)
    taus = [{"w": torch.randn(3000, generator=g)} for _ in range(2)]
    densities, lambdas = [0.8, 0.3], [0.5, 1.0, 2.0]
    pooled = weave("ties", taus, lambdas, pooling="random", pool_over=pool_over, seed=4,
                   space={"density": densities})["w"]

    def stacked(order: list[tuple[float, float]]) -> torch.Tensor:
        merges = {d: merge("ties", taus, density=d)["w"] for d in densities}
        scaled = [torch.tensor(lam, dtype=torch.float32) * merges[d] for d, lam in order]
        return torch.stack(([tau["w"] for tau in taus] if pool_over == "all" else []) + scaled)

    documented = stacked([(d, lam) for d in densities for lam in lambdas])
    draws = member_draws(4, "w", documented.shape[0], (3000,))
    assert torch.equal(pooled, documented.gather(0, draws.unsqueeze(0)).squeeze(0))
    lams_outer = stacked([(d, lam) for lam in lambdas for d in densities])  # another order differs
    assert not torch.equal(pooled, lams_outer.gather(0, draws.unsqueeze(0)).squeeze(0))


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
@pytest.mark.parametrize("method, name, value", [("ties", "density", 0.35), ("dare", "p", 0.3),
                                                 ("breadcrumbs", "beta", 0.4), ("pcb", "ratio", 0.2)])
def test_one_point_axis_equals_todays_weave(method: str, name: str, value: float, pooling: str) -> None:
    pretrained, finetuned = ref.random_model(3, seed=11)
    taus = task_vectors(pretrained, finetuned)
    kwargs = dict(pooling=pooling, seed=2)
    today = weave(method, taus, [0.3, 1.0, 1.4], **{name: value}, **kwargs)
    assert_same(weave(method, taus, [0.3, 1.0, 1.4], space={name: [value]}, **kwargs), today, exact=True)
    assert_same(weave(method, taus, space={name: [value], "lam": "0.3,1.0,1.4"}, **kwargs), today, exact=True)
    points = [{name: value, "lam": lam} for lam in (0.3, 1.0, 1.4)]
    assert_same(weave(method, taus, space=points, **kwargs), today, exact=True)


def test_points_without_lam_are_crossed_with_lambdas_and_may_interleave() -> None:
    pretrained, finetuned = ref.random_model(2, seed=5)
    taus = task_vectors(pretrained, finetuned)
    for pooling in POOLINGS:
        crossed = weave("ties", taus, [0.5, 1.0], pooling=pooling, space=[{"density": 0.4}, {"density": 0.2}])
        listed = weave("ties", taus, pooling=pooling, space=[
            {"density": 0.4, "lam": 0.5}, {"density": 0.4, "lam": 1.0},
            {"density": 0.2, "lam": 0.5}, {"density": 0.2, "lam": 1.0}])
        assert_same(crossed, listed, exact=True)
        interleaved = [{"density": 0.4, "lam": 0.5}, {"density": 0.2, "lam": 0.5}, {"density": 0.4, "lam": 1.5}]
        fast = weave("ties", taus, pooling=pooling, space=interleaved, seed=3)
        slow = weave("ties", taus, pooling=pooling, space=interleaved, seed=3, materialize=True)
        assert_same(fast, slow, exact=pooling == "random")


def test_member_and_merge_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """lam 0.1:1.0:0.1 x density [0.1, 0.2, 0.3]: 30 members, 3 merges (one per density)."""
    request = validate_request("ties", lambdas=None, pooling="avg",
                               space={"lam": "0.1:1.0:0.1", "density": [0.1, 0.2, 0.3]})
    assert request.weave is not None and request.weave.space is not None
    space = request.weave.space
    assert len(space.points) == 30 and space.combinations == ((0.1,), (0.2,), (0.3,))
    assert space.axes == ("density",) and "density" not in request.hparams
    assert [lam for c, lam in space.points[:10]] == pytest.approx([0.1 * i for i in range(1, 11)])
    assert [c for c, _ in space.points] == [0] * 10 + [1] * 10 + [2] * 10

    starts: list[dict[str, object]] = []
    for cls in (ModelWideMethod, PerTensorMethod):
        original = cls.start

        def counting(self, hparams, layout, original=original):
            starts.append(dict(hparams))
            return original(self, hparams, layout)

        monkeypatch.setattr(cls, "start", counting)
    pretrained, finetuned = ref.random_model(3, seed=1)
    taus = task_vectors(pretrained, finetuned)
    lambdas = [round(0.1 * i, 10) for i in range(1, 11)]
    pooled = weave("ties", taus, lambdas, pooling="avg", space={"density": [0.1, 0.2, 0.3]})
    assert [s["density"] for s in starts] == [0.1, 0.2, 0.3]  # one merge per density, not per point
    starts.clear()
    merges = [merge("ties", taus, density=d) for d in (0.1, 0.2, 0.3)]
    for key, value in pooled.items():  # avg over A*: (sum_t tau_t + sum_c sum(lambdas) M_c) / (T + 30)
        total = sum(tau[key].double() for tau in taus) + sum(sum(lambdas) * m[key].double() for m in merges)
        torch.testing.assert_close(value.double(), total / (len(taus) + 30), rtol=1e-5, atol=1e-6)
    starts.clear()
    weave("dare", taus, lambdas, pooling="random", space={"p": [0.1, 0.5], "seed": [0, 1, 2]})
    assert len(starts) == 6 and [(s["p"], s["seed"]) for s in starts] == list(itertools.product([0.1, 0.5], [0, 1, 2]))


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
def test_a_method_not_linear_in_lam_merges_once_per_point(pooling: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Declared not linear, TIES is merged at every point (finalize_at): the same pool."""
    calls: list[float] = []
    original = METHODS["ties"].begin

    def begin(layout, **hparams):
        return counting_finalize_at(original(layout, **hparams), calls)

    nonlinear = dataclasses.replace(METHODS["ties"], linear_in_lam=False, begin=begin)
    pretrained, finetuned = ref.random_model(2, seed=8)
    taus = task_vectors(pretrained, finetuned)
    space = {"density": [0.2, 0.5], "lam": [0.5, 1.5]}
    linear = weave("ties", taus, pooling=pooling, space=space, seed=1)
    monkeypatch.setitem(METHODS, "ties", nonlinear)
    pooled = weave("ties", taus, pooling=pooling, space=space, seed=1)
    assert len(calls) == 4 * len(pooled)  # every point, every key
    for key in linear:
        torch.testing.assert_close(pooled[key], linear[key], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------- bad spaces

TAUS = [{"w": torch.ones(3)}, {"w": torch.zeros(3)}]


@pytest.mark.parametrize("kwargs, message", [
    (dict(space={"rank": [1]}), r"space 'rank': method 'ties' has no hyper-parameter 'rank'; valid: density, lam"),
    (dict(space={"density": []}), r"space density: is empty"),
    (dict(space={"density": "0.3:0.1:0.1"}), r"space density: .*stop"),
    (dict(space={"density": [0.1, 1.5]}), r"space density\[1\]: method 'ties': hyper-parameter 'density' "
                                          r"must be in \(0, 1\], got 1.5"),
    (dict(space={"density": [0.0]}), r"space density\[0\]: .*must be in \(0, 1\]"),
    (dict(space={"lam": [0.5]}), r"lam is given twice: lambdas and space lam"),
    (dict(space=[{"lam": 0.5, "density": 0.1}]), r"lam is given twice: lambdas and space lam"),
    (dict(space={"density": [0.1]}, density=0.2), r"space 'density': density is given twice"),
    (dict(space={"lam": [float("nan")]}, lambdas=None), r"space lam\[0\]"),
    (dict(space=[{"density": 0.1}, {"lam": 1.0}]), r"space\[1\]: names lam differ from point 0's \(density\)"),
    (dict(space=[]), r"space: the list of points is empty"),
    (dict(space=[{"density": 2.0}]), r"space\[0\] density: .*must be in"),
    (dict(space="density=0.1"), r"space must be a mapping"),
    (dict(space={"density": [0.1]}, lambdas=None), r"the search space has no lam: give lambdas or a lam axis"),
])
def test_library_refuses_bad_spaces_naming_the_key(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"lambdas": [0.5, 1.0], **kwargs}
    with pytest.raises(ParamError, match=message):
        weave("ties", TAUS, **arguments)


def test_library_refuses_spaces_elsewhere() -> None:
    with pytest.raises(ParamError, match="space needs a weave"):
        validate_request("ties", lam=1.0, space={"density": [0.1]})
    with pytest.raises(ParamError, match="space needs a method"):
        validate_request(None, lambdas=[1.0], pooling="avg", space={"lam": [1.0]})
    with pytest.raises(ParamError, match="method's seed is given twice"):
        weave("dare", TAUS, [1.0], method_seed=3, space={"seed": [0, 1]})
    with pytest.raises(ParamError, match="true or false"):
        weave("pcb", TAUS, [1.0], space={"summed_inter": [0.5]})
    with pytest.raises(ParamError, match="space 'density': method 'task_arithmetic' has no hyper-parameter"):
        weave("task_arithmetic", TAUS, [1.0], space={"density": [0.1]})


# ---------------------------------------------------------------------------- the command line


@pytest.fixture
def files(tmp_path: Path) -> tuple[list[str], dict[str, torch.Tensor], list[dict[str, torch.Tensor]], Path]:
    return weave_files(tmp_path, seed=3)


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
def test_cli_space_equals_the_library_and_is_recorded(files, pooling: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv, pretrained, finetuned, out = files
    code, _, err = run(argv + ["--method", "ties", "--lambdas", "0.5:1.5:0.5", "--space", "density=0.1,0.3",
                               "--pooling", pooling, "--seed", "4"], capsys)
    assert code == 0, err
    taus = task_vectors(pretrained, finetuned)
    pooled = weave("ties", taus, [0.5, 1.0, 1.5], pooling=pooling, seed=4, space={"density": [0.1, 0.3]})
    expected = apply_task_vector(pretrained, pooled)
    got = load_file(out)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6)
    with safe_open(out, framework="pt") as handle:
        meta = handle.metadata()
    assert json.loads(meta["space"]) == {"density": [0.1, 0.3], "lam": [0.5, 1.0, 1.5]}
    assert json.loads(meta["space_spec"]) == {"density": "0.1,0.3"}
    assert json.loads(meta["lambdas"]) == [0.5, 1.0, 1.5] and meta["lambdas_spec"] == "0.5:1.5:0.5"
    assert (meta["members"], meta["merges"]) == ("6", "2")
    assert json.loads(meta["hparams"]) == {}  # density is swept, not fixed


def test_cli_space_with_lam_axis_and_merge_file(files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv, pretrained, finetuned, out = files
    config = tmp_path / "weave.yaml"
    code, _, err = run(argv + ["--method", "breadcrumbs", "--space", "lam=0.5,1.0", "--space", "beta=0.1:0.3:0.1",
                               "--pooling", "magmax", "--save-config", str(config)], capsys)
    assert code == 0, err
    first = load_file(out)
    taus = task_vectors(pretrained, finetuned)
    pooled = weave("breadcrumbs", taus, pooling="magmax", space={"beta": [0.1, 0.2, 0.3], "lam": [0.5, 1.0]})
    for key, value in apply_task_vector(pretrained, pooled).items():
        torch.testing.assert_close(first[key], value, rtol=1e-5, atol=1e-6)
    with safe_open(out, framework="pt") as handle:
        assert handle.metadata()["lambdas_spec"] == "0.5,1.0"
    out.unlink()
    code, _, err = run(["run", str(config), "--quiet"], capsys)  # the merge file records the space
    assert code == 0, err
    again = load_file(out)
    assert all(torch.equal(again[key], first[key]) for key in first)


@pytest.mark.parametrize("extra, message", [
    (["--lambdas", "0.5", "--space", "rank=1,2"], "--space 'rank': method 'ties' has no hyper-parameter 'rank'"),
    (["--lambdas", "0.5", "--space", "density="], "--space expects KEY=SPEC"),
    (["--lambdas", "0.5", "--space", "density=0.1,5"], r"--space density\[1\]: method 'ties': hyper-parameter "
                                                       r"'density' must be in \(0, 1\], got 5.0"),
    (["--lambdas", "0.5", "--space", "density=0.3:0.1:0.1"], r"--space density: search space"),
    (["--lambdas", "0.5", "--space", "lam=0.1,0.2"], "lam is given twice: --lambdas and --space lam"),
    (["--lambdas", "0.5", "--space", "density=0.1", "--space", "density=0.2"], "--space density given twice"),
    (["--lambdas", "0.5", "--set", "density=0.2", "--space", "density=0.1"],
     r"--space 'density': density is given twice, as an axis and as a fixed value \(--set density\)"),
    (["--space", "density=0.1"], "required: --lambdas"),
])
def test_cli_refuses_bad_spaces(files, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv, _, _, out = files
    code, _, err = run(argv + ["--method", "ties", *extra], capsys)
    assert code == 2
    assert re.search(message, one_line_error(err)), err
    assert not out.exists()



def test_merge_files_take_a_space_for_weaves_only(tmp_path: Path) -> None:
    from weaving.mergefile import load_merge_file, to_arguments

    base = "pretrained: p.safetensors\nfinetuned: [a.safetensors]\nmethod: ties\nout: o.safetensors\n"
    (tmp_path / "weave.yaml").write_text(base + "command: weave\nspace: {lam: '0.5,1.0', density: [0.1, 0.2]}\n")
    merge_file, _ = load_merge_file(tmp_path / "weave.yaml")
    namespace = to_arguments(merge_file, tmp_path)
    assert namespace.lambdas is None and namespace.space == ["lam=0.5,1.0", "density=0.1,0.2"]
    (tmp_path / "merge.yaml").write_text(base + "space: {density: '0.1'}\n")
    with pytest.raises(ParamError, match="space: only for command: weave"):
        load_merge_file(tmp_path / "merge.yaml")
    (tmp_path / "nolam.yaml").write_text(base + "command: weave\nspace: {density: '0.1'}\n")
    with pytest.raises(ParamError, match="lambdas: required for command: weave"):
        load_merge_file(tmp_path / "nolam.yaml")
