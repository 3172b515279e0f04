"""``weaving align``: permute models trained from different initialisations into one frame, optionally merge.

    weaving align --spec mlp|resnet|vgg|SPEC.json --models A B C --out DIR [--merge] [--method c2m3]

Writes ``DIR/<model file stem>.safetensors`` for every model, permuted into the common frame
(C2M3's universe by default), ``DIR/permutations.json`` (per model and group, the index
permutation applied: ``new[i] = old[p[i]]``; method, seed, C2M3's objective trace) and, with
``--merge``, ``DIR/merged.safetensors``, the uniform mean in that frame. Models are read whole
(any format ``weaving.io`` reads) and validated against the spec before any work; outputs are
staged in a temporary folder inside ``DIR`` and moved into place only once all are written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from weaving.align.merge import MERGERS, merge_models
from weaving.align.permute import apply_permutation
from weaving.align.spec import BUILTIN_SPECS, builtin_spec, load_spec
from weaving.atomic import write_json
from weaving.errors import ParamError
from weaving.io import load_state_dict, save_state_dict, sha256_file

__all__ = ["add_subcommand", "run_align"]


def add_subcommand(commands: argparse._SubParsersAction) -> None:
    """Add ``weaving align`` to the project's command line."""
    parser = commands.add_parser(
        "align", help="align models trained from different initialisations (C2M3) and optionally merge them",
        description="Permute every model into one frame (C2M3's universe by default) so that weights can be "
                    "averaged; see docs/align.md.")
    parser.add_argument("--spec", required=True, metavar="mlp|resnet|vgg|FILE",
                        help="permutation spec: a built-in layout (mlp, resnet, vgg) or a spec JSON file")
    parser.add_argument("--models", required=True, nargs="+", metavar="PATH",
                        help="two or more checkpoints of one architecture (.safetensors, .pt/.bin, sharded index)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--merge", action="store_true", help="also write DIR/merged.safetensors, the mean in the frame")
    parser.add_argument("--method", default="c2m3", choices=MERGERS,
                        help="how to align: c2m3 (default), mergemany, pairwise (to the first model) or naive")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--max-iter", type=int, default=200, help="C2M3 Frank-Wolfe iterations at most (default 200)")
    parser.add_argument("--workers", type=int, default=1,
                        help="threads for C2M3's linear assignments (default 1; the result does not depend on it)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_align)


def _check_request(args: argparse.Namespace) -> tuple[Path, dict[str, Path]]:
    if len(args.models) < 2:
        raise ParamError(f"--models: need at least 2 models to align, got {len(args.models)}")
    if args.workers < 1:
        raise ParamError(f"--workers must be >= 1, got {args.workers}")
    if args.max_iter < 0:
        raise ParamError(f"--max-iter must be >= 0, got {args.max_iter}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ParamError(f"--out {out}: exists and is not a folder")
    if not out.parent.is_dir():
        raise ParamError(f"--out {out}: parent folder {out.parent} does not exist")
    targets: dict[str, Path] = {}
    for path in args.models:
        stem = Path(path).name.split(".")[0] or "model"
        if stem in ("merged", "permutations"):
            stem = f"{stem}_model"
        if stem in targets:
            raise ParamError(f"--models: two models would both be written as {out / (stem + '.safetensors')} "
                             f"({targets[stem]} and {path}); give them different file names")
        targets[stem] = Path(path)
    for stem in [*targets, "merged"]:
        target = out / f"{stem}.safetensors"
        for given in args.models:
            if target.exists() and Path(given).exists() and os.path.samefile(given, target):
                raise ParamError(f"--out {out}: would overwrite the input {given}; choose another folder")
    return out, targets


def run_align(args: argparse.Namespace) -> None:
    """Handler of ``weaving align``: validate, read, align, write (module docstring)."""
    out, targets = _check_request(args)
    spec_is_builtin = args.spec in BUILTIN_SPECS
    if not spec_is_builtin and not Path(args.spec).exists():
        raise ParamError(f"--spec {args.spec!r}: neither a built-in layout ({', '.join(BUILTIN_SPECS)}) "
                         f"nor an existing spec file")
    spec = None if spec_is_builtin else load_spec(args.spec)
    state_dicts = [load_state_dict(path) for path in args.models]
    if spec is None:
        spec = builtin_spec(args.spec, state_dicts[0], source=str(args.models[0]))
    merged, result = merge_models(args.method, spec, state_dicts, names=[str(p) for p in args.models],
                                  seed=args.seed, fw_max_iter=args.max_iter, workers=args.workers,
                                  progress=not args.quiet)
    inputs = [{"path": str(p), "sha256": sha256_file(p)} for p in args.models]
    metadata = {"format": "pt", "command": "align", "method": args.method, "seed": str(args.seed),
                "spec": args.spec, "inputs": json.dumps(inputs)}
    out.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".align-", dir=out))
    try:
        written = []
        for (stem, path), state, perm in zip(targets.items(), state_dicts, result.perms):
            save_state_dict(staging / f"{stem}.safetensors", apply_permutation(spec, state, perm),
                            {**metadata, "source": str(path)})
            written.append(f"{stem}.safetensors")
        if args.merge:
            save_state_dict(staging / "merged.safetensors", merged, metadata)
            written.append("merged.safetensors")
        write_json(staging / "permutations.json", {
            "method": args.method, "seed": args.seed, "spec": args.spec, "inputs": inputs,
            "convention": "new[i] = old[p[i]] along every axis the group permutes",
            "permutations": {stem: {g: p.tolist() for g, p in perm.items()}
                             for stem, perm in zip(targets, result.perms)},
            "info": result.info, "seconds": result.seconds,
        })
        written.append("permutations.json")
        for name in written:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not args.quiet:
        print(f"aligned {len(state_dicts)} models with {args.method} into {out}: {', '.join(written)}")
