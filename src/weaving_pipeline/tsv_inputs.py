"""The inputs the TSV stages (`compress`, `mass`) share: the multi-task suite's heads, test tensors,
fine-tuned accuracies, and the compress stage's files checked against the model's theta_pre."""

from __future__ import annotations

from weaving_pipeline import paths
from weaving_pipeline.params import Params
from weaving_pipeline.stage import load_tensors


def suite_inputs(params: Params, model_name: str) -> tuple[dict, dict, dict]:
    """The multi-task suite's zero-shot heads (`[C, embed_dim]`), cached test tensors and fine-tuned
    accuracies (%, as the fine-tune stages measured them), each by task of params `suite.mtl`."""
    from weaving.io import load_state_dict
    from weaving.metrics import FinetuneMetrics

    tasks = list(params.suite.mtl)
    heads = {t: load_state_dict(paths.heads(model_name, t))["weight"] for t in tasks}
    caches = {t: load_tensors(paths.test_cache(model_name, t)) for t in tasks}
    finetuned = {t: FinetuneMetrics.read(paths.seed_metrics(model_name, params.seed, "finetune", f"{t}.json")).accuracy for t in tasks}
    return heads, caches, finetuned


def load_compressed_suite(params: Params, model_name: str) -> dict:
    """The compress stage's files by task (`models/<model>/compressed/<task>.safetensors`), each checked
    to be made against this model's pretrained image encoder (recorded sha256 against the file's);
    `InputError` naming the file otherwise."""
    from weaving.compress.files import load_compressed
    from weaving.errors import InputError
    from weaving.io import sha256_file

    pretrained_file = paths.pretrained_visual(model_name)
    expected = sha256_file(pretrained_file)
    compressed = {}
    for task in params.suite.mtl:
        path = paths.compressed(model_name, task)
        if not path.is_file():
            raise InputError(f"{path}: missing; run the stage that writes it (dvc repro compress@{model_name})")
        compressed[task] = load_compressed(path)
        recorded = compressed[task].pretrained_sha256
        if recorded != expected:
            raise InputError(f"{path}: made against a pretrained checkpoint with sha256 {recorded}, but "
                             f"{pretrained_file} has sha256 {expected}; rerun dvc repro compress@{model_name}")
    return compressed
