"""Where the command line writes: one ``.safetensors`` file, or a Hugging Face model folder.

``--out`` (``parse_out``): a name ending in ``/`` or an existing folder is a model folder;
anything else is a file and must end in ``.safetensors`` (weaving writes safetensors only, so
no file is ever named after a format it is not in).

Before any input is read or hashed (``check_output``): the output must not be any file an
input consists of (compared with every resolved file: index files, each shard, adapter
files, through symlinks and hard links), a model folder must not hold an input and, if it
exists and is not empty, must hold an earlier weaving output (which is replaced); the
output's folder must accept a new file (a real probe file, so a read-only folder or file
system is reported under the output's name); and its device must have room for the output.

A model folder (``write_model_folder``) is what ``transformers``' ``save_pretrained`` writes:
``model.safetensors``, or shards ``model-0000i-of-0000n.safetensors`` of at most
``max_shard_bytes`` each with ``model.safetensors.index.json``, plus the config, generation
config and tokenizer files of the pretrained model's folder (``weaving.hf.MODEL_FOLDER_FILES``)
and a ``README.md`` model card recording the merge. It is built in a staging folder beside
the target and renamed into place, so an interrupted run leaves no half-written folder (a
replaced earlier output is removed only after the new one is in place). Files get mode
0666 and folders 0777 less the umask.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from weaving.atomic import normal_file_mode, normal_folder_mode, remove_stale_temporaries
from weaving.errors import InputError, ParamError
from weaving.io import SafetensorsSource, output_errors, write_safetensors

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
HEADER_ALLOWANCE = 1 << 20  # bytes of safetensors header per file, at most, in the space check

TensorSpec = tuple[tuple[int, ...], torch.dtype]


@dataclass(frozen=True)
class OutputTarget:
    """The output: ``path`` and whether it is a model folder (else one safetensors file)."""

    path: Path
    folder: bool
    given: str

    @property
    def parent(self) -> Path:
        return self.path.parent


def parse_out(text: str) -> OutputTarget:
    """``--out``: a folder (trailing ``/`` or existing folder) or a ``.safetensors`` file."""
    if not text:
        raise ParamError("--out: empty path")
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir():
        folder = path.resolve() if path.is_symlink() else path
        if not folder.parent.is_dir():
            raise ParamError(f"--out {text}: folder {folder.parent} does not exist")
        return OutputTarget(folder, True, text)
    if path.suffix != ".safetensors":
        raise ParamError(
            f"--out {text}: a file output must end in .safetensors (weaving writes safetensors only; "
            f"a {path.suffix or 'suffix-less'} name would lie about the format); "
            f"for a Hugging Face model folder end the name with '/', e.g. --out {text}/"
        )
    if not path.parent.is_dir():
        raise ParamError(f"--out {text}: folder {path.parent} does not exist")
    return OutputTarget(path, False, text)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def is_inside(path: Path, folder: Path) -> bool:
    """True when ``path`` (symlinks resolved) is ``folder`` or lies under it."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


def _is_weaving_output(folder: Path) -> bool:
    """An earlier weaving model folder: its index or single file records ``weaving_version``."""
    if (folder / INDEX_NAME).is_file():
        try:
            index = json.loads((folder / INDEX_NAME).read_text(encoding="utf-8"))
            return "weaving_version" in (index.get("metadata") or {})
        except (OSError, ValueError, AttributeError):
            return False
    if (folder / SINGLE_NAME).is_file():
        try:
            return "weaving_version" in SafetensorsSource(folder / SINGLE_NAME).metadata
        except InputError:
            return False
    return False


def check_output(target: OutputTarget, inputs: Mapping[str, Sequence[Path]]) -> None:
    """Refuse an output that is, or would replace, a file of an input (``ParamError``).

    ``inputs``: for each input as typed, the files it consists of.
    """
    identities = {}
    for given, files in inputs.items():
        for file in files:
            identity = _identity(file)
            if identity is not None:
                identities[identity] = (given, file)
    if not target.folder:
        identity = _identity(target.path)
        if identity is not None and identity in identities:
            given, file = identities[identity]
            same = "" if Path(given) == target.path else f", through {file}"
            raise ParamError(
                f"--out {target.given}: is also an input ({given}{same}); choose another output path"
            )
        return
    for given, files in inputs.items():
        for file in files:
            if is_inside(file, target.path):
                raise ParamError(
                    f"--out {target.given}: the output folder holds an input ({given}: {file}); "
                    "choose another output folder"
                )
    if not target.path.is_dir():
        return
    for root, _, names in os.walk(target.path):
        for name in names:
            identity = _identity(Path(root) / name)
            if identity in identities:
                given, file = identities[identity]
                raise ParamError(
                    f"--out {target.given}: {Path(root) / name} in the output folder is a link to an input "
                    f"({given}: {file}); choose another output folder"
                )
    leftovers = sorted(p.name for p in target.path.iterdir())
    if leftovers and not _is_weaving_output(target.path):
        shown = ", ".join(leftovers[:3]) + (" ..." if len(leftovers) > 3 else "")
        raise ParamError(
            f"--out {target.given}: the folder exists and holds files that are not a weaving output ({shown}); "
            "give a new or empty folder (an earlier weaving output folder is replaced)"
        )


