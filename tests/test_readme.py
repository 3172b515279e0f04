"""The README's library example runs as written, on small state dicts, and means what it says."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_the_library_example_runs_and_weaves() -> None:
    blocks = [b for b in python_blocks() if "from weaving import" in b]
    assert blocks, "README has no library example"
    g = torch.Generator().manual_seed(0)
    pretrained = {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g),
                  "steps": torch.tensor(7)}
    namespace = {
        "pretrained_sd": pretrained,
        "finetuned_sd_1": {k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                           for k, v in pretrained.items()},
        "finetuned_sd_2": {k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                           for k, v in pretrained.items()},
    }
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    taus, pooled, woven = namespace["taus"], namespace["P"], namespace["woven_sd"]
    assert set(pooled) == {"w", "b"}
    for key in ("w", "b"):
        expected = namespace["finetuned_sd_1"][key] - pretrained[key]
        assert torch.allclose(taus[0][key], expected)
        assert torch.allclose(woven[key], pretrained[key] + pooled[key])
    assert torch.equal(woven["steps"], pretrained["steps"])
    assert set(namespace["S"]) == set(namespace["Q"]) == {"w", "b"}  # the search-space and method-pooling lines ran
