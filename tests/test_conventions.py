"""The Weight Weaving authors' key-set convention (issue 11): model-wide methods flatten over the
ImageEncoder state dict of `mlfoundations/task_vectors`, frozen text-side leftovers included."""

from __future__ import annotations

import math

import pytest
import torch

from weaving import merge
from weaving.experiment import pad_with_zero_keys


@pytest.mark.slow
def test_vit_b_32_reference_key_set_has_the_authors_d() -> None:
    from weaving.clip import create_model

    model = create_model("ViT-B-32", pretrained=None, seed=0)
    state = model.state_dict()
    visual = sum(v.numel() for k, v in state.items() if k.startswith("visual."))
    frozen = sum(v.numel() for k, v in state.items()
                 if not k.startswith(("visual.", "transformer.")) and v.is_floating_point())
    assert visual == 87_849_216
    assert visual + frozen == 113_448_705
    kept = int((visual + frozen) * 0.2)  # TIES's trim count k = int(D * density), all on nonzero entries
    assert kept / visual == pytest.approx(0.2583, abs=1e-4)


def test_zero_padding_raises_ties_kept_count_as_the_reference_does() -> None:
    g = torch.Generator().manual_seed(0)
    tau = {"w": torch.randn(40, 25, generator=g, dtype=torch.float64)}  # 1000 entries, no zeros
    padded = pad_with_zero_keys({"t": tau}, {"frozen:x": ((300,), torch.float64)})["t"]
    plain = merge("ties", [tau], density=0.2)["w"]
    reference = merge("ties", [padded], density=0.2)
    # docs/merging.md: keep |x| >= the (D - k)-th smallest |x|, k = int(D * density): k + 1 entries
    assert int(plain.ne(0).sum()) == int(1000 * 0.2) + 1
    assert int(reference["w"].ne(0).sum()) == int(1300 * 0.2) + 1  # T = 1: the trimmed row itself
    assert torch.equal(reference["frozen:x"], torch.zeros(300, dtype=torch.float64))
    largest = tau["w"].abs().flatten().sort(descending=True).values
    assert math.isclose(float(reference["w"].abs()[reference["w"] != 0].min()), float(largest[260]))


def test_padding_refuses_a_key_the_task_vectors_already_have() -> None:
    with pytest.raises(ValueError, match="already present"):
        pad_with_zero_keys({"t": {"w": torch.zeros(2)}}, {"w": ((2,), torch.float32)})