def probe_writable(target: OutputTarget) -> None:
    """Create and remove a file where the output will be staged; ``InputError`` naming the output."""
    where = target.parent
    with output_errors(target.path):
        fd, probe = tempfile.mkstemp(prefix=f".{target.path.name}.", suffix=".probe", dir=where)
        try:
            os.close(fd)
        finally:
            os.unlink(probe)


def check_space(target: OutputTarget, nbytes: int, files: int = 1) -> None:
    """``InputError`` naming the output when its device has less room than ``nbytes`` (plus headers)."""
    need = nbytes + files * HEADER_ALLOWANCE
    free = shutil.disk_usage(target.parent).free
    if free < need:
        with output_errors(target.path, need):
            raise OSError(errno.ENOSPC, f"{free} bytes free")


def spec_bytes(spec: TensorSpec) -> int:
    shape, dtype = spec
    return math.prod(shape) * dtype.itemsize


def plan_shards(specs: Mapping[str, TensorSpec], max_shard_bytes: int, option: str = "--max-shard-size") -> list[list[str]]:
    """Keys in order, cut into shards of at most ``max_shard_bytes`` bytes of tensor data.

    A new shard starts when the next tensor would not fit (``transformers``' rule); a tensor
    larger than ``max_shard_bytes`` is refused (``ParamError`` naming it and its size).
    """
    shards: list[list[str]] = [[]]
    used = 0
    for key, spec in specs.items():
        size = spec_bytes(spec)
        if size > max_shard_bytes:
            raise ParamError(
                f"{option} {max_shard_bytes} bytes is below the size of tensor {key!r} ({size} bytes); "
                "a shard holds whole tensors: give a larger size"
            )
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += size
    return shards


def shard_names(count: int) -> list[str]:
    """``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` for ``count`` > 1 shards."""
    if count == 1:
        return [SINGLE_NAME]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_file(target: OutputTarget, specs: Mapping[str, TensorSpec], stream: Iterator[tuple[str, torch.Tensor]],
               metadata: Mapping[str, str], *, progress: bool = False) -> None:
    """One safetensors file, atomically (``weaving.io.write_safetensors``)."""
    write_safetensors(target.path, specs, stream, metadata, progress=progress)


def write_model_folder(
    target: OutputTarget,
    specs: Mapping[str, TensorSpec],
    stream: Iterator[tuple[str, torch.Tensor]],
    metadata: Mapping[str, str],
    *,
    shards: Sequence[Sequence[str]],
    copies: Mapping[str, Path],
    texts: Mapping[str, str],
    progress: bool = False,
) -> None:
    """A Hugging Face model folder (see the module docstring).

    ``shards``: the keys of each shard (``plan_shards``), in ``stream`` order; ``copies``:
    file name -> file to copy in; ``texts``: file name -> text to write (config.json with
    the output dtype, README.md). ``metadata`` goes into every shard and the index.
    """
    names = shard_names(len(shards))
    with output_errors(target.path):
        remove_stale_temporaries(target.path)  # a killed earlier write's staging folder
        staging = Path(tempfile.mkdtemp(prefix=f".{target.path.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(staging, normal_folder_mode())
        weight_map: dict[str, str] = {}
        for name, keys in zip(names, shards):
            shard_specs = {key: specs[key] for key in keys}
            write_safetensors(staging / name, shard_specs, itertools.islice(stream, len(keys)), metadata,
                              progress=progress, description=name)
            weight_map.update({key: name for key in keys})
        if next(stream, None) is not None:
            raise AssertionError("the merged stream holds more keys than the output's header")
        with output_errors(target.path):
            if len(names) > 1:
                index = {
                    "metadata": {"total_size": sum(spec_bytes(s) for s in specs.values()), **metadata},
                    "weight_map": weight_map,
                }
                (staging / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
            for name, source in copies.items():
                shutil.copyfile(source, staging / name)
            for name, text in texts.items():
                (staging / name).write_text(text, encoding="utf-8")
            for file in staging.iterdir():
                os.chmod(file, normal_file_mode())
            _swap_into_place(staging, target.path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` onto ``target``; an existing ``target`` is moved aside, then removed."""
    if not target.exists():
        os.rename(staging, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rmdir(retired)
    os.rename(target, retired)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)
