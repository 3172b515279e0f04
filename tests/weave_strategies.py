"""Hypothesis strategies shared by the weaving tests: small random models as task vectors."""

from __future__ import annotations

import spec_reference as ref
from hypothesis import strategies as st

from weaving import task_vectors


@st.composite
def small_models(draw):
    """Task vectors of 1-3 fine-tuned copies of a random model (a 2-D key of 1-4 x 1-4, a 1-D key of length 1-6,
    sometimes an empty key, sometimes values on a coarse grid so that ties happen)."""
    pretrained, finetuned = ref.random_model(
        draw(st.integers(1, 3)),
        seed=draw(st.integers(0, 2**31 - 1)),
        shape2d=(draw(st.integers(1, 4)), draw(st.integers(1, 4))),
        length1d=draw(st.integers(1, 6)),
        zero_size=draw(st.booleans()),
        grid=draw(st.booleans()),
    )
    return task_vectors(pretrained, finetuned)


AXES: dict[str, dict[str, list[object]]] = {
    "ties": {"density": [0.1, 0.3, 0.5, 1.0]},
    "dare": {"p": [0.0, 0.3, 0.6], "seed": [0, 1]},
    "breadcrumbs": {"beta": [0.2, 0.5, 0.9], "gamma": [0.0, 0.1]},
    "pcb": {"ratio": [0.05, 0.3, 0.8], "summed_inter": [False, True]},
}
"""Values each method's axes may take in the tests (methods without hyper-parameters sweep lam only)."""


@st.composite
def grids(draw, method: str):
    """A grid over some of `method`'s axes (each 1 to 3 values, possibly repeated)."""
    axes = AXES.get(method, {})
    chosen = draw(st.lists(st.sampled_from(sorted(axes)), unique=True, max_size=len(axes))) if axes else []
    return {name: draw(st.lists(st.sampled_from(axes[name]), min_size=1, max_size=3)) for name in chosen}


def counting_finalize_at(run, calls: list[float]):
    """`run` (a method's run) whose `finalize_at(key, taus, lam)` also appends each lam to `calls`."""
    finalize_at = run.finalize_at

    def counted(key, taus, lam):
        calls.append(lam)
        return finalize_at(key, taus, lam)

    run.finalize_at = counted
    return run
