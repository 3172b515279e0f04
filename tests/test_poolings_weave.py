"""Weight Weaving: fast paths against Algorithm 1 as written, and poolings against the spec."""

from __future__ import annotations

import pytest
import spec_reference as ref
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from weave_strategies import small_models

from weaving import METHODS, POOLINGS, ParamError, merge, task_vectors, weave, weave_from_merged

LAMBDAS = st.lists(st.floats(-2.0, 2.5).map(lambda x: round(x, 2)), min_size=1, max_size=5)




def test_registry() -> None:
    assert set(POOLINGS) == {"avg", "random", "magmax"}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("pooling", sorted(POOLINGS))
@pytest.mark.parametrize("pool_over", ["all", "augmented"])
def test_fast_path_equals_materialised_algorithm(method: str, pooling: str, pool_over: str) -> None:
    @given(small_models(), LAMBDAS, st.integers(0, 100))
    @settings(max_examples=4, deadline=None)
    def check(taus, lambdas, seed) -> None:
        kwargs = dict(lambdas=lambdas, pooling=pooling, pool_over=pool_over, seed=seed)
        fast = weave(method, taus, **kwargs)
        slow = weave(method, taus, materialize=True, **kwargs)
        assert list(fast) == list(slow)
        for key in fast:
            assert fast[key].dtype == slow[key].dtype and fast[key].shape == slow[key].shape
            if pooling == "random":
                assert torch.equal(fast[key], slow[key]), key
            else:
                torch.testing.assert_close(fast[key], slow[key], rtol=1e-5, atol=1e-6)

    check()


@given(small_models(), LAMBDAS, st.sampled_from(["all", "augmented"]))
@settings(max_examples=25, deadline=None)
def test_avg_and_magmax_follow_the_spec(taus, lambdas, pool_over) -> None:
    merged = ref.task_arithmetic(taus)
    members = ref.members(taus, merged, lambdas, pool_over)
    for pooling, reference in (("avg", ref.pool_avg), ("magmax", ref.pool_magmax)):
        got = weave("task_arithmetic", taus, lambdas=lambdas, pooling=pooling, pool_over=pool_over)
        want = reference(members)
        for key in want:
            torch.testing.assert_close(got[key].double(), want[key], rtol=1e-5, atol=1e-6)


@given(small_models(), LAMBDAS, st.sampled_from(["all", "augmented"]), st.integers(0, 10**6))
@settings(max_examples=15, deadline=None)
def test_random_picks_a_member_at_every_position(taus, lambdas, pool_over, seed) -> None:
    merged = merge("ties", taus)
    got = weave("ties", taus, lambdas=lambdas, pooling="random", pool_over=pool_over, seed=seed)
    for key, value in got.items():
        scaled = [torch.tensor(lam, dtype=torch.float32) * merged[key] for lam in lambdas]  # lam_k * M in float32
        members = ([tau[key] for tau in taus] if pool_over == "all" else []) + scaled
        assert (torch.stack(members) == value.unsqueeze(0)).any(0).all(), key


def test_random_is_uniform_and_seeded() -> None:
    num_tasks, lambdas, n = 3, [0.5, 1.0, 2.0, 4.0], 70_000
    taus = [{"w": torch.full((n,), float(t + 1))} for t in range(num_tasks)]  # tau_t = t + 1
    merged = {"w": torch.full((n,), 100.0)}  # lam_k * M = 50, 100, 200, 400: all members distinct
    pooled = weave_from_merged(taus, merged, lambdas=lambdas, pooling="random", seed=11)["w"]
    member_values = torch.tensor([1.0, 2.0, 3.0, 50.0, 100.0, 200.0, 400.0])
    counts = (pooled.unsqueeze(1) == member_values).sum(0).double()
    assert counts.sum() == n
    expected = n / len(member_values)
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 35.0  # 6 degrees of freedom: P(chi2 > 35) < 1e-5
    again = weave_from_merged(taus, merged, lambdas=lambdas, pooling="random", seed=11)["w"]
    other = weave_from_merged(taus, merged, lambdas=lambdas, pooling="random", seed=12)["w"]
    assert torch.equal(again, pooled) and not torch.equal(other, pooled)
    augmented = weave_from_merged(taus, merged, lambdas=lambdas, pooling="random", pool_over="augmented", seed=11)["w"]
    assert set(augmented.unique().tolist()) == {50.0, 100.0, 200.0, 400.0}


def test_avg_over_a_star_closed_form() -> None:
    taus = [{"w": torch.tensor([1.0, -2.0])}, {"w": torch.tensor([3.0, 0.0])}]
    lambdas = [0.5, 1.5]
    # M = [4, -2]; members: taus, [2, -1], [6, -3]; mean = ([1+3+2+6, -2+0-1-3]) / 4
    pooled = weave("task_arithmetic", taus, lambdas=lambdas, pooling="avg")["w"]
    torch.testing.assert_close(pooled, torch.tensor([3.0, -1.5]))
    augmented = weave("task_arithmetic", taus, lambdas=lambdas, pooling="avg", pool_over="augmented")["w"]
    torch.testing.assert_close(augmented, torch.tensor([4.0, -2.0]))


def test_magmax_with_negative_lambdas_later_member_wins() -> None:
    taus = [{"w": torch.tensor([5.0, 0.5, -1.0])}]
    merged = {"w": torch.tensor([1.0, 1.0, 0.0])}
    # members: tau, -2*M, 2*M; |.| ties between -2M and 2M -> 2M (later); tau wins where larger
    pooled = weave_from_merged(taus, merged, lambdas=[-2.0, 2.0], pooling="magmax")["w"]
    assert torch.equal(pooled, torch.tensor([5.0, 2.0, -1.0]))
    pooled = weave_from_merged(taus, merged, lambdas=[2.0, -2.0], pooling="magmax")["w"]
    assert torch.equal(pooled, torch.tensor([5.0, -2.0, -1.0]))


def test_weave_from_merged_equals_weave_and_dare_seeds() -> None:
    pretrained, finetuned = ref.random_model(3, seed=4)
    taus = task_vectors(pretrained, finetuned)
    for pooling in POOLINGS:
        kwargs = dict(lambdas=[0.2, 0.7], pooling=pooling, seed=3)
        direct = weave("dare", taus, **kwargs)
        via_merged = weave_from_merged(taus, merge("dare", taus, seed=3), **kwargs)
        assert all(torch.equal(direct[k], via_merged[k]) for k in direct)
        own_seed = weave("dare", taus, method_seed=9, **kwargs)
        via_own = weave_from_merged(taus, merge("dare", taus, seed=9), **kwargs)
        assert all(torch.equal(own_seed[k], via_own[k]) for k in own_seed)


def test_weave_errors_name_the_culprit() -> None:
    taus = [{"w": torch.ones(3)}]
    with pytest.raises(ParamError, match="unknown pooling 'max'; valid: avg, magmax, random"):
        weave("ties", taus, lambdas=[1.0], pooling="max")
    with pytest.raises(ParamError, match="unknown pool_over 'both'; valid: all, augmented"):
        weave("ties", taus, lambdas=[1.0], pool_over="both")
    with pytest.raises(ParamError, match="empty"):
        weave("ties", taus, lambdas=[])
    with pytest.raises(ParamError, match=r"lambdas\[1\]"):
        weave("ties", taus, lambdas=[1.0, float("nan")])
    with pytest.raises(ParamError, match="'density'"):
        weave("ties", taus, lambdas=[1.0], density=2.0)
