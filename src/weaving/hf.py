"""Hugging Face conventions: hub ids in the local cache, model-folder files, shard sizes.

- ``resolve_hub_id``: an ``org/name`` (optionally ``org/name@revision``) that is not a local
  path is looked up in the local Hugging Face cache with ``huggingface_hub.snapshot_download``
  and ``local_files_only=True``, unless downloads are allowed;
- ``MODEL_FOLDER_FILES``: the files besides the weights that ``transformers`` reads from a
  model folder (config, generation config, tokenizer), copied into a merged model folder;
- ``parse_size``: ``--max-shard-size`` values as ``transformers`` writes them (``5GB`` is
  5 * 10**9 bytes, ``5GiB`` 5 * 2**30).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from weaving.errors import InputError, ParamError

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<revision>[A-Za-z0-9._/-]+))?$")
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".json")
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja", "*.tiktoken", "README.md"]

MODEL_FOLDER_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
)
"""Files copied from the pretrained model's folder into a merged model folder when present."""

TOKENIZER_FILES = tuple(name for name in MODEL_FOLDER_FILES if name not in ("config.json", "generation_config.json"))


def looks_like_hub_id(text: str) -> bool:
    """``org/name`` or ``org/name@revision``, not starting with ``.`` or ``/``, without a checkpoint suffix."""
    found = HUB_ID.match(text)
    return found is not None and not found["repo"].endswith(CHECKPOINT_SUFFIXES)


def hub_cache_dir() -> Path:
    """``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub`` (read at call time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def resolve_hub_id(text: str, *, allow_download: bool = False) -> Path:
    """The local snapshot folder of hub model ``text`` (``org/name[@revision]``).

    Only the local cache (``hub_cache_dir()``) is read unless ``allow_download``; then the
    weights, JSON and tokenizer files are fetched (``DOWNLOAD_PATTERNS``).
    """
    found = HUB_ID.match(text)
    if found is None:
        raise InputError(f"{text}: no such file or folder")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as error:  # pragma: no cover - huggingface_hub comes with open_clip
        raise InputError(f"{text}: no such file or folder (and huggingface_hub is not installed)") from error
    cache = hub_cache_dir()
    try:
        folder = snapshot_download(
            found["repo"], revision=found["revision"], cache_dir=str(cache), local_files_only=not allow_download,
            allow_patterns=None if not allow_download else DOWNLOAD_PATTERNS,
        )
    except LocalEntryNotFoundError as error:
        raise InputError(
            f"{text}: not a local path, and model {found['repo']!r}"
            + (f" at revision {found['revision']!r}" if found["revision"] else "")
            + f" is not in the Hugging Face cache {cache}; download it first "
            f"(huggingface-cli download {found['repo']}) or pass --allow-download"
        ) from error
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise InputError(f"{text}: cannot get model {found['repo']!r} from the Hugging Face hub: {error}") from error
    return Path(folder)


def read_config(folder: Path | None) -> dict | None:
    """``folder/config.json`` as a dict, or None when there is none."""
    if folder is None or not (folder / "config.json").is_file():
        return None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{folder / 'config.json'}: not readable JSON: {error}") from error
    return config if isinstance(config, dict) else None


def config_vocab_size(config: dict | None) -> int | None:
    """``vocab_size`` of a transformers config (top level, else ``text_config``)."""
    if not config:
        return None
    for where in (config, config.get("text_config") or {}):
        if isinstance(where, dict) and isinstance(where.get("vocab_size"), int):
            return int(where["vocab_size"])
    return None


_SIZE = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str, option: str = "--max-shard-size") -> int:
    """Bytes from ``123``, ``500MB``, ``1.5GB``, ``2GiB`` (decimal KB/MB/GB/TB, binary KiB/MiB/GiB/TiB)."""
    found = _SIZE.match(str(text))
    if found is None:
        raise ParamError(f"{option} {text!r}: expected a size such as 5GB, 500MB or 2GiB")
    size = int(float(found["number"]) * _UNITS[(found["unit"] or "B").upper()])
    if size <= 0:
        raise ParamError(f"{option} {text!r}: must be positive")
    return size
