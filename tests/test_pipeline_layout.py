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
    assert set(weave["matrix"]) == {"model", "method"}
    assert "setups" in weave["params"]
    assert not [name for name in DVC["stages"] if name.startswith("weave_")]
    assert list(DVC["artifacts"]) == ["woven"]


LAYOUT = [
    ("data/prepared/${item}", paths.prepared("D")),
    ("data/cache/${item}", paths.test_cache("M")),
    ("models/${item}/pretrained", paths.pretrained("M")),
    ("models/${item}/heads", paths.heads("M")),
    ("models/${item.model}/finetuned/${item.task}.safetensors", paths.finetuned("M", "T")),
    ("models/${item.model}/sequential/${item.benchmark}", paths.sequential("M", "B")),
    ("models/woven/${item.model}/${item.method}", paths.woven("M", "X")),
    ("metrics/${item.model}/weave/${item.method}", paths.weave_metrics("M", "X")),
    ("metrics/${item}/zeroshot.json", paths.metrics("M", "zeroshot.json")),
    ("metrics/${item}/pretrain.json", paths.metrics("M", "pretrain.json")),
    ("metrics/${item.model}/finetune/${item.task}.json", paths.metrics("M", "finetune", "T.json")),
    ("metrics/${item.model}/sequential/${item.benchmark}.json", paths.metrics("M", "sequential", "B.json")),
]
PLACEHOLDERS = {"${item}": None, "${item.model}": "M", "${item.task}": "T", "${item.benchmark}": "B",
                "${item.setup}": "S", "${item.method}": "X"}


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
