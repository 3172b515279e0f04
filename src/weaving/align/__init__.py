"""``weaving.align``: alignment and merging of models trained from different initialisations.

C2M3 (Crisostomi et al., "C2M3: Cycle-Consistent Multi-Model Merging", NeurIPS 2024) maps
every model into one shared universe by a permutation per model and group, optimised jointly
by Frank-Wolfe, and averages there; the baselines (naive averaging, Git Re-Basin
pairwise-to-reference and MergeMany) share its interface, and REPAIR renormalises merged conv
nets. Formulas, the spec file format and the command line: ``docs/align.md``.

    from weaving.align import mlp_spec, merge_models
    merged, result = merge_models("c2m3", mlp_spec(5), [sd_a, sd_b, sd_c], seed=0)
"""

from weaving.align.frank_wolfe import (
    FrankWolfeResult,
    frank_wolfe_sync_matching,
    sync_gradient,
    sync_objective,
)
from weaving.align.matching import (
    all_pairs_matching,
    match_to_reference,
    merge_many,
    solve_lap,
    weight_matching,
)
from weaving.align.merge import (
    MERGERS,
    AlignmentResult,
    align,
    merge_models,
    pairwise_maps_for_cycles,
)
from weaving.align.permute import (
    apply_permutation,
    average_state_dicts,
    compose,
    cycle_error,
    identity_permutation,
    invert,
    pairwise_maps_from_frames,
    random_permutation,
    universe_average,
)
from weaving.align.repair import repair, reset_batchnorm_statistics
from weaving.align.spec import (
    BUILTIN_SPECS,
    PermutationSpec,
    builtin_spec,
    check_models,
    load_spec,
    mlp_spec,
    resnet_spec,
    save_spec,
    vgg_spec,
)

__all__ = [
    "BUILTIN_SPECS",
    "MERGERS",
    "AlignmentResult",
    "FrankWolfeResult",
    "PermutationSpec",
    "align",
    "all_pairs_matching",
    "apply_permutation",
    "average_state_dicts",
    "builtin_spec",
    "check_models",
    "compose",
    "cycle_error",
    "frank_wolfe_sync_matching",
    "identity_permutation",
    "invert",
    "load_spec",
    "match_to_reference",
    "merge_many",
    "merge_models",
    "mlp_spec",
    "pairwise_maps_for_cycles",
    "pairwise_maps_from_frames",
    "random_permutation",
    "repair",
    "reset_batchnorm_statistics",
    "resnet_spec",
    "save_spec",
    "solve_lap",
    "sync_gradient",
    "sync_objective",
    "universe_average",
    "vgg_spec",
    "weight_matching",
]
