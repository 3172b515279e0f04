"""The ``weaving`` command line: ``weaving merge``, ``weave``, ``run`` and ``methods``.

``merge`` and ``weave`` stream: one key's tensors are in memory at a time (see
``weaving.streaming``), and the output (one ``.safetensors`` file, or a Hugging Face model folder
when ``--out`` ends with ``/``) is written as the keys arrive, atomically. The output is
``theta_pre + result`` with metadata recording the request, the dtypes and each input's
sha256. Inputs may be checkpoints, PEFT LoRA adapter folders or hub ids in the local
Hugging Face cache (``weaving.inputs``). ``run FILE.yaml`` runs the request a merge file
describes (``weaving.mergefile``); ``--save-config`` writes one. The request is validated
once, by the library's ``weaving.request.validate_request`` in the CLI's wording (flags, e.g.
``--lam``, and mergekit's names explained), before any file is read.

Exit status: 0 on success, 2 for a bad request (usage, unknown method, pooling or
hyper-parameter, value out of range, bad search space, bad output name), 1 for bad inputs
(unreadable, truncated, mismatched or non-finite checkpoints) or a failed write, 130 on
Ctrl-C and 143 on SIGTERM. Errors are one line ``weaving: error: ...`` on stderr; no output
or temporary file is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from weaving import METHODS, POOL_OVER, POOLINGS, parse_search_space
from weaving.atomic import atomic_path
from weaving.errors import InputError, ParamError, WeavingError
from weaving.hashcache import HashCache
from weaving.hf import (
    MODEL_FOLDER_FILES,
    TOKENIZER_FILES,
    config_vocab_size,
    looks_like_hub_id,
    parse_size,
    read_config,
)
from weaving.inputs import (
    VOCAB_POLICIES,
    WEIGHTED_METHODS,
    InputSpec,
    append_union_rows,
    check_weights,
    locate_input,
    open_input,
    prepare_sources,
    release_all,
    same_file,
)
from weaving.io import sha256_files
from weaving.mergefile import dump, from_arguments, load_merge_file, to_arguments
from weaving.mergekit_names import hparam_hint, method_hint
from weaving.output import (
    OutputTarget,
    check_output,
    check_space,
    is_inside,
    parse_out,
    plan_shards,
    probe_writable,
    spec_bytes,
    write_file,
    write_model_folder,
)
from weaving.poolings import MethodPooling
from weaving.request import MergeRequest, Wording, get_method, validate_request
from weaving.sources import all_finite
from weaving.streaming import stream_request

PROG = "weaving"

CLI_WORDING = Wording(
    names={"lam": "--lam", "lambdas": "--lambdas", "pooling": "--pooling", "pool_over": "--pool-over",
           "seed": "--seed", "method_seed": "--set seed", "hparams": "--set", "space": "--space",
           "pooling_params": "--pooling-set"},
    not_finite="{name} must be finite, got {value!r}",
    method_hint=method_hint,
    hparam_hint=hparam_hint,
)
"""How the command line's request errors name things: by flag, with mergekit's names explained."""

FAMILY_COMMANDS: tuple[str, ...] = ("weaving.compress.cli", "weaving.search.cli", "weaving.align.cli")
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


def parse_assignment(text: str, option: str = "--set") -> tuple[str, bool | int | float | str]:
    """``key=value`` from ``--set`` (or `option`); the value as bool (true/false), int, float, else str."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key or not raw:
        raise ParamError(f"{option} expects KEY=VALUE (e.g. density=0.2), got {text!r}")
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    for convert in (int, float):
        try:
            return key, convert(raw)
        except ValueError:
            pass
    return key, raw


def parse_space(items: Sequence[str] | None) -> dict[str, str] | None:
    """``--space KEY=SPEC`` options as ``{KEY: SPEC}`` in the order given (None: no option).

    SPEC is parsed later, against the method's hyper-parameter KEY (``validate_request``).
    """
    if not items:
        return None
    space: dict[str, str] = {}
    for item in items:
        key, sep, spec = item.partition("=")
        key, spec = key.strip(), spec.strip()
        if not sep or not key or not spec:
            raise ParamError(f"--space expects KEY=SPEC (e.g. density=0.1,0.2 or density=0.1:0.3:0.1), got {item!r}")
        if key in space:
            raise ParamError(f"--space {key} given twice")
        space[key] = spec
    return space


