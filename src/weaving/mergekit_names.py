"""mergekit's method and parameter names, and what they are called (or mean) in weaving.

mergekit (Goddard et al., 2024; ``mergekit/merge_methods/registry.py`` and
``generalized_task_arithmetic.py``) names its methods and their per-model parameters
differently, and some of the same names mean something else. ``method_hint`` and
``hparam_hint`` give the sentence for an error when a mergekit name is used in weaving, so
that nothing with another meaning passes silently. ``docs/cli.md`` ("Coming from mergekit")
has the full table.
"""

from __future__ import annotations

WEIGHTS = "per-model weights are --weights W1 W2 ... (one per fine-tuned model; methods task_arithmetic, dare, breadcrumbs)"

METHODS: dict[str, str] = {
    "linear": "mergekit's linear (a weighted average of the models) is weaving's task_arithmetic with --lam 1/T "
              "for T equal weights, or --weights for others",
    "dare_linear": "mergekit's dare_linear is weaving's dare; its density d (the keep rate) is weaving's p = 1 - d "
                   "(the drop rate)",
    "dare_ties": "weaving has no DARE with TIES' sign election (mergekit's dare_ties); use dare (drop and rescale) "
                 "or ties",
    "breadcrumbs_ties": "weaving has no Breadcrumbs with TIES' sign election (mergekit's breadcrumbs_ties); "
                        "use breadcrumbs or ties",
    "della": "weaving has no DELLA", "della_linear": "weaving has no DELLA",
    "slerp": "weaving has no SLERP (it merges task vectors of one pretrained model)", "nuslerp": "weaving has no SLERP",
    "multislerp": "weaving has no SLERP", "karcher": "weaving has no Karcher mean",
    "model_stock": "weaving has no Model Stock", "sce": "weaving has no SCE", "passthrough": "weaving has no passthrough",
    "arcee_fusion": "weaving has no Arcee Fusion", "nearswap": "weaving has no NearSwap",
}

_COMMON: dict[str, str] = {
    "weight": WEIGHTS,
    "normalize": "weaving does not divide by the sum of the weights (mergekit's normalize); scale with --lam "
                 "(and --weights)",
    "lambda": "mergekit's lambda (the scale of the merged task vector) is weaving's --lam",
    "rescale": "weaving's DARE always rescales the kept entries by 1 / (1 - p); other methods do not rescale",
    "int8_mask": "weaving's masks need no int8_mask option",
}

HPARAMS: dict[str, dict[str, str]] = {
    "dare": {
        "density": "weaving's DARE takes p, the drop rate; mergekit's density d (the keep rate) corresponds to "
                   "p = 1 - d",
    },
    "breadcrumbs": {
        "density": "weaving's Breadcrumbs takes beta, the fraction of each row kept (mergekit's density, which "
                   "counts over the whole tensor, not per row); gamma is the fraction of each row dropped as "
                   "outliers in both",
    },
    "ties": {
        "k": "weaving's TIES takes density, the fraction kept, over the whole model (mergekit's density is per "
             "tensor)",
    },
    "pcb": {
        "density": "weaving's PCB takes ratio, the fraction of top balance scores kept",
    },
}


def method_hint(name: str) -> str | None:
    """The sentence for a method name that weaving lacks but mergekit has, else None."""
    return METHODS.get(name)


def hparam_hint(method: str, name: str) -> str | None:
    """The sentence for hyper-parameter ``name`` of ``method`` if it is a mergekit name, else None."""
    return HPARAMS.get(method, {}).get(name) or _COMMON.get(name)
