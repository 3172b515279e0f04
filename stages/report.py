"""DVC stage `report`: tables, figures, claims check and paper comparison from the metrics files.

    python stages/report.py --metrics metrics --out reports --models tiny-clip \
        --setups mtl cl dg --methods ties magmax ... --profile embedded \
        [--poolings avg random magmax] [--pool-over all augmented] [--sections tsv ...] [--seeds 0 1 2]
    python stages/report.py --params params.yaml     # the same lists, from params.yaml

With --params, models, methods, profile, poolings (weave.poolings), pool_over (weave.pool_over)
and seeds (the replicates, `seeds`; the sections read replicate `seed`) come from the validated
params file unless given on the command line; --metrics to metrics and --out to reports. Each
replicate's metrics are read from `<metrics>/<model>/seed<seed>/`; without --seeds nor --params,
from `<metrics>/<model>/` (a run without replicate folders).

Every metrics file is validated before anything is written; all outputs are built in memory,
moved into place with `weaving.atomic` (files renamed, the tables/, figures/ and plots/ folders
built beside their targets and swapped whole, so no stale file survives).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # runs from a checkout even without `pip install -e`

from weaving.errors import WeavingError  # noqa: E402
from weaving.report import POOL_OVERS, POOLINGS, SETUPS, build_report, load_metrics  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, help="read unspecified lists from this params.yaml")
    parser.add_argument("--metrics", type=Path, default=Path("metrics"), help="metrics folder (metrics/<model>/...)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="the report folder to write")
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--setups", nargs="+")
    parser.add_argument("--methods", nargs="+")
    parser.add_argument("--profile", help="params profile; 'paper' compares with the paper")
    parser.add_argument("--poolings", nargs="+")
    parser.add_argument("--pool-over", nargs="+", dest="pool_over")
    parser.add_argument("--seeds", nargs="+", type=int, help="the replicates to aggregate (metrics/<model>/seed<s>/)")
    parser.add_argument("--sections", nargs="*", help="the algorithm families' report sections "
                        "(weaving.report.sections.SECTIONS; default: all of them with --params, "
                        "none without)")
    args = parser.parse_args(argv)
    if args.params is None:
        missing = [f"--{name}" for name in ("models", "methods", "profile") if getattr(args, name) is None]
        if missing:
            parser.error(f"{', '.join(missing)} required (or --params params.yaml)")
        args.setups = args.setups or list(SETUPS)
        args.poolings = args.poolings or list(POOLINGS)
        args.pool_over = args.pool_over or list(POOL_OVERS)
    return args


def fill_from_params(args: argparse.Namespace) -> None:
    """Fill the lists not given on the command line from the validated params file."""
    from weaving_pipeline.params import load_params

    params = load_params(args.params)
    args.models = args.models or list(params.models)
    args.setups = args.setups or list(params.setups)
    args.methods = args.methods or list(params.methods)
    args.profile = args.profile or params.profile
    args.poolings = args.poolings or list(params.weave.poolings)
    args.pool_over = args.pool_over or list(params.weave.pool_over)
    args.seeds = args.seeds or list(params.seeds)
    args.section_seed = params.seed if params.seed in args.seeds else args.seeds[0]


def write_outputs(files: dict[str, bytes], out: Path) -> None:
    """Write `files` ({relative path: bytes}) under `out`: each top-level folder built whole beside
    its target and swapped in (no stale file survives), each top-level file renamed into place."""
    from weaving.atomic import atomic_dir, atomic_write, remove_leftovers

    out.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    folders: dict[str, dict[Path, bytes]] = {}
    for relative, data in files.items():
        top, *rest = Path(relative).parts
        if rest:
            folders.setdefault(top, {})[Path(*rest)] = data
        else:
            atomic_write(out / top, lambda tmp, data=data: tmp.write_bytes(data))
    for top, entries in sorted(folders.items()):
        with atomic_dir(out / top) as staging:
            for relative, data in entries.items():
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                (staging / relative).write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        if args.params is not None:
            fill_from_params(args)
        if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
            raise ValueError(f"--seeds {args.seeds} lists a seed more than once")
        runs = {seed: load_metrics(args.metrics, args.models, args.setups, args.methods, args.poolings,
                                   args.pool_over, seed=seed)
                for seed in (args.seeds or [None])}
        from weaving.report.sections import SECTIONS, load_sections

        names = args.sections if args.sections is not None else list(SECTIONS) if args.params else []
        section_seed = getattr(args, "section_seed", args.seeds[0] if args.seeds else None)
        sections = load_sections(names, args.metrics, args.models, seed=section_seed)
        files = build_report(runs, args.profile, progress=True, sections=sections, section_seed=section_seed)
    except (WeavingError, ValueError) as error:
        print(f"error: report: {error}", file=sys.stderr)
        return 1
    write_outputs(files, args.out)
    print(f"[report] {len(files)} files in {args.out} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
