"""open_clip model creation, the embedded tiny architecture(s), and the local-dir checkpoint format.

A saved model is a folder that `open_clip.create_model("local-dir:<dir>")` reloads:
`open_clip_config.json` (`{"model_cfg", "preprocess_cfg"}`) + `open_clip_model.safetensors`
(the full state dict), plus `visual.safetensors` (`model.visual.state_dict()`), the image
encoder that fine-tuning and merging work on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import open_clip
import torch
from open_clip.model import get_model_preprocess_cfg
from safetensors.torch import load_file

from weaving.atomic import save_safetensors, write_json
from weaving.errors import InputError, ParamError

CONFIG_DIR = Path(__file__).parent / "configs"
EMBEDDED_MODELS: tuple[str, ...] = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
VISUAL_FILE = "visual.safetensors"

_registered = False


def register_embedded_configs() -> None:
    """Add the shipped JSON configs (`weaving/clip/configs/*.json`) to open_clip's registry, once."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def create_model(
    model_name: str, pretrained: str | None = None, seed: int = 0, device: str | torch.device = "cpu"
) -> open_clip.CLIP:
    """Build an open_clip CLIP by architecture name; random init from `seed` unless `pretrained`.

    `pretrained` is an open_clip tag (e.g. "openai", needs the hub or its cache) or a
    checkpoint file. The global torch RNG is left as it was. Returns the model in eval mode.
    """
    register_embedded_configs()
    available = open_clip.list_models()
    if model_name not in available:
        raise ParamError(
            f"unknown model {model_name!r}: embedded configs are {list(EMBEDDED_MODELS)} "
            f"(from {CONFIG_DIR}); open_clip also knows {len(available)} names, e.g. ViT-B-32, ViT-B-16, ViT-L-14"
        )
    if pretrained is not None:
        _check_pretrained_source(model_name, pretrained)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = open_clip.create_model(model_name, pretrained=pretrained, device=device)
        except Exception as err:
            if pretrained is None:
                raise
            offline = os.environ.get("HF_HUB_OFFLINE", "")
            raise InputError(
                f"could not load pretrained weights {pretrained!r} for {model_name!r} "
                f"(HF_HUB_OFFLINE={offline!r}; the weights must be downloadable or already in the "
                f"Hugging Face cache): {err}"
            ) from err
    return model.eval()


def _check_pretrained_source(model_name: str, pretrained: str) -> None:
    if model_name in EMBEDDED_MODELS:
        raise ParamError(
            f"no published weights exist for the embedded model {model_name!r}; create it with "
            f"pretrained=None and pretrain it (weaving.clip.pretrain), or load a saved folder with load_pretrained"
        )
    if os.path.isfile(pretrained):
        return
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        raise ParamError(f"unknown pretrained tag {pretrained!r} for {model_name!r}: valid tags are {tags}")


def model_config(model_name: str) -> dict:
    """The open_clip architecture config (`embed_dim`, `vision_cfg`, `text_cfg`, ...) of a name or local-dir."""
    register_embedded_configs()
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ParamError(f"no open_clip config for {model_name!r}")
    return cfg


def image_size_of(model: torch.nn.Module) -> int:
    """Side length in pixels of the (square) input images of `model.visual`."""
    size = model.visual.image_size
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise ParamError(f"non-square image size {tuple(size)} is not supported")
        size = size[0]
    return int(size)


def mean_std_of(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel normalisation (mean, std) the model was built with."""
    cfg = get_model_preprocess_cfg(model)
    return tuple(cfg["mean"]), tuple(cfg["std"])


def save_pretrained(model: torch.nn.Module, model_name: str, out_dir: str | os.PathLike) -> None:
    """Save `model` (architecture `model_name`) as an open_clip local-dir plus `visual.safetensors`."""
    cfg = model_config(model_name)
    embed_dim = model.visual.output_dim
    if cfg["embed_dim"] != embed_dim or image_size_of(model) != _config_image_size(cfg):
        raise ParamError(
            f"model does not match config {model_name!r}: embed_dim {embed_dim} vs {cfg['embed_dim']}, "
            f"image size {image_size_of(model)} vs {_config_image_size(cfg)}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metadata = {"model_name": model_name}
    save_safetensors(out / WEIGHTS_FILE, model.state_dict(), metadata)
    save_safetensors(out / VISUAL_FILE, model.visual.state_dict(), metadata)
    preprocess = {k: (list(v) if isinstance(v, tuple) else v) for k, v in get_model_preprocess_cfg(model).items()}
    write_json(out / CONFIG_FILE, {"model_cfg": cfg, "preprocess_cfg": preprocess, "model_name": model_name})


def _config_image_size(cfg: dict) -> int:
    size = cfg["vision_cfg"].get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def load_pretrained(model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> open_clip.CLIP:
    """Load a folder written by `save_pretrained` (or any open_clip local-dir); eval mode."""
    model_dir = Path(model_dir)
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (model_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{model_dir} is not a saved CLIP model: missing {missing}")
    register_embedded_configs()
    return open_clip.create_model(f"local-dir:{model_dir}", device=device).eval()


def load_visual(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an image-encoder state dict (`visual.safetensors`, fine-tuned or merged) onto the CPU."""
    return load_file(str(path), device="cpu")


def saved_model_name(model_dir: str | os.PathLike) -> str | None:
    """The architecture name recorded by `save_pretrained`, if any."""
    with open(Path(model_dir) / CONFIG_FILE, encoding="utf-8") as f:
        return json.load(f).get("model_name")
