"""Drop from dvc.lock the entries of stages that dvc.yaml (with the current params) no longer has.

    python scripts/prune_lock.py            # rewrite dvc.lock without them, printing their names
    python scripts/prune_lock.py --check    # exit 1 if there are any

DVC keeps the lock entry of a stage that was renamed or removed (or of a replicate `seeds` no longer
lists), so dvc.lock would name outputs no stage produces. `make repro` runs this after `dvc repro`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = re.compile(r"^  (\S[^:]*):\s*$")  # a stage entry: two spaces in, under `stages:`


def stale_blocks(text: str, current: set[str]) -> tuple[str, list[str]]:
    """`text` without the `stages:` entries not in `current`, and the names dropped."""
    kept, dropped, dropping = [], [], False
    for line in text.splitlines(keepends=True):
        entry = ENTRY.match(line)
        if entry:
            dropping = entry.group(1) not in current
            if dropping:
                dropped.append(entry.group(1))
        elif not line.startswith("   ") and line.strip():
            dropping = False  # a top-level key ends the stages
        if not dropping:
            kept.append(line)
    return "".join(kept), dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if an entry is stale")
    args = parser.parse_args()
    from dvc.repo import Repo

    from weaving.atomic import atomic_write

    lock = ROOT / "dvc.lock"
    if not lock.exists():
        return
    with Repo(str(ROOT)) as repo:
        current = {stage.addressing for stage in repo.index.stages}
    text, dropped = stale_blocks(lock.read_text(), current)
    for name in dropped:
        print(f"dvc.lock: {'stale' if args.check else 'dropped'} entry {name!r}")
    if args.check:
        sys.exit(1 if dropped else 0)
    if dropped:
        atomic_write(lock, lambda tmp: tmp.write_text(text))


if __name__ == "__main__":
    main()
