"""The CLIP side: open_clip models (embedded tiny CLIP and paper models), contrastive
pretraining, zero-shot heads, image-encoder fine-tuning and evaluation.

Names are imported on first use (PEP 562): `weaving.clip.recipes` loads without torch.
"""

from __future__ import annotations

from weaving._lazy import lazy_exports

_EXPORTS = {
    "TrainingInterrupted": "weaving.clip._train",
    "correctness": "weaving.clip.evaluate",
    "evaluate": "weaving.clip.evaluate",
    "predict": "weaving.clip.evaluate",
    "finetune": "weaving.clip.finetune",
    "zeroshot_head": "weaving.clip.heads",
    "EMBEDDED_MODELS": "weaving.clip.models",
    "create_model": "weaving.clip.models",
    "image_size_of": "weaving.clip.models",
    "load_pretrained": "weaving.clip.models",
    "load_visual": "weaving.clip.models",
    "mean_std_of": "weaving.clip.models",
    "save_pretrained": "weaving.clip.models",
    "cache_eval_tensors": "weaving.clip.preprocess",
    "split_to_tensor": "weaving.clip.preprocess",
    "uint8_to_tensor": "weaving.clip.preprocess",
    "pretrain": "weaving.clip.pretrain",
    "FinetuneRecipe": "weaving.clip.recipes",
    "PretrainRecipe": "weaving.clip.recipes",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports('weaving.clip', _EXPORTS, globals())
