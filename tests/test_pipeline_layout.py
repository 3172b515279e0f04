"""dvc.yaml against the code: complete dependencies, one path layout, one weave stage."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from import_closure import closure

from weaving_pipeline import paths

ROOT = Path(__file__).resolve().parent.parent
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def stage_script(stage: dict) -> Path:
    return ROOT / re.search(r"stages/\w+\.py", stage["cmd"]).group(0)


def dep_paths(stage: dict) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in stage.get("do", stage).get("deps", [])]


def stages() -> dict[str, dict]:
    return {name: {**spec, **spec.get("do", {})} for name, spec in DVC["stages"].items()}


@pytest.mark.parametrize("name", sorted(DVC["stages"]))
def test_every_imported_project_file_is_a_dependency(name: str) -> None:
    stage = stages()[name]
    script = stage_script(stage)
    src = (ROOT / "src").resolve()
    reached = closure(script.resolve(), src, ((ROOT / "stages/_common.py").resolve(),))
    declared = [ROOT / d for d in dep_paths(stage) if "${" not in d]
    uncovered = sorted(str(f.relative_to(ROOT)) for f in reached
                       if not any(f == d.resolve() or d.resolve() in f.parents for d in declared))
    assert not uncovered, f"stage {name} imports files it does not depend on: {uncovered}"


def test_the_closure_follows_lazy_exports_and_the_method_registry() -> None:
    """Guards the checker itself: a stage that merges reaches every method module and the engine."""
    reached = {f.relative_to(ROOT / "src").as_posix()
               for f in closure((ROOT / "stages/weave.py").resolve(), (ROOT / "src").resolve(),
                                ((ROOT / "stages/_common.py").resolve(),)) if (ROOT / "src") in f.parents}
    assert {"weaving/engine.py", "weaving/methods/ties.py", "weaving/methods/pcb.py", "weaving/quantile.py",
            "weaving/clip/evaluate.py", "weaving_pipeline/paths.py"} <= reached
    assert "weaving/report/tables.py" not in reached


def test_there_is_one_weave_stage_over_models_and_methods_running_every_setup() -> None:
    """A method's params are shared by its setups (one `method_params.<method>` dependency), so a stage
    per setup would rerun no less; one process per method loads the model and test caches once."""
    weave = DVC["stages"]["weave"]
    assert set(weave["matrix"]) == {"model", "method", "seed"}
    assert "setups" in weave["params"]
    assert not [name for name in DVC["stages"] if name.startswith("weave_")]
    assert list(DVC["artifacts"]) == ["woven"]


LAYOUT = [
    ("data/prepared/${item}", paths.prepared("D")),
    ("data/cache/${item}", paths.test_cache("M")),
    ("models/${item}/pretrained", paths.pretrained("M")),
    ("models/${item}/heads", paths.heads("M")),
    ("models/${item.model}/seed${item.seed}/finetuned/${item.task}.safetensors", paths.finetuned("M", "T", seed=7)),
    ("models/${item.model}/seed${item.seed}/sequential/${item.benchmark}", paths.sequential("M", "B", seed=7)),
    ("models/woven/${item.model}/seed${item.seed}/${item.method}", paths.woven("M", "X", seed=7)),
    ("metrics/${item.model}/seed${item.seed}/weave/${item.method}", paths.weave_metrics("M", "X", seed=7)),
    ("metrics/${item}/zeroshot.json", paths.metrics("M", "zeroshot.json")),
    ("metrics/${item}/pretrain.json", paths.metrics("M", "pretrain.json")),
    ("metrics/${item.model}/seed${item.seed}/finetune/${item.task}.json",
     paths.seed_metrics("M", 7, "finetune", "T.json")),
    ("metrics/${item.model}/seed${item.seed}/sequential/${item.benchmark}.json",
     paths.seed_metrics("M", 7, "sequential", "B.json")),
    ("metrics/${item.model}/seed${item.seed}/reference.json", paths.seed_metrics("M", 7, "reference.json")),
    ("models/${item}/seed${seed}/finetuned", paths.finetuned("M", seed=7)),
    ("metrics/${item}/seed${seed}/finetune", paths.seed_metrics("M", 7, "finetune")),
]
PLACEHOLDERS = {"${item}": None, "${item.model}": "M", "${item.task}": "T", "${item.benchmark}": "B",
                "${item.setup}": "S", "${item.method}": "X", "${item.seed}": "7", "${seed}": "7"}


@pytest.mark.parametrize(("template", "expected"), LAYOUT, ids=[t for t, _ in LAYOUT])
def test_dvc_yaml_spells_the_paths_of_the_layout_module(template: str, expected: Path) -> None:
    text = (ROOT / "dvc.yaml").read_text()
    assert template in text, f"dvc.yaml no longer has {template}"
    item = "D" if template.startswith("data/prepared") else "M"
    filled = template.replace("${item}", item)
    for placeholder, value in PLACEHOLDERS.items():
        if value is not None:
            filled = filled.replace(placeholder, value)
    assert Path(filled) == expected


def test_the_report_reads_each_replicate_where_the_stages_write_it() -> None:
    """weaving.report.load (DVC-free) and the pipeline's layout agree on a replicate's folder."""
    from weaving.report.load import replicate_folder, weave_path

    assert replicate_folder(Path("metrics"), "M", 7) == paths.seed_metrics("M", 7)
    assert weave_path(Path("metrics"), "M", "S", "X", 7) == paths.weave_metrics("M", "X", "S", seed=7)


@pytest.mark.parametrize("name", ["finetune", "finetune_sequential", "taskvectors", "weave"])
def test_the_replicated_stages_run_once_per_seed(name: str) -> None:
    """params `seeds` expands the training and weaving stages; the seed is in the command (so in dvc.lock)
    and not a params dependency (adding a seed leaves the others' stages unchanged)."""
    stage = DVC["stages"][name]
    assert stage["matrix"]["seed"] == "${seeds}"
    assert stage["cmd"].endswith("${item.seed}")
    assert "seed" not in stage["params"] and "seeds" not in stage["params"]


@pytest.mark.parametrize("name", ["compress", "mass", "merge3"])
def test_the_stages_run_once_read_replicate_seed(name: str) -> None:
    stage = DVC["stages"][name]["do"]
    assert "seed" in stage["params"]
    assert "metrics/${item}/seed${seed}/finetune" in dep_paths(stage)
    assert not [d for d in dep_paths(stage) if "/finetune" in d and "/seed${seed}/" not in d]


def test_dvc_lock_records_only_stages_of_the_pipeline() -> None:
    """dvc.lock names no stage that dvc.yaml (with the committed params) no longer has: DVC keeps the
    entries of renamed or removed stages, which would misstate where the outputs come from."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        current = {stage.addressing for stage in repo.index.stages}
    locked = set(yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"])
    assert not sorted(locked - current), "stale dvc.lock entries; python scripts/prune_lock.py drops them"
