"""Multidimensional two-parameter logistic (2PL) Item Response Theory, as MERGE3 uses it.

The model (Reckase, *Multidimensional Item Response Theory*, 2009; the form used by
tinyBenchmarks, Maia Polo et al., ICML 2024, and MERGE3, Mencattini et al., ICML 2025):

    P(subject j answers item i correctly) = sigmoid(sum_d a_id * theta_jd - b_i)

with `theta_j` in R^D the subject's ability, `a_i` in R^D the item's discrimination and
`b_i` its difficulty. Subjects here are models, items are labelled validation examples
and "correct" is top-1 correctness.

Fits:
- `fit_irt`: item parameters and abilities jointly by maximum a posteriori (MAP) on a
  response matrix, in torch (L-BFGS, float64). Priors: `theta ~ N(0, I)`,
  `b ~ N(0, difficulty_scale^2)`, `a = exp(alpha)` with `alpha ~ N(0, log_discrimination_scale^2)`
  (log-normal, positive discriminations as py-irt's 2PL, so that a higher ability never
  lowers a success probability).
- `fit_ability`: one subject's ability with the items fixed, by maximum likelihood (as the
  reference's `fit_theta`) or MAP with a Gaussian prior, by BFGS with the analytic gradient.
- `fit_lambda`: MERGE3's ability of a merged model as a linear combination of endpoint
  abilities, `theta = sum_j lambda_j theta_j`, lambda fitted by BFGS from `1/J` on the
  responses seen (the anchors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize

from weaving.errors import InputError, ParamError

MIN_SUBJECTS_FLOOR = 10
"""No IRT fit on fewer subjects than this, whatever the number of dimensions."""


def minimum_subjects(dims: int) -> int:
    """The fewest subjects `fit_irt` accepts for `dims` dimensions: `max(10, 2 * (dims + 1))`.

    Each item has `dims + 1` parameters fitted from one response per subject; below two
    responses per item parameter the fit is driven by the priors alone.
    """
    return max(MIN_SUBJECTS_FLOOR, 2 * (dims + 1))


@dataclass(frozen=True)
class ItemParameters:
    """Item parameters of a multidimensional 2PL model: `discrimination` `[I, D]`, `difficulty` `[I]` (float64 numpy)."""

    discrimination: np.ndarray
    difficulty: np.ndarray

    def __post_init__(self) -> None:
        a, b = np.asarray(self.discrimination), np.asarray(self.difficulty)
        if a.ndim != 2 or b.ndim != 1 or a.shape[0] != b.shape[0]:
            raise InputError(
                f"item parameters: discrimination must be [I, D] and difficulty [I], got {a.shape} and {b.shape}"
            )
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise InputError("item parameters hold NaN or inf")
        object.__setattr__(self, "discrimination", a.astype(np.float64))
        object.__setattr__(self, "difficulty", b.astype(np.float64))

    @property
    def num_items(self) -> int:
        return int(self.difficulty.shape[0])

    @property
    def dims(self) -> int:
        return int(self.discrimination.shape[1])

    def subset(self, items: np.ndarray | list[int]) -> ItemParameters:
        """The parameters of `items` (indices), in that order."""
        index = np.asarray(items, dtype=np.int64)
        return ItemParameters(self.discrimination[index], self.difficulty[index])

    def to_dict(self) -> dict[str, list]:
        return {"discrimination": self.discrimination.tolist(), "difficulty": self.difficulty.tolist()}


def item_logits(theta: np.ndarray, items: ItemParameters) -> np.ndarray:
    """`z = theta @ a.T - b`: `[..., I]` for abilities `theta` `[..., D]`."""
    theta = np.asarray(theta, dtype=np.float64)
    if theta.shape[-1] != items.dims:
        raise ParamError(f"ability has {theta.shape[-1]} dimensions, the items {items.dims}")
    return theta @ items.discrimination.T - items.difficulty


def item_curve(theta: np.ndarray, items: ItemParameters) -> np.ndarray:
    """`P = sigmoid(sum_d a_id theta_d - b_i)`: `[..., I]` for abilities `theta` `[..., D]`."""
    z = item_logits(theta, items)
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def _binary_responses(responses: object, what: str) -> np.ndarray:
    array = responses.detach().cpu().numpy() if isinstance(responses, torch.Tensor) else np.asarray(responses)
    if array.dtype == bool:
        return array.astype(np.float64)
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{what}: responses must be 0/1 or boolean, got dtype {array.dtype}")
    values = array.astype(np.float64)
    if not np.isin(values, (0.0, 1.0)).all():
        raise InputError(f"{what}: responses must be 0 or 1 (correct/incorrect), got other values")
    return values


def ability_negative_log_likelihood(
    theta: np.ndarray, responses: np.ndarray, items: ItemParameters, prior_scale: float | None = None
) -> tuple[float, np.ndarray]:
    """`(L, dL/dtheta)` of one subject's responses `y` `[I]` under the items.

    `L = -sum_i [y_i log P_i + (1 - y_i) log(1 - P_i)] (+ |theta|^2 / (2 s^2) with a prior of scale s)`,
    `dL/dtheta = -sum_i (y_i - P_i) a_i (+ theta / s^2)`.
    """
    theta = np.asarray(theta, dtype=np.float64)
    z = item_logits(theta, items)
    value = -float(np.sum(responses * _log_sigmoid(z) + (1.0 - responses) * _log_sigmoid(-z)))
    residual = responses - 0.5 * (1.0 + np.tanh(0.5 * z))
    gradient = -(residual @ items.discrimination)
    if prior_scale is not None:
        value += float(theta @ theta) / (2.0 * prior_scale**2)
        gradient = gradient + theta / prior_scale**2
    return value, gradient


def fit_ability(
    responses: object,
    items: ItemParameters,
    *,
    prior_scale: float | None = None,
    init: np.ndarray | None = None,
) -> np.ndarray:
    """One subject's ability `theta` `[D]` with the items fixed.

    `argmin_theta L(theta)` of `ability_negative_log_likelihood` by BFGS (scipy) with the
    analytic gradient, from `init` (default 0). `prior_scale=None` is maximum likelihood,
    as the reference's `fit_theta`; a number adds the prior `N(0, prior_scale^2 I)` (MAP),
    which keeps the ability finite when every response is correct (or every one wrong).
    """
    y = _binary_responses(responses, "fit_ability")
    if y.ndim != 1 or y.shape[0] != items.num_items:
        raise InputError(f"fit_ability: expected {items.num_items} responses, got shape {y.shape}")
    if prior_scale is not None and not (math.isfinite(prior_scale) and prior_scale > 0):
        raise ParamError(f"prior_scale must be a positive number or None, got {prior_scale!r}")
    start = np.zeros(items.dims) if init is None else np.asarray(init, dtype=np.float64)
    result = minimize(
        lambda t: ability_negative_log_likelihood(t, y, items, prior_scale), start, jac=True, method="BFGS"
    )
    return result.x


def lambda_negative_log_likelihood(
    lambdas: np.ndarray, responses: np.ndarray, items: ItemParameters, endpoint_abilities: np.ndarray
) -> tuple[float, np.ndarray]:
    """`(L, dL/dlambda)` with `theta = lambda @ Theta` (`Theta` `[J, D]`, the endpoints' abilities).

    `L(lambda) = L_ability(lambda @ Theta)`, `dL/dlambda = Theta @ dL/dtheta`.
    """
    theta = np.asarray(lambdas, dtype=np.float64) @ endpoint_abilities
    value, gradient = ability_negative_log_likelihood(theta, responses, items)
    return value, endpoint_abilities @ gradient


def fit_lambda(responses: object, items: ItemParameters, endpoint_abilities: np.ndarray) -> np.ndarray:
    """MERGE3's weights `lambda` `[J]` of a candidate seen only on `items` (its anchors).

    `argmin_lambda L(lambda @ Theta)` by BFGS from `lambda = 1/J` (as the reference's
    `fit_lambda`), the likelihood over the seen items only, no prior. When `J > D` the
    weights are not identified (only `theta = lambda @ Theta` is); the fit is the one BFGS
    reaches from `1/J`.
    """
    y = _binary_responses(responses, "fit_lambda")
    thetas = np.asarray(endpoint_abilities, dtype=np.float64)
    if thetas.ndim != 2 or thetas.shape[1] != items.dims:
        raise InputError(f"fit_lambda: endpoint abilities must be [J, {items.dims}], got {thetas.shape}")
    if y.ndim != 1 or y.shape[0] != items.num_items:
        raise InputError(f"fit_lambda: expected {items.num_items} responses, got shape {y.shape}")
    start = np.full(thetas.shape[0], 1.0 / thetas.shape[0])
    result = minimize(
        lambda lam: lambda_negative_log_likelihood(lam, y, items, thetas), start, jac=True, method="BFGS"
    )
    return result.x


@dataclass(frozen=True)
class IRTFit:
    """The result of `fit_irt`: item parameters, the subjects' abilities `[S, D]`, the objective at the end."""

    items: ItemParameters
    abilities: np.ndarray
    negative_log_posterior: float
    iterations: int


def fit_irt(
    responses: object,
    dims: int,
    *,
    seed: int,
    difficulty_scale: float = 3.0,
    log_discrimination_scale: float = 1.0,
    max_iter: int = 500,
) -> IRTFit:
    """MAP fit of the multidimensional 2PL model to a response matrix `[S subjects, I items]`.

    Minimises, over `theta` `[S, D]`, `alpha` `[I, D]` (`a = exp(alpha)`) and `b` `[I]`:

        - sum_ji [y_ji log P_ji + (1 - y_ji) log(1 - P_ji)]
          + |theta|^2 / 2 + |alpha|^2 / (2 s_alpha^2) + |b|^2 / (2 s_b^2)

    with `P_ji = sigmoid(theta_j . a_i - b_i)`, by L-BFGS (strong Wolfe) in float64 from a
    seeded start (`theta, alpha ~ N(0, 0.1^2)`, `b` = minus the logit of each item's
    smoothed success rate). Needs at least `minimum_subjects(dims)` subjects.
    """
    y = _binary_responses(responses, "fit_irt")
    if y.ndim != 2:
        raise InputError(f"fit_irt: responses must be a [subjects, items] matrix, got shape {y.shape}")
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
        raise ParamError(f"IRT dims must be a positive integer, got {dims!r}")
    subjects, num_items = y.shape
    if subjects < minimum_subjects(dims):
        raise ParamError(
            f"IRT fit with dims={dims} needs at least {minimum_subjects(dims)} subjects (models), got {subjects}; "
            "enlarge the response population or lower dims"
        )
    if num_items < 1:
        raise InputError("fit_irt: no items")
    for name, value in (("difficulty_scale", difficulty_scale), ("log_discrimination_scale", log_discrimination_scale)):
        if not (math.isfinite(value) and value > 0):
            raise ParamError(f"{name} must be a positive number, got {value!r}")
    generator = torch.Generator().manual_seed(int(seed))
    target = torch.from_numpy(y)
    rate = (target.sum(0) + 0.5) / (subjects + 1.0)
    theta = (0.1 * torch.randn(subjects, dims, generator=generator, dtype=torch.float64)).requires_grad_()
    alpha = (0.1 * torch.randn(num_items, dims, generator=generator, dtype=torch.float64)).requires_grad_()
    b = (-torch.log(rate / (1 - rate))).requires_grad_()
    optimizer = torch.optim.LBFGS(
        [theta, alpha, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-12,
        history_size=20, line_search_fn="strong_wolfe",
    )

    def objective() -> torch.Tensor:
        logits = theta @ alpha.exp().T - b
        likelihood = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum")
        prior = 0.5 * (theta.square().sum() + alpha.square().sum() / log_discrimination_scale**2
                       + b.square().sum() / difficulty_scale**2)
        return likelihood + prior

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        final = float(objective())
    iterations = int(optimizer.state[optimizer._params[0]].get("n_iter", 0))
    items = ItemParameters(alpha.detach().exp().numpy().copy(), b.detach().numpy().copy())
    return IRTFit(items, theta.detach().numpy().copy(), final, iterations)
