"""Print (or check) the project files each DVC stage's script can import, as dvc.yaml `deps` entries.

    python scripts/stage_deps.py            # one block per stage: the src/ and stages/ entries it needs
    python scripts/stage_deps.py --write    # rewrite those entries of dvc.yaml in place

Library subpackages are listed whole (`src/weaving/methods`), top-level modules one by one; the
closure is `tests/import_closure.py`'s, which `tests/test_pipeline_layout.py` checks dvc.yaml against.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from import_closure import closure  # noqa: E402


def code_deps(script: Path) -> list[str]:
    """`stages/<script>`, `stages/_common.py`, `src/weaving_pipeline` and the library entries it reaches."""
    src = (ROOT / "src").resolve()
    reached = closure(script.resolve(), src, ((ROOT / "stages/_common.py").resolve(),))
    entries = set()
    for path in reached:
        if src not in path.parents:
            continue
        parts = path.relative_to(src).parts
        if parts[0] == "weaving_pipeline":
            entries.add("src/weaving_pipeline")
        elif len(parts) > 2:
            entries.add(f"src/{parts[0]}/{parts[1]}")
        else:
            entries.add(f"src/{'/'.join(parts)}")
    return [f"stages/{script.name}", "stages/_common.py", *sorted(entries)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    text = (ROOT / "dvc.yaml").read_text()
    stages = yaml.safe_load(text)["stages"]
    for name, spec in stages.items():
        cmd = (spec.get("do") or spec)["cmd"]
        script = ROOT / re.search(r"stages/\w+\.py", cmd).group(0)
        deps = code_deps(script)
        if not args.write:
            print(f"{name}:\n" + "".join(f"  - {d}\n" for d in deps))
            continue
        block = re.search(rf"\n  {re.escape(name)}:\n(.*?)(?=\n  \w[\w-]*:\n|\nmetrics:|\Z)", text, re.S)
        body = block.group(1)
        deps_list = re.search(r"( +)deps:\n((?:\1  - .*\n)+)", body)
        indent = deps_list.group(1) + "  "
        kept = [line for line in deps_list.group(2).splitlines()
                if not re.match(rf"{indent}- (src/|stages/)", line)]
        new_list = "".join(f"{indent}- {d}\n" for d in deps) + "".join(f"{line}\n" for line in kept)
        body = body.replace(deps_list.group(2), new_list, 1)
        text = text.replace(block.group(1), body, 1)
    if args.write:
        (ROOT / "dvc.yaml").write_text(text)


if __name__ == "__main__":
    main()
