"""MERGE3 (Mencattini et al., ICML 2025): evolutionary merging with fitness estimated by
Item Response Theory from a few anchor items. See `docs/search.md`.

Modules: `irt` (multidimensional 2PL model, MAP fit, ability and lambda fits),
`estimators` (anchors, mp-IRT, gmp-IRT), `genome` (per-task genes, decoding into merges),
`evolve` (pymoo GA / NSGA-II on grid genes), `evaluation` (per-item correctness of
CLIP-style classifiers), `experiment` (`run_merge3`, the end-to-end core), `cli`
(`weaving search`). No DVC here. Names are imported on first use (PEP 562).
"""

from __future__ import annotations

from weaving._lazy import lazy_exports

_EXPORTS = {
    "ItemParameters": "weaving.search.irt",
    "IRTFit": "weaving.search.irt",
    "item_curve": "weaving.search.irt",
    "fit_irt": "weaving.search.irt",
    "fit_ability": "weaving.search.irt",
    "fit_lambda": "weaving.search.irt",
    "minimum_subjects": "weaving.search.irt",
    "FITNESS_KINDS": "weaving.search.estimators",
    "ItemLayout": "weaving.search.estimators",
    "AnchorEstimator": "weaving.search.estimators",
    "sample_anchors": "weaving.search.estimators",
    "mp_irt": "weaving.search.estimators",
    "gmp_irt": "weaving.search.estimators",
    "SEARCH_METHODS": "weaving.search.genome",
    "GeneGrid": "weaving.search.genome",
    "Genome": "weaving.search.genome",
    "GenomeSpec": "weaving.search.genome",
    "MergeDecoder": "weaving.search.genome",
    "evolve": "weaving.search.evolve",
    "CandidateEvaluator": "weaving.search.evaluation",
    "run_merge3": "weaving.search.experiment",
    "minimum_population_size": "weaving.search.experiment",
}

__all__ = [
    "FITNESS_KINDS",
    "SEARCH_METHODS",
    "AnchorEstimator",
    "CandidateEvaluator",
    "GeneGrid",
    "Genome",
    "GenomeSpec",
    "IRTFit",
    "ItemLayout",
    "ItemParameters",
    "MergeDecoder",
    "evolve",
    "fit_ability",
    "fit_irt",
    "fit_lambda",
    "gmp_irt",
    "item_curve",
    "minimum_population_size",
    "minimum_subjects",
    "mp_irt",
    "run_merge3",
    "sample_anchors",
]

__getattr__, __dir__ = lazy_exports("weaving.search", _EXPORTS, globals())
