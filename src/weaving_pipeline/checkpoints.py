"""Loading the pipeline's checkpoints as task vectors (the weave and taskvectors stages)."""

from __future__ import annotations

from pathlib import Path

from weaving_pipeline import paths
from weaving_pipeline.params import Params


def pipeline_task_vectors(params: Params, model_name: str, setup: str,
                          seed: int) -> tuple[dict, dict, dict[str, list[str]]]:
    """theta_pre's image encoder, the setup's task vectors by name, and CL benchmarks' split names.

    As the setup's catalogue entry says: one task vector per multi-task dataset (mtl, dg), or
    one per sequential split (cl), named ``<benchmark>/split_<i>``, each against theta_pre; the
    checkpoints of replicate `seed` (params `seeds`).
    """
    from weaving import task_vectors
    from weaving.catalogue import SETUP_ENTRIES
    from weaving.io import load_state_dict

    pretrained = load_state_dict(paths.pretrained_visual(model_name))
    files: dict[str, Path] = {}
    splits: dict[str, list[str]] = {}
    if SETUP_ENTRIES[setup].task_vectors == "finetuned":
        files = {task: paths.finetuned(model_name, task, seed=seed) for task in params.suite.mtl}
    else:
        for benchmark in params.suite.cl:
            n = params.cl_benchmarks[benchmark].splits
            splits[benchmark] = [f"{benchmark}/split_{i}" for i in range(n)]
            files.update({f"{benchmark}/split_{i}": paths.sequential(model_name, benchmark, i, seed=seed) for i in range(n)})
    names = list(files)
    taus = task_vectors(pretrained, [load_state_dict(files[n]) for n in names])
    return pretrained, dict(zip(names, taus)), splits


FROZEN_PREFIX = "frozen-text-side:"
"""Name prefix of the zero keys that `reference_key_set_padding` adds (never a real key's prefix)."""


def reference_key_set_padding(model_name: str) -> dict[str, tuple[tuple[int, ...], object]]:
    """The keys the authors' `ImageEncoder` holds beyond the image encoder, with shape and dtype.

    Those are the full CLIP's keys outside `visual.*` and the text transformer (`transformer.*`,
    which the reference deletes): `token_embedding.weight`, `positional_embedding`,
    `ln_final.*`, `text_projection`, `logit_scale`. Named with `FROZEN_PREFIX`.
    """
    from weaving.clip.models import WEIGHTS_FILE
    from weaving.io import open_source

    source = open_source(paths.pretrained(model_name) / WEIGHTS_FILE)
    return {FROZEN_PREFIX + key: source.spec(key) for key in source.keys()
            if not key.startswith(("visual.", "transformer.")) and source.spec(key)[1].is_floating_point}
