"""Bootstrap intervals (weaving.stats) against the binomial facts they must reproduce."""

from __future__ import annotations

import math

import numpy as np
import pytest

from weaving.stats import MIN_RESAMPLES, mean_accuracy_interval, paired_difference_interval


def bernoulli(rng: np.random.Generator, p: float, n: int) -> np.ndarray:
    return rng.random(n) < p


def test_the_estimate_is_the_task_average_of_the_accuracies() -> None:
    correct = {"a": np.array([1, 1, 0, 0], bool), "b": np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], bool)}
    interval = mean_accuracy_interval(correct, resamples=200, seed=1)
    assert interval.estimate == pytest.approx((50.0 + 50.0) / 2)
    assert interval.low <= interval.estimate <= interval.high


def test_a_perfect_model_has_a_degenerate_interval_and_identical_models_gain_nothing() -> None:
    perfect = {"a": np.ones(50, bool)}
    interval = mean_accuracy_interval(perfect, resamples=200)
    assert (interval.low, interval.estimate, interval.high) == (100.0, 100.0, 100.0)
    rng = np.random.default_rng(0)
    model = {"a": bernoulli(rng, 0.7, 300), "b": bernoulli(rng, 0.4, 200)}
    gain = paired_difference_interval(model, model, resamples=300)
    assert (gain.low, gain.estimate, gain.high) == (0.0, 0.0, 0.0) and not gain.excludes_zero()


def test_the_width_matches_the_binomial_standard_error() -> None:
    """For one task the bootstrap distribution of the accuracy is Binomial(n, p_hat) / n: its 95% interval
    spans about 2 * 1.96 * sqrt(p (1 - p) / n) (normal approximation, n = 2000)."""
    rng = np.random.default_rng(3)
    n = 2000
    correct = {"t": bernoulli(rng, 0.8, n)}
    p_hat = correct["t"].mean()
    interval = mean_accuracy_interval(correct, resamples=4000, seed=0)
    expected = 2 * 1.96 * 100 * math.sqrt(p_hat * (1 - p_hat) / n)
    assert interval.high - interval.low == pytest.approx(expected, rel=0.1)


def test_the_interval_covers_the_true_average_at_about_the_nominal_rate() -> None:
    """Two tasks with known accuracies 70% and 90%; over 200 simulated test sets the 95% interval
    should contain the true average 80% about 95% of the time."""
    rng = np.random.default_rng(11)
    trials, hits = 200, 0
    for trial in range(trials):
        correct = {"a": bernoulli(rng, 0.7, 300), "b": bernoulli(rng, 0.9, 300)}
        interval = mean_accuracy_interval(correct, resamples=400, seed=trial)
        hits += interval.low <= 80.0 <= interval.high
    assert 0.89 <= hits / trials <= 0.99


def test_a_paired_gain_sees_the_images_that_changed_not_the_spread_of_either_model() -> None:
    """b equals a except that 10 of a's wrong answers out of 1000 became right: the gain is 1 point and
    its paired interval (about +-1.96 * sqrt(10) / 1000 * 100 = +-0.62) excludes 0, though the two
    models' own intervals (about +-2.8 points) overlap almost entirely."""
    rng = np.random.default_rng(5)
    a = bernoulli(rng, 0.6, 1000)
    b = a.copy()
    b[np.flatnonzero(~a)[:10]] = True
    gain = paired_difference_interval({"t": a}, {"t": b}, resamples=4000, seed=2)
    assert gain.estimate == pytest.approx(1.0)
    assert gain.excludes_zero() and gain.low > 0
    assert gain.high - gain.low == pytest.approx(2 * 1.96 * 100 * math.sqrt(10) / 1000, rel=0.2)
    own_a = mean_accuracy_interval({"t": a}, resamples=4000, seed=2)
    own_b = mean_accuracy_interval({"t": b}, resamples=4000, seed=2)
    assert own_b.low < own_a.high  # unpaired, the two would look indistinguishable


def test_the_same_seed_gives_the_same_interval_and_another_seed_another() -> None:
    rng = np.random.default_rng(0)
    correct = {"a": bernoulli(rng, 0.5, 100)}
    assert mean_accuracy_interval(correct, seed=4) == mean_accuracy_interval(correct, seed=4)
    assert mean_accuracy_interval(correct, seed=4) != mean_accuracy_interval(correct, seed=5)


@pytest.mark.parametrize("kwargs, message", [
    ({"resamples": MIN_RESAMPLES - 1}, f"resamples must be an integer >= {MIN_RESAMPLES}"),
    ({"resamples": 1000.0}, "resamples must be an integer"),
    ({"level": 1.0}, "level must be in (0, 1)"),
])
def test_bad_settings_are_named(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mean_accuracy_interval({"a": np.ones(3, bool)}, **kwargs)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="task 'a': correctness must be a non-empty 1-D array"):
        mean_accuracy_interval({"a": np.ones((2, 2), bool)})
    with pytest.raises(ValueError, match="paired models cover different tasks"):
        paired_difference_interval({"a": np.ones(3, bool)}, {"b": np.ones(3, bool)})
    with pytest.raises(ValueError, match="task 'a': paired correctness vectors differ in length"):
        paired_difference_interval({"a": np.ones(3, bool)}, {"a": np.ones(4, bool)})
