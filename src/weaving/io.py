"""Checkpoint I/O: lazy state-dict sources, a streaming atomic safetensors writer, sha256.

Sources implement ``weaving.sources.StateDictSource``: ``name``, ``keys()``, ``spec(key)``
(shape and dtype without reading tensor data) and ``load(key)``. The format of a file is
read from its first bytes (``detect_format``), never from its name: a safetensors file named
``.pt`` reads as safetensors, and a text file named ``.bin`` is reported as text. Formats:

- safetensors (``.safetensors``): header read once; every ``load`` opens the file with
  ``safetensors.safe_open`` and closes it again, so pages of the memory map never pile up in
  the process's resident set;
- PyTorch state-dict files (``.pt``, ``.pth``, ``.bin``, ``.ckpt``): a flat mapping
  ``str -> Tensor`` loaded with ``torch.load(weights_only=True, mmap=True)``; the mapping is
  dropped and reopened after ``mapped_budget_bytes`` have been read from it (legacy non-zip
  files cannot be memory-mapped and are held whole);
- sharded checkpoints as Hugging Face writes them: ``*.index.json`` with a ``weight_map``
  (key -> shard file beside the index), read as one state dict, one shard open at a time.

Every error about an input is an ``InputError`` whose message starts with the file's path,
and no message ever advises loading with ``weights_only=False`` (which runs arbitrary code).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import struct
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from weaving.atomic import normal_file_mode, remove_stale_temporaries
from weaving.errors import InputError
from weaving.hashcache import HashCache

__all__ = [
    "TORCH_SUFFIXES",
    "SafetensorsSource",
    "ShardedSource",
    "TorchFileSource",
    "checkpoint_files",
    "detect_format",
    "load_state_dict",
    "open_source",
    "read_metadata",
    "resolve_checkpoint",
    "save_state_dict",
    "sha256_file",
    "sha256_files",
    "source_sizes",
    "write_safetensors",
]

TensorSpec = tuple[tuple[int, ...], torch.dtype]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
CHUNK_BYTES = 1 << 20
DEFAULT_MAPPED_BUDGET_BYTES = 64 << 20

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
SAFETENSORS_DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_DTYPES.items()}

# Preference order when a directory is given, as Hugging Face's loaders choose.
CHECKPOINT_FILENAMES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


def _require_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: not readable (permission denied)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _unknown_key(source_name: str, key: str) -> InputError:
    return InputError(f"{source_name}: no tensor named {key!r}")


class SafetensorsSource:
    """A ``.safetensors`` file read one tensor at a time."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = str(path)
        _require_file(self.path)
        try:
            with safe_open(self.path, framework="pt") as handle:
                metadata = handle.metadata() or {}
                raw_specs = {
                    key: (handle.get_slice(key).get_shape(), handle.get_slice(key).get_dtype())
                    for key in handle.keys()
                }
        except Exception as error:  # safetensors raises its own SafetensorError (not exported stably)
            raise InputError(
                f"{self.name}: not a readable safetensors file "
                f"(truncated or corrupt?): {_first_line(error)}"
            ) from error
        self._specs: dict[str, TensorSpec] = {}
        for key, (shape, dtype_name) in raw_specs.items():
            if dtype_name not in SAFETENSORS_DTYPES:
                raise InputError(
                    f"{self.name}: tensor {key!r} has unsupported dtype {dtype_name}; "
                    f"supported: {', '.join(SAFETENSORS_DTYPES)}"
                )
            self._specs[key] = (tuple(int(d) for d in shape), SAFETENSORS_DTYPES[dtype_name])
        self.metadata: dict[str, str] = dict(metadata)

    def keys(self) -> list[str]:
        return sorted(self._specs)

    def spec(self, key: str) -> TensorSpec:
        if key not in self._specs:
            raise _unknown_key(self.name, key)
        return self._specs[key]

    def load(self, key: str) -> torch.Tensor:
        if key not in self._specs:
            raise _unknown_key(self.name, key)
        try:
            with safe_open(self.path, framework="pt") as handle:
                return handle.get_tensor(key)
        except Exception as error:
            raise InputError(f"{self.name}: cannot read tensor {key!r}: {_first_line(error)}") from error

    def release(self) -> None:
        """Nothing is held open between loads."""