def parse_assignments(items: Sequence[str] | None, option: str = "--set") -> dict[str, bool | int | float | str]:
    """``--set`` (or `option`) values as ``{KEY: value}``; a key given twice is an error."""
    given: dict[str, bool | int | float | str] = {}
    for item in items or ():
        key, value = parse_assignment(item, option)
        if key in given:
            raise ParamError(f"{option} {key} given twice")
        given[key] = value
    return given


DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
}
DEFAULT_MAX_SHARD_SIZE = "5GB"
CPU_GENERATOR_METHODS = ("dare",)
"""Methods whose random draws come from seeded CPU generators (so results do not depend on the device)."""


def _add_merge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrained", required=True, metavar="PATH",
                        help="pretrained checkpoint: .safetensors, .pt/.bin, *.index.json, a folder, "
                             "or a Hugging Face hub id (org/name) in the local cache")
    parser.add_argument("--finetuned", required=True, nargs="+", metavar="PATH",
                        help="fine-tuned checkpoints of the same architecture (one or more): as --pretrained, "
                             "or PEFT LoRA adapter folders (adapter_config.json)")
    parser.add_argument("--method", required=True, help="merge method (see 'weaving methods')")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", dest="assignments",
                        help="method hyper-parameter, e.g. --set density=0.2 (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--out", required=True, metavar="PATH",
                        help="output: FILE.safetensors (replaced atomically if it exists), or a Hugging Face "
                             "model folder when PATH ends with '/' or is an existing folder")
    parser.add_argument("--weights", nargs="+", type=float, metavar="W",
                        help="one weight per fine-tuned model: task vector t becomes W_t * tau_t "
                             "(task_arithmetic, dare, breadcrumbs)")
    parser.add_argument("--dtype", choices=sorted(DTYPES),
                        help="dtype of the output's floating tensors (default: the pretrained model's)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the merge is computed (default cpu); inputs are read on the CPU")
    parser.add_argument("--vocab", choices=VOCAB_POLICIES, default="refuse",
                        help="resized vocabularies: refuse (default), base (merge the shared rows, keep the "
                             "base's size) or union (also append the added rows)")
    parser.add_argument("--vocab-keys", metavar="KEY[,KEY...]",
                        help="the embedding/output-head keys --vocab applies to (default: 2-D keys whose rows "
                             "equal the pretrained config's vocab_size)")
    parser.add_argument("--hash", choices=("sha256", "none"), default="sha256",
                        help="record each input's sha256 in the output (default; unchanged files are not read "
                             "again, see docs/cli.md) or record none")
    parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, metavar="SIZE",
                        help=f"largest shard of a model folder output, e.g. 500MB, 2GiB (default {DEFAULT_MAX_SHARD_SIZE})")
    parser.add_argument("--allow-download", action="store_true",
                        help="let hub ids not in the local Hugging Face cache be downloaded")
    parser.add_argument("--save-config", metavar="FILE.yaml",
                        help="also write this request as a merge file for 'weaving run' (paths relative to it)")
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
    weave.add_argument("--lambdas", metavar="SPEC",
                       help="search space of lam: 'start:stop:step' (inclusive) or 'a,b,c' (required unless "
                            "--space lam=SPEC)")
    weave.add_argument("--space", action="append", metavar="KEY=SPEC",
                       help="a hyper-parameter axis of the search space, e.g. --space density=0.1,0.2,0.3 or "
                            "--space density=0.1:0.3:0.1 (repeatable); the grid crosses every axis with lam")
    weave.add_argument("--pooling", default="avg",
                       help="pooling: avg, random or magmax (default avg), or a merge method (e.g. ties): the "
                            "members are then merged by it at lam 1")
    weave.add_argument("--pooling-set", action="append", metavar="KEY=VALUE", dest="pooling_assignments",
                       help="hyper-parameter of a merge method used as --pooling, e.g. --pooling ties "
                            "--pooling-set density=0.2 (repeatable; as --set)")
    weave.add_argument("--pool-over", default="all", choices=POOL_OVER,
                       help="'all' (task vectors and scaled merges, default) or 'augmented' (scaled merges only)")
    weave.add_argument("--materialize", action="store_true",
                       help="build every pool member, as Algorithm 1 is written (slower, same result)")

    run = commands.add_parser("run", help="run the merge or weave a YAML merge file describes")
    run.add_argument("merge_file", metavar="FILE.yaml", help="merge file (see docs/cli.md)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

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
    lines.append(f"poolings: {', '.join(sorted(POOLINGS))}, or any method (--pooling ties --pooling-set density=0.2)")
    lines.append(f"pool over: {', '.join(POOL_OVER)} (default all)")
    lines.append(f"per-model --weights: {', '.join(WEIGHTED_METHODS)}")
    return "\n".join(lines)


def build_request(args: argparse.Namespace) -> tuple[dict[str, object], MergeRequest]:
    """(``--set`` values, the validated request); reads no file.

    The request is the library's (``validate_request``, in ``CLI_WORDING``): ``seed`` is
    DARE's seed unless ``--set seed=N`` gives it on its own, and a mergekit method or parameter
    name with another meaning here is refused with the weaving equivalent. Then the
    command line's own options: ``--weights``, ``--max-shard-size``, ``--device``.
    """
    get_method(args.method, CLI_WORDING)  # before the --set values are parsed
    given = parse_assignments(args.assignments)
    if args.command == "merge":
        shape: dict[str, object] = {"lam": args.lam}
    else:
        space = parse_space(getattr(args, "space", None))
        if args.lambdas is None and "lam" not in (space or {}):
            raise UsageError(f"the following arguments are required: --lambdas (or --space lam=SPEC) "
                             f"(see '{PROG} weave --help')")
        shape = {"lambdas": None if args.lambdas is None else parse_search_space(args.lambdas),
                 "pooling": args.pooling, "pool_over": args.pool_over, "materialize": args.materialize,
                 "space": space,
                 "pooling_params": parse_assignments(getattr(args, "pooling_assignments", None), "--pooling-set")}
    request = validate_request(args.method, seed=args.seed, hparams=given, wording=CLI_WORDING, **shape)
    if args.weights is not None:
        check_weights(args.weights, args.method, len(args.finetuned))
    parse_size(args.max_shard_size)
    check_device(args)
    return given, request


def check_device(args: argparse.Namespace) -> None:
    """``--device cuda`` needs a CUDA GPU, and a method and pooling without CPU-generator draws."""
    if args.device != "cuda":
        return
    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        raise ParamError(f"--device cuda: no CUDA GPU is available (torch {torch.__version__}, {built}); "
                         "use --device cpu")
    pooling = getattr(args, "pooling", None)
    drawing = (args.method if args.method in CPU_GENERATOR_METHODS else "random pooling" if pooling == "random"
               else f"{pooling} as the pooling" if pooling in CPU_GENERATOR_METHODS else None)
    if drawing is not None:
        raise ParamError(
            f"--device cuda: {drawing} draws its "
            "random choices from seeded CPU generators (so results do not depend on the device); use --device cpu"
        )


def finite_outputs(stream: Iterator[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass the stream through, refusing a floating-point tensor holding NaN or inf (`all_finite`)."""
    for key, tensor in stream:
        check_signals()
        if not all_finite(tensor):
            raise InputError(f"merged tensor {key!r} holds NaN or inf; check the inputs' {key!r}")
        yield key, tensor
        del tensor  # not kept while the next key is computed


def cast_outputs(stream: Iterator[tuple[str, torch.Tensor]], dtypes: dict[str, torch.dtype],
                 requested: str | None) -> Iterator[tuple[str, torch.Tensor]]:
    """Each tensor in its output dtype; a finite value that overflows it is an error naming the key."""
    for key, tensor in stream:
        want = dtypes[key]
        if tensor.dtype != want:
            cast = tensor.to(want)
            if want.is_floating_point and not all_finite(cast) and all_finite(tensor):
                largest = float(tensor.abs().max())
                raise InputError(
                    f"merged tensor {key!r} reaches {largest:.4g}, beyond the range of {want}"
                    + (f" (--dtype {requested})" if requested else " (the pretrained model's dtype)")
                    + "; choose --dtype bfloat16 or float32"
                )
            tensor = cast
            del cast
        yield key, tensor
        del tensor  # not kept while the next key is computed


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _names(dtypes: Iterable[torch.dtype]) -> str:
    return ",".join(sorted({_dtype_name(d) for d in dtypes})) or "none"


def _hash_inputs(specs: Sequence[InputSpec], mode: str, progress: bool) -> list[str | None]:
    if mode == "none":
        return [None] * len(specs)
    cache = HashCache()
    try:
        return [sha256_files(spec.files, progress=progress, label=Path(spec.given).name or spec.given, cache=cache)
                for spec in specs]
    finally:
        cache.save()


def _model_card(args: argparse.Namespace, record: dict[str, object], inputs: list[dict[str, object]],
                metadata: dict[str, str]) -> str:
    front = ["---"]
    if looks_like_hub_id(args.pretrained) and not Path(args.pretrained).exists():
        front.append(f"base_model: {args.pretrained}")
    front += ["library_name: transformers", "tags:", "- merge", "- weaving", f"- {args.method}", "---", ""]
    what = "Weight Weaving" if args.command == "weave" else "a merge"
    lines = [
        f"# {Path(args.out.rstrip('/')).name}",
        "",
        (f"This model is {what} of fine-tuned models of one pretrained model, made with weaving "
         f"{metadata['weaving_version']} (method `{args.method}`, hyper-parameters `{metadata['hparams']}`)."),
        "",
        "| role | input | sha256 |",
        "| --- | --- | --- |",
    ]
    for item in inputs:
        lines.append(f"| {item['role']} | `{item['path']}` | {item['sha256'] or '(not hashed)'} |")
    lines += [
        "",
        (f"Computed in {metadata['compute_dtype']}, written in {metadata['output_dtype']}. "
         "Every shard's safetensors metadata records the same request."),
        "",
        "## Merge file",
        "",
        "Rerun with `weaving run merge.yaml`:",
        "",
        "```yaml",
        dump(record).rstrip(),
        "```",
        "",
    ]
    return "\n".join(front + lines)


def _folder_texts(args: argparse.Namespace, pretrained: InputSpec, tokenizer_from: InputSpec | None,
                  out_dtypes: dict[str, torch.dtype], vocab_rows: int | None) -> tuple[dict[str, Path], dict[str, str]]:
    """Files copied into a model folder, and config.json with the output's dtype and vocabulary size."""
    copies: dict[str, Path] = {}
    texts: dict[str, str] = {}
    folder = pretrained.folder
    for name in MODEL_FOLDER_FILES:
        source_folder = tokenizer_from.folder if (tokenizer_from is not None and name in TOKENIZER_FILES) else folder
        if source_folder is not None and (source_folder / name).is_file():
            copies[name] = source_folder / name
    config = read_config(folder)
    if config is not None:
        copies.pop("config.json", None)
        float_dtypes = {d for d in out_dtypes.values() if d.is_floating_point}
        if len(float_dtypes) == 1:
            name = _dtype_name(next(iter(float_dtypes)))
            for field in ("torch_dtype", "dtype"):
                if field in config:
                    config[field] = name
            if "torch_dtype" not in config and "dtype" not in config:
                config["torch_dtype"] = name
        if vocab_rows is not None:
            for where in (config, config.get("text_config")):
                if isinstance(where, dict) and "vocab_size" in where:
                    where["vocab_size"] = vocab_rows
        texts["config.json"] = json.dumps(config, indent=2, sort_keys=True) + "\n"
    return copies, texts


def run_merge(args: argparse.Namespace, merge_file: tuple[str, str] | None = None) -> None:
    """``weaving merge``, ``weaving weave`` and ``weaving run``: validate, locate, check the
    output, open, stream, hash, write. ``merge_file``: (path, sha256) of the YAML it came from."""
    given, request = build_request(args)
    target = parse_out(args.out)
    max_shard_bytes = parse_size(args.max_shard_size)
    progress = not args.quiet
    vocab_keys = [k for k in (args.vocab_keys or "").split(",") if k]
    config_path = Path(args.save_config) if args.save_config else None
    if config_path is not None and not config_path.parent.is_dir():
        raise ParamError(f"--save-config {config_path}: folder {config_path.parent} does not exist")

    pretrained_spec = locate_input(args.pretrained, allow_download=args.allow_download, adapter_allowed=False)
    finetuned_specs = [locate_input(p, allow_download=args.allow_download) for p in args.finetuned]
    all_specs = [pretrained_spec, *finetuned_specs]
    if merge_file is not None:
        check_output(target, {merge_file[0]: [Path(merge_file[0])], **{s.given: s.files for s in all_specs}})
    else:
        check_output(target, {s.given: s.files for s in all_specs})
    probe_writable(target)
    if config_path is not None:
        check_config_path(config_path, target, {s.given: s.files for s in all_specs})
        write_text_atomically(config_path, dump(from_arguments(args, given, config_path.parent)))

    pretrained = open_input(pretrained_spec)
    finetuned = [open_input(spec, base=pretrained) for spec in finetuned_specs]
    config = read_config(pretrained_spec.folder)
    prepared = prepare_sources(
        pretrained, finetuned, vocab=args.vocab, vocab_keys=vocab_keys, config_vocab_size=config_vocab_size(config),
        weights=args.weights, method=args.method,
        min_dtype=DTYPES[args.dtype] if args.dtype == "float64" else None,
    )
    keys = sorted(pretrained.keys())
    if not keys:
        raise InputError(f"{pretrained.name}: holds no tensors")
    out_dtypes: dict[str, torch.dtype] = {}
    specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for key in keys:
        shape, dtype = pretrained.spec(key)
        if dtype.is_floating_point and args.dtype:
            dtype = DTYPES[args.dtype]
        rows = prepared.union_rows.get(key)
        if rows:
            shape = (rows[-1][1], *shape[1:])
        out_dtypes[key] = dtype
        specs[key] = (tuple(shape), dtype)
    total_bytes = sum(spec_bytes(spec) for spec in specs.values())
    shards = plan_shards(specs, max_shard_bytes) if target.folder else [keys]
    check_space(target, total_bytes, len(shards) + 1)

    stream = stream_request(prepared.pretrained, prepared.finetuned, request, progress=progress)
    # stream_request has checked keys, shapes and dtypes; no tensor is read before the hashes.
    digests = _hash_inputs(all_specs, args.hash, progress)
    records = [{"path": spec.given, "sha256": digest} for spec, digest in zip(all_specs, digests)]
    for record, spec in zip(records[1:], finetuned_specs):
        if spec.adapter:
            record["adapter"] = "peft-lora"
    metadata = {
        "format": "pt",
        "weaving_version": weaving_version(),
        "command": args.command,
        "method": args.method,
        "hparams": json.dumps(dict(request.hparams), sort_keys=True),
        "seed": str(args.seed),
        "pretrained": json.dumps(records[0]),
        "finetuned": json.dumps(records[1:]),
        "compute_dtype": _dtype_name(prepared.compute_dtype),
        "output_dtype": _names(d for d in out_dtypes.values() if d.is_floating_point),
        "input_dtypes": json.dumps({spec.given: names for spec, names in zip(all_specs, prepared.input_dtypes)}),
        "hash": args.hash,
    }
    if args.weights is not None:
        metadata["weights"] = json.dumps(args.weights)
    if prepared.vocab_keys:
        metadata["vocab"] = json.dumps({"policy": args.vocab, "keys": prepared.vocab_keys})
    if args.device != "cpu":
        metadata["device"] = args.device
    if merge_file is not None:
        metadata["merge_file"] = json.dumps({"path": merge_file[0], "sha256": merge_file[1]})
    if args.command == "merge":
        metadata["lam"] = json.dumps(args.lam)
    else:
        assert request.weave is not None
        space = request.weave.space
        metadata.update({
            "lambdas": json.dumps(list(request.weave.lambdas) if space is None else space.record["lam"]),
            "lambdas_spec": args.lambdas if args.lambdas is not None else parse_space(args.space)["lam"],  # type: ignore[index]
            "pooling": args.pooling,
            **({"pooling_params": json.dumps(dict(request.weave.pooling.params))}
               if isinstance(request.weave.pooling, MethodPooling) else {}),
            "pool_over": args.pool_over,
            "materialize": json.dumps(bool(args.materialize)),
        })
        if space is not None:
            metadata.update({
                "space": json.dumps(space.record),
                "space_spec": json.dumps(parse_space(args.space)),
                "members": str(len(space.points)),
                "merges": str(len(space.combinations)),
            })
    output = finite_outputs(cast_outputs(append_union_rows(stream, prepared.union_rows), out_dtypes, args.dtype))
    device = torch.device(args.device) if args.device != "cpu" else contextlib.nullcontext()
    try:
        with device:
            if not target.folder:
                write_file(target, specs, output, metadata, progress=progress)
                return
            tokenizer_from = None
            vocab_rows = None
            if prepared.union_rows and any(prepared.union_rows.values()):
                widest = max((rows[-1] for rows in prepared.union_rows.values() if rows), key=lambda r: r[1])
                vocab_rows = widest[1]
                tokenizer_from = next(s for s, src in zip(finetuned_specs, finetuned) if src is widest[2])
            copies, texts = _folder_texts(args, pretrained_spec, tokenizer_from, out_dtypes, vocab_rows)
            roles = [{"role": "pretrained", **records[0]}] + [{"role": "fine-tuned", **r} for r in records[1:]]
            texts["README.md"] = _model_card(args, from_arguments(args, given, None), roles, metadata)
            write_model_folder(target, specs, output, metadata, shards=shards, copies=copies, texts=texts,
                               progress=progress)
    finally:
        release_all([pretrained, *finetuned])


def check_config_path(path: Path, target: OutputTarget, inputs: dict[str, list[Path]]) -> None:
    """``--save-config`` must not replace an input's file nor land in or on the output."""
    if path.suffix not in (".yaml", ".yml"):
        raise ParamError(f"--save-config {path}: a merge file must end in .yaml or .yml")
    for given, files in inputs.items():
        for file in files:
            if path.exists() and same_file(path, file):
                raise ParamError(f"--save-config {path}: is a file of input {given}; choose another path")
    if (target.folder and is_inside(path, target.path)) or (not target.folder and path.exists()
                                                           and same_file(path, target.path)):
        raise ParamError(f"--save-config {path}: is inside or on the output {target.given}; choose another path")


def write_text_atomically(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def run_merge_file(args: argparse.Namespace) -> None:
    """``weaving run FILE``: the request a merge file describes, its sha256 recorded in the output."""
    path = Path(args.merge_file)
    merge_file, digest = load_merge_file(path)
    request = to_arguments(merge_file, path.parent)
    request.quiet = args.quiet
    run_merge(request, merge_file=(str(path), digest))


class Terminated(BaseException):
    """SIGTERM received: raised in the main thread so every ``finally`` and cleanup runs."""


_SIGNALS = {signal.SIGINT: (KeyboardInterrupt, 130, "interrupted"), signal.SIGTERM: (Terminated, 143, "terminated (SIGTERM)")}
_received: list[int] = []


def _on_signal(signum: int, frame: object) -> None:
    """Record the signal, then raise its exception. The record matters: an exception raised
    while a library (safetensors, torch) is inside native code may reach us as another error."""
    _received.append(signum)
    raise _SIGNALS[signal.Signals(signum)][0]()


def check_signals() -> None:
    """Raise the exception of a signal received earlier whose exception was swallowed on the way."""
    if _received:
        raise _SIGNALS[signal.Signals(_received[0])][0]()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 bad input, 2 bad request,
    130 after Ctrl-C, 143 after SIGTERM: both leave no output or temporary file)."""
    parser = build_parser()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {signum: signal.getsignal(signum) for signum in _SIGNALS} if in_main_thread else {}
    for signum in previous:
        signal.signal(signum, _on_signal)
    _received.clear()
    try:
        try:
            args = parser.parse_args(argv)
            if args.list or args.command == "methods":
                print(describe_methods())
                return 0
            if args.command is None:
                raise UsageError(f"a command is required: merge, weave, run or methods (see '{PROG} --help')")
            handler = getattr(args, "handler", None)
            if handler is not None:
                handler(args)
            elif args.command == "run":
                run_merge_file(args)
            else:
                run_merge(args)
            return 0
        except BaseException:
            check_signals()  # a signal's exception, possibly turned into another one on the way
            raise
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
    except (KeyboardInterrupt, Terminated) as stop:
        _, status, what = next(v for v in _SIGNALS.values() if isinstance(stop, v[0]))
        print(f"{PROG}: error: {what}; no output written", file=sys.stderr)
        return status
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
