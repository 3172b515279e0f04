"""`weaving search`: MERGE3 on your own CLIP-style image classifiers and a small labelled set.

What it supports (and what not): image encoders that open_clip builds (`--arch NAME`, any
open_clip architecture name or the embedded `weaving-tiny-clip`, with `--pretrained` the
encoder's state dict; or `--model-dir`, a folder `weaving.clip.save_pretrained` or the
pipeline wrote), classified by zero-shot heads: `logits = normalize(visual(x)) @ head.T`.
Other architectures need the library (`weaving.search.run_merge3` takes any
`torch.nn.Module` encoder).

Inputs, one per task and in the order of `--tasks`:
- `--finetuned`: the fine-tuned image encoder (safetensors, `.pt`/`.bin` state dict, or a
  sharded checkpoint), same keys as the pretrained encoder;
- `--heads`: safetensors or `.pt` with a tensor `weight` `[num_classes, embed_dim]`
  (the project's `models/<model>/heads/<task>.safetensors`);
- `--val` (and optionally `--test`): a `torch.save`d dict `{"images": float [N, 3, S, S]
  already normalised for the encoder, "labels": int64 [N]}` (the project's
  `data/cache/<model>/<task>_test.pt` format), optionally `"ids": int64 [N]` identifying
  the source examples; validation and test ids must not meet.

Output: `--out result.json`, the dict of `run_merge3`; `--save-merged PATH` writes the
best merged encoder of the first fitness kind as safetensors.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import torch

from weaving.errors import InputError, ParamError

FITNESS_CHOICES = ("full", "anchors", "mp_irt", "gmp_irt")


def _grid_spec(text: str, name: str) -> tuple[float, float]:
    low, sep, high = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return float(low), float(high)
    except ValueError:
        raise ParamError(f"--{name} expects LOW:HIGH (e.g. 0:1), got {text!r}") from None


def add_subcommand(commands) -> None:
    """Add `weaving search` to the CLI's subparsers."""
    parser = commands.add_parser(
        "search", help="MERGE3: evolutionary merge search with IRT-estimated fitness on a small labelled set",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model-dir", metavar="DIR", help="open_clip local-dir saved by weaving (config + weights)")
    model.add_argument("--arch", metavar="NAME", help="open_clip architecture (e.g. ViT-B-32, weaving-tiny-clip)")
    model.add_argument("--pretrained", metavar="PATH",
                       help="pretrained image-encoder state dict (with --arch; default with --model-dir: its visual.safetensors)")
    data = parser.add_argument_group("tasks (one entry per task, in --tasks order)")
    data.add_argument("--tasks", nargs="+", required=True, metavar="NAME")
    data.add_argument("--finetuned", nargs="+", required=True, metavar="PATH", help="fine-tuned encoders")
    data.add_argument("--heads", nargs="+", required=True, metavar="PATH", help="classification heads (tensor 'weight')")
    data.add_argument("--val", nargs="+", required=True, metavar="PATH", help="validation tensors (.pt)")
    data.add_argument("--test", nargs="+", metavar="PATH", help="test tensors (.pt), evaluated on the final merge")
    search = parser.add_argument_group("search")
    search.add_argument("--method", default="task_arithmetic", help="task_arithmetic, ties or dare (default task_arithmetic)")
    search.add_argument("--fitness", nargs="+", default=["gmp_irt"], metavar="KIND",
                        help=f"one or more of {', '.join(FITNESS_CHOICES)} (default gmp_irt)")
    search.add_argument("--anchors", type=int, default=10, help="anchor items per task (default 10)")
    search.add_argument("--population-size", type=int, default=20,
                        help="random merges in the IRT response population (default 20)")
    search.add_argument("--irt-dims", type=int, default=2, help="IRT dimensions (default 2)")
    search.add_argument("--search-population", type=int, default=25, help="GA population (default 25)")
    search.add_argument("--generations", type=int, default=7, help="generations, the first included (default 7)")
    search.add_argument("--algorithm", default="ga", help="ga (mean over tasks) or nsga2 (one objective per task)")
    search.add_argument("--coefficient-bounds", default="0:1", metavar="LOW:HIGH", help="default 0:1")
    search.add_argument("--density-bounds", default="0.1:1", metavar="LOW:HIGH", help="TIES/DARE, default 0.1:1")
    search.add_argument("--step", type=float, default=0.1, help="gene grid step (default 0.1)")
    search.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    search.add_argument("--audit", action="store_true",
                        help="also evaluate every estimated candidate on all items (errors on own candidates)")
    run = parser.add_argument_group("run")
    run.add_argument("--device", default="cpu", help="torch device (default cpu)")
    run.add_argument("--batch-size", type=int, default=256)
    run.add_argument("--out", required=True, metavar="PATH", help="result JSON (written atomically)")
    run.add_argument("--save-merged", metavar="PATH", help="best merged encoder of the first fitness kind (.safetensors)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_search)


def _validate(args: argparse.Namespace) -> None:
    from weaving.search.estimators import check_fitness_kind
    from weaving.search.evolve import ALGORITHMS
    from weaving.search.genome import check_search_method

    check_search_method(args.method)
    for kind in args.fitness:
        check_fitness_kind(kind)
    if len(set(args.fitness)) != len(args.fitness):
        raise ParamError(f"--fitness lists a kind twice: {args.fitness}")
    if args.algorithm not in ALGORITHMS:
        raise ParamError(f"unknown --algorithm {args.algorithm!r}; valid: {', '.join(ALGORITHMS)}")
    if (args.model_dir is None) == (args.arch is None):
        raise ParamError("give exactly one of --model-dir DIR or --arch NAME (with --pretrained)")
    if args.arch is not None and args.pretrained is None:
        raise ParamError("--arch needs --pretrained PATH (the pretrained image-encoder state dict)")
    if len(set(args.tasks)) != len(args.tasks):
        raise ParamError(f"--tasks lists a task twice: {args.tasks}")
    for name in ("finetuned", "heads", "val", "test"):
        given = getattr(args, name)
        if given is not None and len(given) != len(args.tasks):
            raise ParamError(f"--{name} needs one path per task ({len(args.tasks)}: {', '.join(args.tasks)}), "
                             f"got {len(given)}")
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        raise ParamError(f"--out {out}: give a file in an existing folder")
    if args.save_merged and not Path(args.save_merged).parent.is_dir():
        raise ParamError(f"--save-merged {args.save_merged}: folder does not exist")
    for name in ("val", "test"):
        for path in getattr(args, name) or ():
            if not Path(path).is_file():
                raise InputError(f"--{name} {path}: no such file")
    if args.test:
        for task, val_path, test_path in zip(args.tasks, args.val, args.test):
            if Path(val_path).resolve() == Path(test_path).resolve():
                raise InputError(f"task {task!r}: --val and --test are the same file ({val_path}); "
                                 "the validation items must be disjoint from the test items")


def _load_tensors(path: str, what: str) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise InputError(f"{what} {path}: not a readable torch file ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{what} {path}: expected a dict with 'images' and 'labels', got {type(data).__name__}")
    return data


def _load_head(path: str) -> torch.Tensor:
    from weaving.io import load_state_dict

    if path.endswith((".pt", ".bin", ".pth")):
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        head = loaded if isinstance(loaded, torch.Tensor) else loaded.get("weight") if isinstance(loaded, dict) else None
    else:
        head = load_state_dict(path).get("weight")
    if not isinstance(head, torch.Tensor) or head.ndim != 2 or not head.is_floating_point():
        raise InputError(f"--heads {path}: expected a float tensor 'weight' [num_classes, embed_dim]")
    return head.float()


def _load_encoder(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    from weaving.io import load_state_dict

    if args.model_dir is not None:
        from weaving.clip.models import VISUAL_FILE, load_pretrained

        try:
            model = load_pretrained(args.model_dir)
        except FileNotFoundError as error:
            raise InputError(str(error)) from None
        pretrained_path = args.pretrained or str(Path(args.model_dir) / VISUAL_FILE)
    else:
        from weaving.clip.models import create_model

        try:
            model = create_model(args.arch)
        except ValueError as error:
            raise ParamError(f"--arch: {error}") from None
        pretrained_path = args.pretrained
    encoder = model.visual
    pretrained = load_state_dict(pretrained_path)
    expected = encoder.state_dict()
    if set(pretrained) != set(expected):
        missing = sorted(set(expected) - set(pretrained))[:3]
        extra = sorted(set(pretrained) - set(expected))[:3]
        raise InputError(f"{pretrained_path}: keys do not match the encoder of the model (missing {missing}, extra {extra})")
    for key, value in expected.items():
        if tuple(pretrained[key].shape) != tuple(value.shape):
            raise InputError(f"{pretrained_path}: key {key!r} has shape {tuple(pretrained[key].shape)}, "
                             f"the encoder {tuple(value.shape)}")
    return encoder, pretrained


def run_search(args: argparse.Namespace) -> None:
    """Validate the request, load the inputs, run `run_merge3`, write the JSON (and the merged encoder)."""
    from weaving.atomic import write_json
    from weaving.io import load_state_dict, save_state_dict
    from weaving.search.experiment import merged_encoder_state, run_merge3
    from weaving.search.genome import GeneGrid

    _validate(args)
    coefficient = GeneGrid(*_grid_spec(args.coefficient_bounds, "coefficient-bounds"), args.step, "coefficient")
    density = GeneGrid(*_grid_spec(args.density_bounds, "density-bounds"), args.step, "density")

    encoder, pretrained = _load_encoder(args)
    finetuned = {task: load_state_dict(path) for task, path in zip(args.tasks, args.finetuned)}
    heads = {task: _load_head(path) for task, path in zip(args.tasks, args.heads)}
    val = {task: _load_tensors(path, "--val") for task, path in zip(args.tasks, args.val)}
    test = {task: _load_tensors(path, "--test") for task, path in zip(args.tasks, args.test)} if args.test else None
    result = run_merge3(
        encoder, pretrained, finetuned, heads, val, test,
        methods=[args.method], fitness_kinds=args.fitness, population_size=args.population_size,
        irt_dims=args.irt_dims, anchors_per_task=args.anchors, search_population=args.search_population,
        generations=args.generations, algorithm=args.algorithm, coefficient_grid=coefficient,
        density_grid=density, seed=args.seed, audit_estimates=args.audit,
        disjoint_from={"test": test} if test else None, batch_size=args.batch_size, device=args.device,
        progress=not args.quiet,
    )
    result["inputs"] = {
        "model_dir": args.model_dir, "arch": args.arch, "pretrained": args.pretrained,
        "finetuned": dict(zip(args.tasks, args.finetuned)), "heads": dict(zip(args.tasks, args.heads)),
        "val": dict(zip(args.tasks, args.val)), "test": dict(zip(args.tasks, args.test)) if args.test else None,
    }
    if args.save_merged:
        best = result["searches"][args.method][args.fitness[0]]
        state = merged_encoder_state(pretrained, finetuned, args.method, best["best_genome"], seed=args.seed)
        save_state_dict(args.save_merged, state, {
            "format": "pt", "method": args.method, "fitness": args.fitness[0],
            "genome": json.dumps(best["best_genome"], sort_keys=True),
        })
    write_json(args.out, result)
    if not args.quiet:
        for kind in args.fitness:
            search = result["searches"][args.method][kind]
            test_mean = search["final"]["test_mean"]
            print(f"{args.method} {kind}: fitness {search['best_fitness']:.2f}, "
                  f"{search['item_evaluations']} item evaluations"
                  + (f", test mean {test_mean:.2f}" if test_mean is not None else ""))