def _torch_load_reason(error: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, without PyTorch's advice to disable it."""
    text = str(error)
    if "Weights only load failed" in text:
        found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        detail = found.group(1).strip() if found else ""
        detail = re.split(r"\s+was not an allowed global|\. Please use", detail)[0].strip()
        return (
            "it holds Python objects other than tensors, which weaving never unpickles"
            + (f" ({detail})" if detail else "")
            + "; save a flat dict of tensors, or convert the file to safetensors where it was made"
        )
    return _first_line(error)


def _torch_load_flat(path: Path, *, mmap: bool) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        raise InputError(
            f"{path}: not a readable PyTorch state-dict file (truncated, corrupt, or holding "
            f"objects other than tensors): {_torch_load_reason(error)}"
        ) from error
    if not isinstance(obj, Mapping):
        raise InputError(f"{path}: holds a {type(obj).__name__}, not a state dict (a mapping str -> Tensor)")
    bad = [key for key, value in obj.items() if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
    if bad:
        shown = ", ".join(repr(key) for key in bad[:5])
        raise InputError(
            f"{path}: not a flat state dict (str -> Tensor); entries that are not tensors: {shown}"
            + (" ..." if len(bad) > 5 else "")
            + ("; a training checkpoint? save its 'state_dict' on its own" if "state_dict" in obj else "")
        )
    return dict(obj)


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


SNIFF_BYTES = 512


def _text_sentence(head: bytes) -> str | None:
    """A sentence describing ``head`` if it is the start of a text file, else None."""
    if not head or b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 3:  # only a multi-byte character cut at the end is allowed
            return None
        text = head[: error.start].decode("utf-8")
    if any(not (ch.isprintable() or ch in "\t\r\n") for ch in text):
        return None
    first = text.strip().splitlines()[0][:60] if text.strip() else ""
    if text.startswith("version https://git-lfs"):
        return "it is a Git LFS pointer, not the file itself; fetch the file with 'git lfs pull'"
    lowered = text.lstrip().lower()
    if lowered.startswith(("<!doctype html", "<html")):
        return "it is an HTML page (a failed download?), not a checkpoint"
    return f"it is a text file (it starts with {first!r}), not safetensors or PyTorch data"


def detect_format(path: str | os.PathLike[str]) -> str | None:
    """The checkpoint format of a file from its first bytes: ``"safetensors"`` (an 8-byte
    little-endian header length, then ``{``), ``"torch-zip"`` (a zip archive, as
    ``torch.save`` writes), ``"torch-pickle"`` (a pickle, protocol 2 or later: the legacy
    ``torch.save`` format), or None when the bytes match none of them (empty, truncated,
    garbage). A text file raises ``InputError`` with a sentence saying what it is."""
    path = Path(path)
    _require_file(path)
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "torch-pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    sentence = _text_sentence(head)
    if sentence is not None:
        raise InputError(f"{path}: unrecognised checkpoint format: {sentence}")
    return None


class TorchFileSource:
    """A PyTorch state-dict file (``torch.save`` of a flat ``dict[str, Tensor]``)."""

    def __init__(
        self, path: str | os.PathLike[str], *, mapped_budget_bytes: int = DEFAULT_MAPPED_BUDGET_BYTES
    ) -> None:
        self.path = Path(path)
        self.name = str(path)
        _require_file(self.path)
        self._mmap = _is_zip(self.path)
        state = _torch_load_flat(self.path, mmap=self._mmap)
        self._specs: dict[str, TensorSpec] = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
        self._budget = mapped_budget_bytes
        self._mapped: dict[str, torch.Tensor] | None = None if self._mmap else state
        self._bytes_since_open = 0

    def keys(self) -> list[str]:
        return sorted(self._specs)

    def spec(self, key: str) -> TensorSpec:
        if key not in self._specs:
            raise _unknown_key(self.name, key)
        return self._specs[key]

    def load(self, key: str) -> torch.Tensor:
        if key not in self._specs:
            raise _unknown_key(self.name, key)
        if not self._mmap:
            assert self._mapped is not None
            return self._mapped[key]
        if self._mapped is None:
            self._mapped = _torch_load_flat(self.path, mmap=True)
            self._bytes_since_open = 0
        try:
            tensor = self._mapped[key].clone()  # a copy, so the memory map can be dropped
        except Exception as error:
            raise InputError(f"{self.name}: cannot read tensor {key!r}: {_first_line(error)}") from error
        self._bytes_since_open += tensor.nbytes
        if self._bytes_since_open >= self._budget:
            self.release()
        return tensor

    def release(self) -> None:
        """Drop the memory map (its touched pages count as resident memory) until the next load."""
        if self._mmap:
            self._mapped = None


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateJsonKey(key)
        seen[key] = value
    return seen


class _DuplicateJsonKey(ValueError):
    pass


def _open_single_file(path: Path) -> SafetensorsSource | TorchFileSource:
    """The reader the file's content calls for (``detect_format``); when the content matches
    no format (empty, truncated, garbage), the reader its suffix names reports what is wrong."""
    found = detect_format(path)
    if found == "safetensors":
        return SafetensorsSource(path)
    if found in ("torch-zip", "torch-pickle"):
        return TorchFileSource(path)
    if path.suffix == ".safetensors":
        return SafetensorsSource(path)
    if path.suffix in TORCH_SUFFIXES:
        return TorchFileSource(path)
    raise InputError(
        f"{path}: unrecognised checkpoint format; expected safetensors or a PyTorch state-dict file "
        f"({', '.join(TORCH_SUFFIXES)}), a *.index.json or a folder holding one of {', '.join(CHECKPOINT_FILENAMES)}"
    )


def _read_weight_map(index_path: Path) -> dict[str, str]:
    """The ``weight_map`` (tensor name -> shard file name) of a Hugging Face index JSON."""
    _require_file(index_path)
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"), object_pairs_hook=_reject_duplicate_keys)
    except _DuplicateJsonKey as error:
        raise InputError(f"{index_path}: key {error.args[0]!r} appears twice in the index") from error
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{index_path}: not a valid JSON index: {_first_line(error)}") from error
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise InputError(f"{index_path}: no 'weight_map' object (tensor name -> shard file) in the index")
    if not weight_map:
        raise InputError(f"{index_path}: the index's 'weight_map' is empty")
    return dict(weight_map)


class ShardedSource:
    """A sharded checkpoint: an index JSON whose ``weight_map`` sends each key to a shard file.

    Checked on opening: the index parses, names no key twice, every shard exists and is
    readable, every key is in the shard the index names, and no key is in two shards.
    """

    def __init__(self, index_path: str | os.PathLike[str]) -> None:
        self.path = Path(index_path)
        self.name = str(index_path)
        self._weight_map: dict[str, str] = _read_weight_map(self.path)
        self._shards: dict[str, SafetensorsSource | TorchFileSource] = {}
        where_found: dict[str, str] = {}
        for shard_name in sorted(set(self._weight_map.values())):
            shard_path = self.path.parent / shard_name
            if not shard_path.is_file():
                raise InputError(f"{self.name}: shard {shard_name!r} named in the index is missing ({shard_path})")
            shard = _open_single_file(shard_path)
            shard.release()
            self._shards[shard_name] = shard
            for key in shard.keys():
                if key in where_found:
                    raise InputError(
                        f"{self.name}: tensor {key!r} is in two shards: {where_found[key]!r} and {shard_name!r}"
                    )
                where_found[key] = shard_name
                if key not in self._weight_map:
                    raise InputError(f"{self.name}: shard {shard_name!r} holds {key!r}, which the index does not list")
        for key, shard_name in self._weight_map.items():
            if where_found.get(key) != shard_name:
                raise InputError(f"{self.name}: the index puts {key!r} in shard {shard_name!r}, which lacks it")
        self._current: str | None = None

    @property
    def shard_paths(self) -> list[Path]:
        return [self.path.parent / name for name in sorted(self._shards)]

    def keys(self) -> list[str]:
        return sorted(self._weight_map)

    def spec(self, key: str) -> TensorSpec:
        if key not in self._weight_map:
            raise _unknown_key(self.name, key)
        return self._shards[self._weight_map[key]].spec(key)

    def load(self, key: str) -> torch.Tensor:
        if key not in self._weight_map:
            raise _unknown_key(self.name, key)
        shard_name = self._weight_map[key]
        if self._current is not None and self._current != shard_name:
            self._shards[self._current].release()
        self._current = shard_name
        return self._shards[shard_name].load(key)

    def release(self) -> None:
        for shard in self._shards.values():
            shard.release()
        self._current = None


StateDictFileSource = SafetensorsSource | TorchFileSource | ShardedSource


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The file a checkpoint path stands for: the path itself, or for a folder the first of
    ``CHECKPOINT_FILENAMES`` in it, else its only ``*.index.json`` or only ``*.safetensors``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if not path.is_dir():
        return path
    for filename in CHECKPOINT_FILENAMES:
        if (path / filename).is_file():
            return path / filename
    for pattern in ("*.index.json", "*.safetensors"):
        found = sorted(path.glob(pattern))
        if len(found) == 1:
            return found[0]
    raise InputError(
        f"{path}: folder holds no checkpoint; expected one of {', '.join(CHECKPOINT_FILENAMES)}, "
        "or a single *.index.json or *.safetensors"
    )


def open_source(path: str | os.PathLike[str], *, pretrained: StateDictFileSource | None = None) -> StateDictFileSource:
    """Open a checkpoint lazily, choosing the reader by name, then by content.

    ``path``: a ``.safetensors`` file, a PyTorch state-dict file, an ``*.index.json`` of a
    sharded checkpoint, or a folder holding one of these (see ``resolve_checkpoint``).

    A compressed task vector (a safetensors file tagged ``weaving_format=tsv-compressed``,
    see ``weaving.compress.files``) reads as its reconstructed task vector tau; with
    ``pretrained`` (the source of theta_pre) it reads as the checkpoint ``theta_pre + tau``,
    after its recorded pretrained sha256 is checked against ``pretrained``'s file. Other
    checkpoints ignore ``pretrained``.
    """
    resolved = resolve_checkpoint(path)
    if resolved.name.endswith(".index.json"):
        return ShardedSource(resolved)
    source = _open_single_file(resolved)
    if isinstance(source, SafetensorsSource) and source.metadata.get("weaving_format") == "tsv-compressed":
        from weaving.compress.files import open_compressed  # the compress family builds on this module

        return open_compressed(source, pretrained=pretrained)  # type: ignore[return-value]
    return source


def checkpoint_files(path: str | os.PathLike[str]) -> list[Path]:
    """Every file a checkpoint path stands for, as ``resolve_checkpoint`` finds it: the file
    itself, or an index file followed by the shards it names (sorted, each checked to exist)."""
    resolved = resolve_checkpoint(path)
    _require_file(resolved)
    files = [resolved]
    if resolved.name.endswith(".index.json"):
        for name in sorted(set(_read_weight_map(resolved).values())):
            shard = resolved.parent / name
            if not shard.is_file():
                raise InputError(f"{resolved}: shard {name!r} named in the index is missing ({shard})")
            _require_file(shard)
            files.append(shard)
    return files


def _sha256_of_one_file(path: Path, bar: tqdm | None = None, cache: HashCache | None = None) -> str:
    try:
        stat = os.stat(path)
        if cache is not None and (known := cache.get(path)) is not None:
            if bar is not None:
                bar.update(stat.st_size)
            return known
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror or error}") from error
    if cache is not None:
        cache.put(path, digest.hexdigest(), stat)
    return digest.hexdigest()


def sha256_files(
    files: Sequence[str | os.PathLike[str]], *, progress: bool = False, label: str = "",
    cache: HashCache | None = None,
) -> str:
    """SHA-256 (hex) of one file, or of the ``sha256sum``-style manifest of several.

    One file: the digest of its bytes (what ``sha256sum FILE`` prints). Several: the digest
    of the UTF-8 text of the lines ``"<hex>  <name>\\n"``, one per file in the given order,
    ``name`` being the file's name. ``cache`` (a ``weaving.hashcache.HashCache``) supplies the
    digests of files unchanged since they were last hashed, and records new ones.
    """
    paths = [Path(f) for f in files]
    for file in paths:
        _require_file(file)
    total = sum(file.stat().st_size for file in paths)
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"sha256 {label or paths[0].name}",
              disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        digests = [_sha256_of_one_file(file, bar, cache) for file in paths]
    if len(paths) == 1:
        return digests[0]
    manifest = "".join(f"{digest}  {file.name}\n" for digest, file in zip(digests, paths))
    return hashlib.sha256(manifest.encode("utf-8")).hexdigest()


def sha256_file(path: str | os.PathLike[str], *, progress: bool = False, cache: HashCache | None = None) -> str:
    """SHA-256 (hex) of a checkpoint, read in 1 MiB chunks.

    A plain file: the digest of its bytes (what ``sha256sum FILE`` prints). A sharded
    checkpoint (an ``*.index.json``, or a folder resolving to one): the digest of the manifest
    that ``sha256sum INDEX SHARD...`` would print with the shards in sorted order, i.e. the
    UTF-8 text of the lines ``"<hex>  <name>\\n"`` for the index, then each shard it names
    (see ``sha256_files``; ``cache`` as there).
    """
    return sha256_files(checkpoint_files(path), progress=progress, label=Path(path).name, cache=cache)


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _size_text(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError


@contextmanager
def output_errors(target: str | os.PathLike[str], needed_bytes: int | None = None) -> Iterator[None]:
    """Turn an ``OSError`` of writing the output into an ``InputError`` naming ``target``
    (never the temporary file beside it): a full disk says so with the size needed."""
    try:
        yield
    except OSError as error:
        target = Path(target)
        if error.errno in NO_SPACE_ERRNOS:
            need = f" ({_size_text(needed_bytes)} to write)" if needed_bytes else ""
            raise InputError(
                f"{target}: no space left on the device of {target.parent}{need}; nothing was written"
            ) from error
        raise InputError(f"{target}: cannot write the output in {target.parent}: {error.strerror or error}") from error


def _header_bytes(specs: Mapping[str, TensorSpec], metadata: Mapping[str, str]) -> bytes:
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for key, (shape, dtype) in specs.items():
        nbytes = math.prod(shape) * dtype.itemsize
        header[key] = {
            "dtype": SAFETENSORS_DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # align the data section to 8 bytes, as safetensors does
    return struct.pack("<Q", len(text)) + text


def _validate_writer_inputs(specs: Mapping[str, TensorSpec], metadata: Mapping[str, str]) -> None:
    for key, spec in specs.items():
        if not isinstance(key, str) or key == "__metadata__":
            raise ValueError(f"write_safetensors: invalid tensor name {key!r}")
        shape, dtype = spec
        if dtype not in SAFETENSORS_DTYPE_NAMES:
            raise ValueError(
                f"write_safetensors: tensor {key!r} has dtype {dtype}, which safetensors cannot store; "
                f"supported: {', '.join(str(d) for d in SAFETENSORS_DTYPE_NAMES)}"
            )
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"write_safetensors: tensor {key!r} has invalid shape {shape!r}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"write_safetensors: metadata must map str -> str; got {key!r}: {type(value).__name__}")


def write_safetensors(
    path: str | os.PathLike[str],
    specs: Mapping[str, TensorSpec],
    tensors: Iterable[tuple[str, torch.Tensor]],
    metadata: Mapping[str, str] | None = None,
    *,
    progress: bool = False,
    description: str | None = None,
) -> None:
    """Stream tensors into a safetensors file without holding the whole output in memory.

    ``specs`` (key -> (shape, dtype)) fixes the header, written first; ``tensors`` must then
    yield exactly those keys, in that order, with those shapes and dtypes. The file is written
    beside ``path`` under a temporary name, read back with ``safetensors.safe_open`` and
    renamed onto ``path``; if anything fails (including an exception raised by ``tensors``),
    the temporary file is removed and ``path`` is left as it was.
    """
    metadata = dict(metadata or {})
    specs = {key: (tuple(shape), dtype) for key, (shape, dtype) in specs.items()}
    _validate_writer_inputs(specs, metadata)
    target = Path(path)
    header = _header_bytes(specs, metadata)
    total_bytes = sum(math.prod(shape) * dtype.itemsize for shape, dtype in specs.values())
    if not target.parent.is_dir():
        raise InputError(f"{target}: output folder {target.parent} does not exist")
    with output_errors(target):
        remove_stale_temporaries(target)  # a killed earlier write's leftovers
        fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    temp_path = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle, tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=description or target.name,
            disable=not progress,
            file=sys.stderr,
            dynamic_ncols=True,
        ) as bar:
            with output_errors(target, len(header) + total_bytes):
                handle.write(header)
            expected = iter(specs.items())
            for key, tensor in tensors:
                want = next(expected, None)
                if want is None:
                    raise ValueError(f"write_safetensors: got tensor {key!r} after all {len(specs)} expected ones")
                want_key, (want_shape, want_dtype) = want
                if key != want_key:
                    raise ValueError(f"write_safetensors: expected tensor {want_key!r} next, got {key!r}")
                if tuple(tensor.shape) != want_shape or tensor.dtype != want_dtype:
                    raise ValueError(
                        f"write_safetensors: tensor {key!r} is {tuple(tensor.shape)} {tensor.dtype}, "
                        f"header says {want_shape} {want_dtype}"
                    )
                data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                with output_errors(target, len(header) + total_bytes):
                    handle.write(memoryview(data))
                bar.update(data.nbytes)
                del tensor, data  # written: not kept while the stream computes the next tensor
            missing = next(expected, None)
            if missing is not None:
                raise ValueError(f"write_safetensors: the tensors ended before {missing[0]!r}")
            with output_errors(target, len(header) + total_bytes):
                handle.flush()
                os.fsync(handle.fileno())
        with safe_open(temp_path, framework="pt") as check:
            if len(check.keys()) != len(specs) or (check.metadata() or {}) != metadata:
                raise RuntimeError(f"write_safetensors: {temp_path} does not read back as written")
        with output_errors(target):
            os.chmod(temp_path, normal_file_mode())  # mkstemp makes it private; give it a normal file's mode
            os.replace(temp_path, target)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


def save_state_dict(
    path: str | os.PathLike[str], state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write an in-memory state dict as safetensors (keys sorted), atomically."""
    keys = sorted(state_dict)
    specs = {key: (tuple(state_dict[key].shape), state_dict[key].dtype) for key in keys}
    write_safetensors(path, specs, ((key, state_dict[key]) for key in keys), metadata)


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a whole checkpoint (any format ``open_source`` reads) into memory, keys sorted."""
    source = open_source(path)
    state = {key: source.load(key) for key in source.keys()}
    source.release()
    return state


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (empty if it has none)."""
    return dict(SafetensorsSource(resolve_checkpoint(path)).metadata)


def source_sizes(sources: Sequence[StateDictFileSource]) -> int:
    """Total bytes of tensor data across ``sources`` (from their specs, nothing read)."""
    return sum(math.prod(shape) * dtype.itemsize for s in sources for shape, dtype in map(s.spec, s.keys()))
