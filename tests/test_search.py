"""MERGE3 (`weaving.search`): IRT model and fits, estimators, genomes, evolution, end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from weaving import merge, task_vectors
from weaving.errors import InputError, ParamError
from weaving.search.estimators import (
    AnchorEstimator,
    ItemLayout,
    check_fitness_kind,
    gmp_irt,
    mp_irt,
    sample_anchors,
)
from weaving.search.evaluation import CandidateEvaluator, check_disjoint
from weaving.search.evolve import evolve
from weaving.search.experiment import minimum_population_size, run_merge3
from weaving.search.genome import GeneGrid, Genome, GenomeSpec, MergeDecoder
from weaving.search.irt import (
    ItemParameters,
    ability_negative_log_likelihood,
    fit_ability,
    fit_irt,
    fit_lambda,
    item_curve,
    lambda_negative_log_likelihood,
    minimum_subjects,
)

torch.set_num_threads(1)


def simulated(rng: np.random.Generator, subjects: int, items: int, dims: int):
    theta = rng.normal(size=(subjects, dims))
    parameters = ItemParameters(np.exp(rng.normal(0.0, 0.4, size=(items, dims))), rng.normal(0.0, 1.0, size=items))
    probabilities = item_curve(theta, parameters)
    responses = (rng.random(probabilities.shape) < probabilities).astype(np.float64)
    return theta, parameters, probabilities, responses


# ----------------------------------------------------------------------------- IRT model


def test_item_curve_matches_loop_formula():
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(4, 3))
    items = ItemParameters(rng.normal(size=(6, 3)), rng.normal(size=6))
    got = item_curve(theta, items)
    for j in range(4):
        for i in range(6):
            z = sum(items.discrimination[i, d] * theta[j, d] for d in range(3)) - items.difficulty[i]
            assert got[j, i] == pytest.approx(1.0 / (1.0 + math.exp(-z)), rel=1e-12, abs=1e-15)
    assert item_curve(np.array([1e4, 1e4, 1e4]), items).max() <= 1.0  # no overflow


def test_irt_fit_recovers_simulated_parameters_in_one_dimension():
    theta, items, _, responses = simulated(np.random.default_rng(0), subjects=200, items=150, dims=1)
    fit = fit_irt(responses, 1, seed=0)
    # Bounds stated in docs/search.md: abilities and difficulties > 0.9, discriminations > 0.7.
    assert np.corrcoef(theta[:, 0], fit.abilities[:, 0])[0, 1] > 0.9
    assert np.corrcoef(items.difficulty, fit.items.difficulty)[0, 1] > 0.9
    assert np.corrcoef(items.discrimination[:, 0], fit.items.discrimination[:, 0])[0, 1] > 0.7


def test_irt_fit_recovers_response_probabilities_in_two_dimensions():
    _, _, probabilities, responses = simulated(np.random.default_rng(1), subjects=150, items=120, dims=2)
    fit = fit_irt(responses, 2, seed=0)
    fitted = item_curve(fit.abilities, fit.items)
    # Multidimensional abilities are identified up to a transformation; the probabilities are not.
    assert np.corrcoef(probabilities.ravel(), fitted.ravel())[0, 1] > 0.95
    assert fit_irt(responses, 2, seed=0).negative_log_posterior == fit.negative_log_posterior


def test_irt_fit_needs_enough_subjects():
    responses = np.random.default_rng(0).integers(0, 2, size=(minimum_subjects(3) - 1, 20))
    with pytest.raises(ParamError, match="needs at least 10 subjects"):
        fit_irt(responses, 3, seed=0)
    with pytest.raises(InputError, match="0 or 1"):
        fit_irt(np.full((12, 4), 2.0), 1, seed=0)


@pytest.mark.parametrize("prior_scale", [None, 0.7])
def test_ability_gradient_matches_finite_differences(prior_scale):
    rng = np.random.default_rng(2)
    _, items, _, responses = simulated(rng, subjects=1, items=40, dims=3)
    theta = rng.normal(size=3)
    _, gradient = ability_negative_log_likelihood(theta, responses[0], items, prior_scale)
    step = 1e-6
    for d in range(3):
        shift = np.zeros(3)
        shift[d] = step
        up, _ = ability_negative_log_likelihood(theta + shift, responses[0], items, prior_scale)
        down, _ = ability_negative_log_likelihood(theta - shift, responses[0], items, prior_scale)
        assert gradient[d] == pytest.approx((up - down) / (2 * step), rel=1e-6, abs=1e-7)


def test_lambda_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    _, items, _, responses = simulated(rng, subjects=1, items=30, dims=2)
    endpoints = rng.normal(size=(4, 2))
    lambdas = rng.normal(size=4)
    _, gradient = lambda_negative_log_likelihood(lambdas, responses[0], items, endpoints)
    for j in range(4):
        shift = np.zeros(4)
        shift[j] = 1e-6
        up, _ = lambda_negative_log_likelihood(lambdas + shift, responses[0], items, endpoints)
        down, _ = lambda_negative_log_likelihood(lambdas - shift, responses[0], items, endpoints)
        assert gradient[j] == pytest.approx((up - down) / 2e-6, rel=1e-6, abs=1e-7)


def test_ability_fit_is_a_stationary_point_and_recovers_the_ability():
    rng = np.random.default_rng(4)
    items = ItemParameters(np.exp(rng.normal(0, 0.3, (3000, 2))), rng.normal(0, 1, 3000))
    truth = np.array([0.8, -0.5])
    responses = (rng.random(3000) < item_curve(truth, items)).astype(float)
    theta = fit_ability(responses, items)
    _, gradient = ability_negative_log_likelihood(theta, responses, items)
    assert np.abs(gradient).max() < 1e-3
    assert np.abs(theta - truth).max() < 0.25


# ----------------------------------------------------------------------------- estimators


def endpoint_setup(seed: int = 1):
    """Three endpoints with distinct 3-d abilities, 3 tasks of 500 items; ML abilities on all items."""
    rng = np.random.default_rng(seed)
    items = ItemParameters(np.exp(rng.normal(0, 0.3, (1500, 3))), rng.normal(0, 1, 1500))
    truth = np.array([[1.5, -1.0, -1.0], [-1.0, 1.5, -1.0], [-1.0, -1.0, 1.5]])
    responses = (rng.random((3, 1500)) < item_curve(truth, items)).astype(float)
    abilities = np.stack([fit_ability(y, items) for y in responses])
    return rng, items, responses, abilities, ItemLayout(("a", "b", "c"), (500, 500, 500))


def test_mp_irt_with_every_item_seen_is_the_exact_accuracy():
    rng, items, _, abilities, layout = endpoint_setup()
    every = {t: layout.task_items(t) for t in layout.tasks}
    estimator = AnchorEstimator(layout, items, abilities, every)
    candidate = (rng.random(1500) < 0.37).astype(float)
    estimates, _ = estimator.estimate(candidate)
    for task in layout.tasks:
        exact = candidate[layout.task_items(task)].mean()
        assert estimates["mp_irt"][task] == pytest.approx(exact, abs=1e-12)
        assert estimates["anchors"][task] == pytest.approx(exact, abs=1e-12)
        assert estimates["gmp_irt"][task] == pytest.approx(exact, abs=1e-12)


def test_mp_irt_and_gmp_irt_formulas_by_hand():
    assert mp_irt(0.5, 2, 10, np.full(8, 0.25)) == pytest.approx(0.2 * 0.5 + 0.8 * 0.25)
    assert gmp_irt(0.6, 0.2) == pytest.approx(0.4)
    with pytest.raises(ParamError):
        mp_irt(0.5, 11, 10, np.zeros(0))


def test_estimates_follow_the_stated_formulas():
    _, items, responses, abilities, layout = endpoint_setup()
    anchors = sample_anchors(layout, 40, seed=0)
    estimator = AnchorEstimator(layout, items, abilities, anchors)
    candidate = responses[0]
    estimates, lambdas = estimator.estimate(candidate[estimator.anchor_index])
    probabilities = item_curve(lambdas @ abilities, items)
    for task in layout.tasks:
        seen = anchors[task]
        unseen = np.setdiff1d(layout.task_items(task), seen)
        accuracy = candidate[seen].mean()
        expected_mp = 40 / 500 * accuracy + 460 / 500 * probabilities[unseen].mean()
        assert estimates["anchors"][task] == pytest.approx(accuracy)
        assert estimates["mp_irt"][task] == pytest.approx(expected_mp)
        assert estimates["gmp_irt"][task] == pytest.approx(0.5 * accuracy + 0.5 * expected_mp)


def test_candidate_equal_to_an_endpoint_gets_one_hot_lambda_and_its_accuracy():
    rng, items, responses, abilities, layout = endpoint_setup()
    for j in range(3):
        one_hot = np.eye(3)[j]
        assert np.abs(fit_lambda(responses[j], items, abilities) - one_hot).max() < 1e-4
    anchors = {t: np.sort(rng.choice(500, 100, replace=False)) + o for t, o in zip(layout.tasks, layout.offsets)}
    estimator = AnchorEstimator(layout, items, abilities, anchors)
    for j in range(3):
        estimates, lambdas = estimator.estimate(responses[j][estimator.anchor_index])
        assert int(np.argmax(lambdas)) == j
        assert np.abs(lambdas - np.eye(3)[j]).max() < 0.35
        accuracy = np.mean([responses[j][layout.task_items(t)].mean() for t in layout.tasks])
        assert np.mean(list(estimates["mp_irt"].values())) == pytest.approx(accuracy, abs=0.07)


def test_anchor_sampling_is_seeded_and_within_each_task():
    layout = ItemLayout(("a", "b"), (30, 50))
    first, again, other = sample_anchors(layout, 10, 5), sample_anchors(layout, 10, 5), sample_anchors(layout, 10, 6)
    assert all(np.array_equal(first[t], again[t]) for t in layout.tasks)
    assert any(not np.array_equal(first[t], other[t]) for t in layout.tasks)
    assert ((first["a"] >= 0) & (first["a"] < 30)).all() and ((first["b"] >= 30) & (first["b"] < 80)).all()
    assert len(np.unique(first["b"])) == 10


def test_anchors_more_than_items_is_refused():
    with pytest.raises(ParamError, match=r"anchors per task \(31\) exceed.*a \(30\)"):
        sample_anchors(ItemLayout(("a", "b"), (30, 50)), 31, 0)
    with pytest.raises(ParamError, match="positive integer"):
        sample_anchors(ItemLayout(("a",), (30,)), 0, 0)


def test_unknown_fitness_kind_is_refused():
    with pytest.raises(ParamError, match="unknown fitness kind 'mpirt'; valid: full, anchors, mp_irt, gmp_irt"):
        check_fitness_kind("mpirt")


# ----------------------------------------------------------------------------- genomes


def test_gene_grid_values_and_reversed_bounds():
    grid = GeneGrid(0.0, 1.0, 0.1, "coefficient")
    assert grid.levels == 11 and grid.values()[3] == 0.3 and grid.level(0.7) == 7
    with pytest.raises(ParamError, match="coefficient bounds are reversed"):
        GeneGrid(1.0, 0.0, 0.1, "coefficient")
    with pytest.raises(ParamError, match="whole number"):
        GeneGrid(0.0, 1.0, 0.3)
    with pytest.raises(ParamError, match=r"density bounds must lie in \(0, 1\]"):
        GenomeSpec("ties", ("a",), density=GeneGrid(0.0, 1.0, 0.1, "density"))
    with pytest.raises(ParamError, match="unknown search method 'magmax'"):
        GenomeSpec("magmax", ("a",))


def test_genome_layout_and_round_trip():
    spec = GenomeSpec("ties", ("a", "b"))
    assert spec.gene_names == ["coefficient:a", "coefficient:b", "density:a", "density:b"]
    genome = spec.decode([3, 10, 0, 4])
    assert genome == Genome({"a": 0.3, "b": 1.0}, {"a": 0.1, "b": 0.5})
    assert spec.encode(genome) == [3, 10, 0, 4]
    assert GenomeSpec("task_arithmetic", ("a", "b")).num_genes == 2


def small_task_vectors(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {t: {"w": torch.randn(6, 5, generator=g), "b": torch.randn(5, generator=g), "s": torch.randn((), generator=g)}
            for t in ("x", "y", "z")}


def numpy_ties(vectors: list[np.ndarray], densities: list[float]) -> np.ndarray:
    """TIES on flat vectors by the project's rule (docs/merging.md): per row keep `|x| >= kth`, `kth` the
    `(D - k)`-th smallest `|x|` (1-based), `k = int(D * density)`; elected sign; disjoint mean."""
    trimmed = []
    for vector, density in zip(vectors, densities):
        rank = len(vector) - int(len(vector) * density)
        threshold = np.sort(np.abs(vector))[rank - 1] if rank >= 1 else 0.0
        trimmed.append(np.where(np.abs(vector) >= threshold, vector, 0.0))
    stacked = np.stack(trimmed)
    sign = np.sign(stacked.sum(0))
    agree = (np.sign(stacked) == sign) & (stacked != 0)
    return np.where(agree, stacked, 0).sum(0) / np.maximum(agree.sum(0), 1)


def flat(tau: dict[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([tau[k].reshape(-1).double().numpy() for k in sorted(tau)])


def test_decoded_merges_equal_the_methods():
    taus = small_task_vectors()
    decoder = MergeDecoder(taus, seed=3)
    c = {"x": 0.3, "y": 0.7, "z": 0.0}
    scaled = [{k: v * c[t] for k, v in taus[t].items()} for t in ("x", "y", "z")]
    same = {t: 0.4 for t in c}
    for method, hparams in (("task_arithmetic", {}), ("ties", {"density": 0.4}), ("dare", {"p": 0.6, "seed": 3})):
        genome = Genome(c, None if method == "task_arithmetic" else same)
        got = decoder.merged(GenomeSpec(method, ("x", "y", "z")), genome)
        want = merge(method, scaled, lam=1.0, **hparams)
        assert sorted(got) == sorted(want)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-6)


def test_ties_trim_masks_equal_the_method_for_every_grid_density():
    taus = small_task_vectors(4)
    decoder = MergeDecoder(taus)
    spec = GenomeSpec("ties", ("x", "y", "z"))
    for density in spec.density.values():
        for index, task in enumerate(("x", "y", "z")):
            trimmed = merge("ties", [taus[task]], lam=1.0, density=density)
            np.testing.assert_array_equal(decoder._ties_mask(index, density).numpy(), flat(trimmed) != 0)


def test_task_arithmetic_genome_is_the_weighted_sum():
    taus = small_task_vectors(1)
    got = MergeDecoder(taus).merged(GenomeSpec("task_arithmetic", ("x", "y", "z")), Genome({"x": 1.0, "y": 0.5, "z": 0.2}))
    want = 1.0 * flat(taus["x"]) + 0.5 * flat(taus["y"]) + 0.2 * flat(taus["z"])
    np.testing.assert_allclose(flat(got), want, rtol=1e-6, atol=1e-6)


def test_ties_genome_with_per_task_densities_matches_a_numpy_ties():
    taus = small_task_vectors(2)
    c, d = {"x": 0.5, "y": 1.0, "z": 0.8}, {"x": 0.2, "y": 0.6, "z": 1.0}
    got = MergeDecoder(taus).merged(GenomeSpec("ties", ("x", "y", "z")), Genome(c, d))
    want = numpy_ties([c[t] * flat(taus[t]) for t in ("x", "y", "z")], [d[t] for t in ("x", "y", "z")])
    np.testing.assert_allclose(flat(got), want, rtol=1e-6, atol=1e-6)


def test_dare_genome_with_per_task_drop_rates():
    from weaving.methods.dare import dare_keep_mask

    taus = small_task_vectors(3)
    c, d = {"x": 0.5, "y": 1.0, "z": 0.8}, {"x": 0.3, "y": 0.9, "z": 1.0}
    got = MergeDecoder(taus, seed=7).merged(GenomeSpec("dare", ("x", "y", "z")), Genome(c, d))
    want = 0
    for index, t in enumerate(("x", "y", "z")):
        keep = {k: dare_keep_mask(tuple(v.shape), p=1 - d[t], seed=7, task=index, key=k) for k, v in taus[t].items()}
        want = want + c[t] / d[t] * flat({k: v * keep[k] for k, v in taus[t].items()})
    np.testing.assert_allclose(flat(got), want, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- evolution


def separable(target):
    return lambda levels: [-float(sum((a - b) ** 2 for a, b in zip(levels, target)))]


def test_evolve_finds_the_optimum_of_a_separable_fitness():
    target = [3, 7, 0, 10]
    result = evolve(separable(target), [11] * 4, seed=0, population=25, generations=30)
    assert result.best_levels == target and result.best_fitness == [0.0]
    assert [g["generation"] for g in result.generations] == list(range(1, 31))
    bests = [g["best_so_far"] for g in result.generations]
    assert bests == sorted(bests)


def test_evolve_with_a_fixed_seed_gives_the_same_genome():
    first = evolve(separable([2, 9, 5]), [11] * 3, seed=4, generations=4)
    again = evolve(separable([2, 9, 5]), [11] * 3, seed=4, generations=4)
    assert first.best_levels == again.best_levels
    assert [e.levels for e in first.evaluations] == [e.levels for e in again.evaluations]
    assert all(0 <= v <= 10 and isinstance(v, int) for e in first.evaluations for v in e.levels)
    assert len(first.evaluations) == 25 * 4


def test_nsga2_finds_a_point_of_the_front():
    def fitness(levels):
        return [-(levels[0] - 3) ** 2, -(levels[1] - 7) ** 2]

    result = evolve(fitness, [11, 11], seed=1, generations=10, algorithm="nsga2", num_objectives=2)
    assert result.best_levels == [3, 7]
    with pytest.raises(ParamError, match="unknown search algorithm 'cmaes'"):
        evolve(fitness, [11, 11], seed=1, algorithm="cmaes")


# ----------------------------------------------------------------------------- end to end


class TinyEncoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3 * 4 * 4, 8)

    def forward(self, x):
        return self.proj(x.flatten(1))


def toy_problem(tasks=("a", "b", "c"), val_size=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    encoder = TinyEncoder()
    pretrained = {k: torch.randn(v.shape, generator=g) for k, v in encoder.state_dict().items()}
    finetuned = {t: {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in pretrained.items()} for t in tasks}
    heads = {t: torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1) for t in tasks}

    def labelled(n):
        images = torch.randn(n, 3, 4, 4, generator=g)
        return {"images": images, "labels": torch.randint(0, 4, (n,), generator=g)}

    val = {t: labelled(val_size) for t in tasks}
    test = {t: labelled(40) for t in tasks}
    return encoder, pretrained, finetuned, heads, val, test


def test_evaluator_correctness_matches_a_direct_forward_pass():
    encoder, pretrained, finetuned, heads, val, _ = toy_problem()
    evaluator = CandidateEvaluator(encoder, pretrained, heads, val, batch_size=7)
    tau = task_vectors(pretrained, [finetuned["b"]])[0]
    evaluator.load(tau)
    everything = evaluator.correctness()
    reference = TinyEncoder()
    reference.load_state_dict(finetuned["b"])
    offset = 0
    for task in ("a", "b", "c"):
        features = torch.nn.functional.normalize(reference(val[task]["images"]), dim=-1)
        expected = ((features @ heads[task].T).argmax(-1) == val[task]["labels"]).numpy()
        np.testing.assert_array_equal(everything[offset:offset + 30], expected)
        offset += 30
    subset = np.array([2, 35, 89, 40])
    np.testing.assert_array_equal(evaluator.correctness(subset), everything[subset])
    assert evaluator.items_forwarded == 90 + 4


def test_overlapping_validation_split_is_refused():
    _, _, _, _, val, test = toy_problem()
    with pytest.raises(InputError, match="task 'a': the validation data are the test data"):
        check_disjoint(val, {"test": {"a": val["a"]}})
    tagged_val = {"a": {**val["a"], "ids": torch.arange(30)}}
    tagged_test = {"a": {**test["a"], "ids": torch.arange(25, 65)}}
    with pytest.raises(InputError, match="validation split overlaps the test split on 5 examples"):
        check_disjoint(tagged_val, {"test": tagged_test})
    check_disjoint(tagged_val, {"test": {"a": {**test["a"], "ids": torch.arange(30, 70)}}})


def test_run_merge3_refuses_bad_requests_before_any_work():
    encoder, pretrained, finetuned, heads, val, test = toy_problem()
    args = (encoder, pretrained, finetuned, heads, val, test)
    least = minimum_population_size(3, 2)
    assert least == 10 - 4
    with pytest.raises(ParamError, match=f"population_size={least - 1} is too small.*must be >= {least}"):
        run_merge3(*args, population_size=least - 1)
    with pytest.raises(ParamError, match="anchors per task"):
        run_merge3(*args, population_size=least, anchors_per_task=31)
    with pytest.raises(ParamError, match="unknown search method"):
        run_merge3(*args, methods=["slerp"])
    with pytest.raises(ParamError, match="unknown fitness kind"):
        run_merge3(*args, fitness_kinds=["full", "irt"])
    with pytest.raises(ParamError, match="coefficient bounds are reversed"):
        run_merge3(*args, coefficient_grid=GeneGrid(1.0, 0.0, 0.1, "coefficient"))
    with pytest.raises(InputError, match="validation data are the test data"):
        run_merge3(*args, population_size=least, disjoint_from={"test": val})


def test_run_merge3_end_to_end_on_a_toy_problem():
    encoder, pretrained, finetuned, heads, val, test = toy_problem()
    kwargs = {"methods": ["task_arithmetic", "ties"], "population_size": 8, "irt_dims": 2, "anchors_per_task": 5,
              "search_population": 6, "generations": 3, "seed": 0, "audit_estimates": True}
    result = run_merge3(encoder, pretrained, finetuned, heads, val, test, **kwargs)
    assert result["items"]["total"] == 90 and result["items"]["anchors_total"] == 15
    assert result["cost_ratio"] == {"full": 1.0, "anchors": 6.0, "mp_irt": 6.0, "gmp_irt": 6.0}
    assert len(result["population"]["subjects"]) == 1 + 3 + 8
    for method in ("task_arithmetic", "ties"):
        for kind in ("full", "anchors", "mp_irt", "gmp_irt"):
            search = result["searches"][method][kind]
            assert search["item_evaluations"] == search["distinct_candidates"] * search["items_per_candidate"]
            assert len(search["trace"]) == 3
            assert set(search["final"]["test_accuracy"]) == {"a", "b", "c"}
        full = result["searches"][method]["full"]
        assert full["best_fitness"] == pytest.approx(full["final"]["val_mean"])
        assert full["items_forwarded"] == full["item_evaluations"]
        errors = result["estimator_errors"][method]
        assert errors["on_full_search_candidates"]["mp_irt"]["candidates"] == full["distinct_candidates"]
        assert set(errors["on_own_candidates"]) == {"anchors", "mp_irt", "gmp_irt"}
    # the final test accuracy is that of the best genome's merge, evaluated independently
    search = result["searches"]["task_arithmetic"]["gmp_irt"]
    c = search["best_genome"]["coefficients"]
    merged = {k: sum(c[t] * (finetuned[t][k] - pretrained[k]) for t in c) + pretrained[k] for k in pretrained}
    reference = TinyEncoder()
    reference.load_state_dict(merged)
    for task in ("a", "b", "c"):
        features = torch.nn.functional.normalize(reference(test[task]["images"]), dim=-1)
        accuracy = 100.0 * float(((features @ heads[task].T).argmax(-1) == test[task]["labels"]).double().mean())
        assert search["final"]["test_accuracy"][task] == pytest.approx(accuracy, abs=1e-9)
    again = run_merge3(encoder, pretrained, finetuned, heads, val, test, **kwargs)
    for method in ("task_arithmetic", "ties"):
        for kind in ("full", "gmp_irt"):
            assert again["searches"][method][kind]["best_levels"] == result["searches"][method][kind]["best_levels"]
    import json

    json.dumps(result)


def test_run_merge3_with_nsga2_and_dare():
    encoder, pretrained, finetuned, heads, val, _ = toy_problem()
    result = run_merge3(encoder, pretrained, finetuned, heads, val, None, methods=["dare"], fitness_kinds=["mp_irt"],
                        population_size=6, anchors_per_task=5, search_population=6, generations=2,
                        algorithm="nsga2", seed=1)
    search = result["searches"]["dare"]["mp_irt"]
    assert set(search["best_genome"]) == {"coefficients", "densities"}
    assert all(0.1 <= d <= 1.0 for d in search["best_genome"]["densities"].values())
    assert search["final"]["test_accuracy"] is None and len(search["best_fitness_per_task"]) == 3
    assert result["estimator_errors"]["dare"] == {"on_full_search_candidates": {}, "on_own_candidates": {}}
