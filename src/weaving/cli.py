"""The ``weaving`` command line: ``weaving merge``, ``weaving weave``, ``weaving methods``.

Both commands stream: one key's tensors are in memory at a time (see ``weaving.engine``),
and the output safetensors file is written as the keys arrive, atomically. The output is
``theta_pre + result`` with metadata recording the request and each input's sha256.

Exit status: 0 on success, 2 for a bad request (usage, unknown method, pooling or
hyper-parameter, value out of range, bad search space), 1 for bad inputs (unreadable,
truncated, mismatched or non-finite checkpoints) or a failed write. Errors are one line
``weaving: error: ...`` on stderr; no output file is left behind.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from weaving import METHODS, POOL_OVER, POOLINGS, parse_search_space
from weaving.engine import stream_merge
from weaving.errors import InputError, ParamError, WeavingError, choices
from weaving.io import open_source, sha256_file, write_safetensors

PROG = "weaving"

FAMILY_COMMANDS: tuple[str, ...] = ("weaving.align.cli",)
"""Modules of the algorithm families that add a subcommand: each exposes
``add_subcommand(commands)``, which adds its parser and sets ``handler=function(args)``."""


class UsageError(Exception):
    """A command-line usage error (argparse's complaints), reported with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def weaving_version() -> str:
    try:
        return version("weaving")
    except PackageNotFoundError:
        return "unknown"


def parse_assignment(text: str) -> tuple[str, bool | int | float | str]:
    """``key=value`` from ``--set``; the value as bool (true/false), int, float, else str."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key or not raw:
        raise ParamError(f"--set expects KEY=VALUE (e.g. density=0.2), got {text!r}")
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    for convert in (int, float):
        try:
            return key, convert(raw)
        except ValueError:
            pass
    return key, raw


def parse_assignments(items: Sequence[str] | None) -> dict[str, bool | int | float | str]:
    given: dict[str, bool | int | float | str] = {}
    for item in items or ():
        key, value = parse_assignment(item)
        if key in given:
            raise ParamError(f"--set {key} given twice")
        given[key] = value
    return given


def _add_merge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrained", required=True, metavar="PATH",
                        help="pretrained checkpoint: .safetensors, .pt/.bin, *.index.json or a folder")
    parser.add_argument("--finetuned", required=True, nargs="+", metavar="PATH",
                        help="fine-tuned checkpoints of the same architecture (one or more)")
    parser.add_argument("--method", required=True, help="merge method (see 'weaving methods')")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", dest="assignments",
                        help="method hyper-parameter, e.g. --set density=0.2 (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--out", required=True, metavar="PATH",
                        help="output .safetensors (overwritten atomically if it exists)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Data-free model merging and Weight Weaving, streamed from disk.")
    parser.add_argument("--version", action="version", version=f"{PROG} {weaving_version()}")
    parser.add_argument("--list", action="store_true", help="same as 'weaving methods'")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    merge = commands.add_parser("merge", help="merge task vectors at one lam: theta_pre + lam * M")
    _add_merge_arguments(merge)
    merge.add_argument("--lam", type=float, default=1.0, help="scaling coefficient (default 1.0)")

    weave = commands.add_parser("weave", help="Weight Weaving: pool the merge over a search space of lam")
    _add_merge_arguments(weave)
    weave.add_argument("--lambdas", required=True, metavar="SPEC",
                       help="search space: 'start:stop:step' (inclusive) or 'a,b,c'")
    weave.add_argument("--pooling", default="avg", help="pooling: avg, random or magmax (default avg)")
    weave.add_argument("--pool-over", default="all", choices=POOL_OVER,
                       help="'all' (task vectors and scaled merges, default) or 'augmented' (scaled merges only)")
    weave.add_argument("--materialize", action="store_true",
                       help="build every pool member, as Algorithm 1 is written (slower, same result)")

    commands.add_parser("methods", help="list merge methods with their default hyper-parameters, and poolings")
    for module_name in FAMILY_COMMANDS:
        importlib.import_module(module_name).add_subcommand(commands)
    return parser


def describe_methods() -> str:
    """The text of ``weaving methods``."""
    lines = ["methods (hyper-parameter=default in allowed range):"]
    width = max(len(name) for name in METHODS)
    for name in sorted(METHODS):
        described = ", ".join(
            f"{p.name}={p.default:g}" + ("" if p.low is None and p.high is None else f" in {p.interval()}")
            for p in METHODS[name].hparams
        )
        lines.append(f"  {name:<{width}}  {described or '(none)'}")
    lines.append(f"poolings: {', '.join(sorted(POOLINGS))}")
    lines.append(f"pool over: {', '.join(POOL_OVER)} (default all)")
    return "\n".join(lines)


def validate_request(args: argparse.Namespace) -> tuple[dict[str, object], dict[str, object], list[float] | None]:
    """(``--set`` values, full hyper-parameters with defaults filled in, search space); reads no file.

    ``seed`` is DARE's seed: ``--seed`` unless ``--set seed=N`` gives it on its own.
    """
    if args.method not in METHODS:
        raise ParamError(f"unknown method {args.method!r}; valid: {choices(METHODS)}")
    method = METHODS[args.method]
    given = parse_assignments(args.assignments)
    with_seed = dict(given)
    if "seed" in method.defaults:
        with_seed.setdefault("seed", args.seed)
    hparams = dict(method.validate(with_seed))
    lambdas = None
    if args.command == "merge":
        if not math.isfinite(args.lam):
            raise ParamError(f"--lam must be finite, got {args.lam!r}")
    else:
        if args.pooling not in POOLINGS:
            raise ParamError(f"unknown pooling {args.pooling!r}; valid: {choices(POOLINGS)}")
        lambdas = [float(v) for v in parse_search_space(args.lambdas)]
    return given, hparams, lambdas


def check_paths(args: argparse.Namespace) -> Path:
    """The output path, refused if its folder is missing or it is one of the inputs."""
    out = Path(args.out)
    if out.is_dir():
        raise ParamError(f"--out {out}: is a folder; give a file name such as {out / 'merged.safetensors'}")
    if not out.parent.is_dir():
        raise ParamError(f"--out {out}: folder {out.parent} does not exist")
    if out.exists():
        for given in [args.pretrained, *args.finetuned]:
            if Path(given).exists() and os.path.samefile(given, out):
                raise ParamError(f"--out {out}: is also an input ({given}); choose another output path")
    return out


def finite_outputs(stream: Iterator[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass the stream through, refusing a floating-point tensor holding NaN or inf."""
    for key, tensor in stream:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(f"merged tensor {key!r} holds NaN or inf; check the inputs' {key!r}")
        yield key, tensor


def run_merge(args: argparse.Namespace) -> None:
    """``weaving merge`` and ``weaving weave``: validate, open, stream, write."""
    given, hparams, lambdas = validate_request(args)
    out = check_paths(args)
    progress = not args.quiet

    pretrained = open_source(args.pretrained)
    finetuned = [open_source(path) for path in args.finetuned]
    method_seed = given.pop("seed", None)
    common = dict(seed=args.seed, method_seed=method_seed, progress=progress, **given)
    if args.command == "merge":
        stream = stream_merge(pretrained, finetuned, args.method, lam=args.lam, **common)
    else:
        stream = stream_merge(pretrained, finetuned, args.method, lambdas=lambdas, pooling=args.pooling,
                              pool_over=args.pool_over, materialize=args.materialize, **common)
    # stream_merge has validated keys, shapes and dtypes; no tensor is read before the hashes.
    if not pretrained.keys():
        raise InputError(f"{pretrained.name}: holds no tensors")
    inputs = [{"path": str(args.pretrained), "sha256": sha256_file(args.pretrained, progress=progress)}]
    finetuned_records = [{"path": str(p), "sha256": sha256_file(p, progress=progress)} for p in args.finetuned]
    metadata = {
        "format": "pt",
        "weaving_version": weaving_version(),
        "command": args.command,
        "method": args.method,
        "hparams": json.dumps(hparams, sort_keys=True),
        "seed": str(args.seed),
        "pretrained": json.dumps(inputs[0]),
        "finetuned": json.dumps(finetuned_records),
    }
    if args.command == "merge":
        metadata["lam"] = json.dumps(args.lam)
    else:
        metadata.update({
            "lambdas": json.dumps(lambdas),
            "lambdas_spec": args.lambdas,
            "pooling": args.pooling,
            "pool_over": args.pool_over,
            "materialize": json.dumps(bool(args.materialize)),
        })
    specs = {key: pretrained.spec(key) for key in pretrained.keys()}
    write_safetensors(out, specs, finite_outputs(stream), metadata)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 bad input, 2 bad request)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.list or args.command == "methods":
            print(describe_methods())
            return 0
        if args.command is None:
            raise UsageError(f"a command is required: merge, weave or methods (see '{PROG} --help')")
        handler = getattr(args, "handler", None)
        if handler is not None:
            handler(args)
        else:
            run_merge(args)
        return 0
    except SystemExit as exit_request:  # --help and --version
        return int(exit_request.code or 0)
    except (UsageError, ParamError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except WeavingError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"{PROG}: error: {where}{error.strerror or error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
