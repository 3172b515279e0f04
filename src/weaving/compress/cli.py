"""``weaving compress``: TSV-C of fine-tuned checkpoints, one compressed file per task.

    weaving compress --pretrained P --finetuned A B C [--rank-fraction F] --out DIR

Reads key by key (one key of every checkpoint at a time), keeps the compressed factors in
memory (their size is the output's), writes ``DIR/<name>.safetensors`` per task (``name``
from the fine-tuned file or folder name, or ``--names``) and prints a storage summary.
Every file is written under a temporary name and renamed only when all are written; on
any error none is left behind (nor ``DIR``, if this command created it). ``--rank-fraction``
defaults to ``1/T``. The files are valid ``--finetuned`` inputs of ``weaving merge`` and
``weaving weave`` (with the same ``--pretrained``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from weaving.compress.files import save_compressed
from weaving.compress.tsvc import (
    CompressedTaskVector,
    Factors,
    check_rank_fraction,
    compress_tensor,
    default_rank_fraction,
    storage_summary,
)
from weaving.errors import InputError, ParamError
from weaving.io import open_source, sha256_file

__all__ = ["add_subcommand", "output_names", "run_compress"]


def add_subcommand(commands: argparse._SubParsersAction) -> None:
    """Add ``weaving compress`` to the ``weaving`` command line."""
    parser = commands.add_parser("compress", help="TSV-C: keep each task vector's top singular triplets per layer")
    parser.add_argument("--pretrained", required=True, metavar="PATH",
                        help="pretrained checkpoint: .safetensors, .pt/.bin, *.index.json or a folder")
    parser.add_argument("--finetuned", required=True, nargs="+", metavar="PATH",
                        help="fine-tuned checkpoints of the same architecture (one per task)")
    parser.add_argument("--rank-fraction", type=float, default=None, metavar="F",
                        help="fraction f in (0, 1] of each 2-D layer's rank to keep, k = max(1, int(min(m, n) * f)) "
                             "(default 1/T)")
    parser.add_argument("--names", nargs="+", metavar="NAME",
                        help="task names, one per --finetuned (default: the file or folder names)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_compress)


def _default_name(path: str) -> str:
    given = Path(path)
    name = given.name
    for suffix in (".index.json", ".safetensors", ".pt", ".pth", ".bin", ".ckpt"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def output_names(finetuned: list[str], names: list[str] | None) -> list[str]:
    """Task names (``--names``, else file names without their suffix), distinct and usable as file names."""
    chosen = list(names) if names is not None else [_default_name(p) for p in finetuned]
    if len(chosen) != len(finetuned):
        raise ParamError(f"--names gives {len(chosen)} names for {len(finetuned)} --finetuned checkpoints")
    for name in chosen:
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise ParamError(f"task name {name!r} cannot be a file name; give --names")
    seen: dict[str, int] = {}
    for i, name in enumerate(chosen):
        if name in seen:
            raise ParamError(
                f"--finetuned {finetuned[seen[name]]} and {finetuned[i]} both give the task name {name!r}; "
                "give distinct --names"
            )
        seen[name] = i
    return chosen


def _check_layout(pretrained, finetuned) -> list[str]:
    """The pretrained's floating keys; every fine-tuned source has the pretrained's keys, shapes, dtypes."""
    keys = pretrained.keys()
    specs = {key: pretrained.spec(key) for key in keys}
    if not specs:
        raise InputError(f"{pretrained.name}: holds no tensors")
    for source in finetuned:
        keys = set(source.keys())
        if keys != set(specs):
            missing, extra = sorted(set(specs) - keys), sorted(keys - set(specs))
            raise InputError(f"{source.name}: key set differs from {pretrained.name}: missing {missing[:5]}, "
                             f"extra {extra[:5]}")
        for key in sorted(keys):
            shape, dtype = source.spec(key)
            if tuple(shape) != tuple(specs[key][0]) or dtype != specs[key][1]:
                raise InputError(f"{source.name}: key {key!r} is {tuple(shape)} {dtype}, {pretrained.name} has "
                                 f"{tuple(specs[key][0])} {specs[key][1]}")
    floating = sorted(key for key, (_, dtype) in specs.items() if dtype.is_floating_point)
    if not floating:
        raise InputError(f"{pretrained.name}: holds no floating-point tensors to compress")
    return floating


def _finite(tensor: torch.Tensor, source_name: str, key: str) -> torch.Tensor:
    if tensor.numel() and not bool(torch.isfinite(tensor).all()):
        raise InputError(f"{source_name}: key {key!r} contains NaN or inf")
    return tensor


def _human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} GiB"


def format_summary(compressed: list[CompressedTaskVector], paths: list[Path]) -> str:
    """The storage summary ``weaving compress`` prints."""
    summary = storage_summary(compressed)
    lines = [f"TSV-C, rank fraction {compressed[0].rank_fraction:g}, {len(compressed)} task(s):"]
    width = max(len(c.name) for c in compressed)
    for item, path in zip(compressed, paths):
        lines.append(f"  {item.name:<{width}}  {item.stored_numbers():>12,} numbers  {_human_bytes(item.stored_bytes()):>10}"
                     f"  {100 * item.stored_numbers() / item.dense_numbers():6.2f}% of its task vector  -> {path}")
    lines.append(f"  total: {summary['stored_numbers']:,} numbers ({_human_bytes(summary['stored_bytes'])}) = "
                 f"{summary['ratio_to_one_model']:.3f} x one model ({summary['one_model_numbers']:,} numbers), "
                 f"{100 * summary['ratio_to_all_models']:.2f}% of {len(compressed)} models")
    return "\n".join(lines)


def run_compress(args: argparse.Namespace) -> None:
    """Validate, open, compress key by key, hash, write all files, print the summary."""
    if args.rank_fraction is not None:
        fraction = check_rank_fraction(args.rank_fraction, "--rank-fraction")
    else:
        fraction = default_rank_fraction(len(args.finetuned))
    names = output_names(list(args.finetuned), args.names)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ParamError(f"--out {out_dir}: is a file; give a folder")
    targets = [out_dir / f"{name}.safetensors" for name in names]
    for target in targets:
        for given in [args.pretrained, *args.finetuned]:
            if target.exists() and Path(given).exists() and os.path.samefile(given, target):
                raise ParamError(f"--out {out_dir}: would overwrite the input {given}; choose another folder")
    progress = not args.quiet

    pretrained = open_source(args.pretrained)
    finetuned = [open_source(path, pretrained=pretrained) for path in args.finetuned]
    floating = _check_layout(pretrained, finetuned)

    factors: list[dict[str, Factors]] = [{} for _ in finetuned]
    dense: list[dict[str, torch.Tensor]] = [{} for _ in finetuned]
    for key in tqdm(floating, desc=f"TSV-C (f={fraction:g})", unit="key", disable=not progress, file=sys.stderr,
                    dynamic_ncols=True):
        base = _finite(pretrained.load(key), pretrained.name, key)
        work = torch.float64 if base.dtype == torch.float64 else torch.float32
        for t, source in enumerate(finetuned):
            tau = (_finite(source.load(key), source.name, key).to(work) - base.to(work)).to(base.dtype)
            kept = compress_tensor(key, tau, fraction)
            if isinstance(kept, Factors):
                factors[t][key] = kept
            else:
                dense[t][key] = kept
    for source in (pretrained, *finetuned):
        getattr(source, "release", lambda: None)()

    pretrained_sha = sha256_file(args.pretrained, progress=progress)
    source_shas = [sha256_file(path, progress=progress) for path in args.finetuned]
    compressed = [
        CompressedTaskVector(factors[t], dense[t], fraction, names[t], pretrained_sha, source_shas[t],
                             {"tasks": ",".join(names), "task_index": str(t)})
        for t in range(len(names))
    ]
    _write_all(out_dir, targets, compressed, str(args.pretrained), [str(p) for p in args.finetuned])
    print(format_summary(compressed, targets))


def _write_all(out_dir: Path, targets: list[Path], compressed: list[CompressedTaskVector], pretrained_path: str,
               source_paths: list[str]) -> None:
    created = not out_dir.exists()
    if created:
        try:
            out_dir.mkdir(parents=True)
        except OSError as error:
            raise InputError(f"--out {out_dir}: cannot create the folder: {error.strerror or error}") from error
    partials = [target.with_name(f".{target.name}.partial") for target in targets]
    try:
        for item, partial, source_path in zip(compressed, partials, source_paths):
            save_compressed(partial, item, pretrained_path=pretrained_path, source_path=source_path)
        for partial, target in zip(partials, targets):
            os.replace(partial, target)
    except BaseException:
        for partial in partials:
            partial.unlink(missing_ok=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
