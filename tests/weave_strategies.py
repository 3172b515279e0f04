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
