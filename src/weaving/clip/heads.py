"""Zero-shot classification heads from the text tower."""

from __future__ import annotations

import open_clip
import torch

from weaving.errors import InputError


def captions_for(classnames: list[str], templates: list[str]) -> list[str]:
    """All `template.format(classname)`, class-major: captions[c * T + t]."""
    if not classnames:
        raise InputError("classnames is empty")
    if not templates:
        raise InputError("templates is empty")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise InputError(f"templates must contain '{{}}' where the class name goes; these do not: {bad}")
    return [t.format(c) for c in classnames for t in templates]


def tokenize_for(model: torch.nn.Module, texts: list[str]) -> torch.Tensor:
    """Token ids `[N, context_length]` with open_clip's bundled BPE tokenizer (truncating)."""
    return open_clip.tokenize(texts, context_length=model.context_length)


@torch.no_grad()
def zeroshot_head(
    model: torch.nn.Module,
    classnames: list[str],
    templates: list[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """Head `[C, embed_dim]` float32 on CPU: row c = normalize(mean_t normalize(encode_text(template_t(c))))."""
    captions = captions_for(classnames, templates)
    tokens = tokenize_for(model, captions)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        embeddings = torch.cat(
            [
                model.encode_text(chunk.to(device), normalize=True).float().cpu()
                for chunk in tokens.split(batch_size)
            ]
        )
    finally:
        model.train(was_training)
    per_class = embeddings.view(len(classnames), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(per_class, dim=-1).contiguous()
