"""The C2M3 stages' pipeline side: the c2m3 params block, the metrics file, the report section and its claims.

Metrics files are written out by hand here (not by the experiment), and the expected table cells and
claim numbers are stated from the hand-made values; verdicts are checked on hand cases on both sides
of each rule's boundary.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from params_fixtures import write
from stage_loader import load_stage

from weaving.metrics import MetricsFileError, family_contract_markdown, family_metrics_files
from weaving.metrics_align import ALIGN_MERGERS, AlignMetrics
from weaving.report.claims import FAILS, HOLDS, MIXED, UNTESTABLE
from weaving_pipeline import paths
from weaving_pipeline.params import ParamsError, load_params
from weaving_pipeline.params_c2m3 import ARCHITECTURES

ROOT = Path(__file__).resolve().parent.parent
MERGERS = ["naive", "pairwise", "mergemany", "c2m3"]


# --- params --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ["params.yaml", "profiles/smoke.yaml", "profiles/paper.yaml"])
def test_every_profile_has_a_c2m3_block(profile: str) -> None:
    params = load_params(ROOT / profile)
    c2m3 = params.c2m3
    assert c2m3.num_models >= 2 and set(c2m3.archs) <= {"mlp", "resnet", "vgg"}
    assert all(2 <= n <= c2m3.num_models for n in c2m3.subset_sizes)
    assert set(c2m3.datasets) <= set(params.datasets)


def test_the_embedded_profile_runs_the_issues_grid() -> None:
    c2m3 = load_params(ROOT / "params.yaml").c2m3
    assert c2m3.datasets == ["mnist", "fashion_mnist"] and c2m3.archs == ["mlp", "resnet"]
    assert c2m3.num_models == 5 and c2m3.subset_sizes == [2, 3, 5]
    smoke = load_params(ROOT / "profiles/smoke.yaml").c2m3
    assert smoke.num_models <= 3 and smoke.fw_max_iter <= 20


def test_the_params_architectures_are_the_librarys() -> None:
    from weaving.align.merge import MERGERS as LIBRARY_MERGERS
    from weaving.align.models import ARCHITECTURES as LIBRARY_ARCHITECTURES

    assert ARCHITECTURES == LIBRARY_ARCHITECTURES
    assert ALIGN_MERGERS == LIBRARY_MERGERS


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda p: p["c2m3"].update(num_models=1), ["c2m3.num_models", "at least 2"]),
        (lambda p: p["c2m3"].update(subset_sizes=[2, 7]), ["c2m3", "subset_sizes[1] = 7", "2..num_models = 5"]),
        (lambda p: p["c2m3"].update(subset_sizes=[1]), ["c2m3", "subset_sizes[0] = 1"]),
        (lambda p: p["c2m3"].update(archs=["mlp", "vgg16"]), ["c2m3.archs", "vgg16", "mlp", "resnet", "vgg"]),
        (lambda p: p["c2m3"].update(archs=["mlp", "vgg"]), ["c2m3", "archs lists ['vgg']", "no 'vgg' entry"]),
        (lambda p: p["c2m3"].update(vgg={"width": [4, 4], "convs_per_stage": [1], "train": {
            "epochs": 1, "batch_size": 8, "lr": 0.1}}), ["c2m3.vgg", "convs_per_stage has 1 entries, width 2"]),
        (lambda p: p["c2m3"].update(vgg={"width": [4, 0], "train": {"epochs": 1, "batch_size": 8, "lr": 0.1}}),
         ["c2m3.vgg.width", "[1] = 0"]),
        (lambda p: p["c2m3"].update(vgg={"width": [4], "convs_per_stage": [1], "classifier_width": 0, "train": {
            "epochs": 1, "batch_size": 8, "lr": 0.1}}), ["c2m3.vgg.classifier_width"]),
        (lambda p: p["c2m3"].update(datasets=["cifar10"]), ["c2m3.datasets", "cifar10", "mnist"]),
        (lambda p: p["c2m3"].update(datasets=["optdigits", "svhn"]), ["c2m3.datasets", "svhn", "datasets"]),
        (lambda p: p["c2m3"]["mlp"].update(width=[128, 0]), ["c2m3.mlp.width", "[1] = 0"]),
        (lambda p: p["c2m3"]["resnet"].update(width=[]), ["c2m3.resnet.width"]),
        (lambda p: p["c2m3"]["resnet"].update(norm="group"), ["c2m3.resnet.norm"]),
        (lambda p: p["c2m3"]["resnet"].update(shortcut_kernel=2), ["c2m3.resnet.shortcut_kernel", "odd"]),
        (lambda p: p["c2m3"]["resnet"]["train"].update(lr=0), ["c2m3.resnet.train.lr"]),
        (lambda p: p["c2m3"]["mlp"]["train"].update(epochs=0), ["c2m3.mlp.train.epochs"]),
        (lambda p: p["c2m3"].update(barrier_points=1), ["c2m3.barrier_points"]),
        (lambda p: p["c2m3"].update(archs=["mlp", "mlp"]), ["c2m3.archs", "more than once"]),
        (lambda p: p["c2m3"].update(widht=3), ["c2m3.widht", "unknown key"]),
        (lambda p: p.pop("c2m3"), ["c2m3", "missing"]),
    ],
)
def test_bad_params_name_the_key(tmp_path, default, mutate, expected) -> None:
    params = copy.deepcopy(default)
    mutate(params)
    with pytest.raises(ParamsError) as error:
        load_params(write(tmp_path, params))
    for fragment in expected:
        assert fragment in str(error.value), (fragment, str(error.value))


def test_the_stages_spell_the_layout_of_the_paths_module() -> None:
    text = (ROOT / "dvc.yaml").read_text()
    assert str(paths.align_models("${item.dataset}", "${item.arch}")) in text
    assert str(paths.align_metrics("${item.dataset}", "${item.arch}")) in text
    assert paths.align_models("mnist", "mlp", 2) == Path("models/align/mnist-mlp/model_2.safetensors")
    assert paths.align_metrics("fashion_mnist", "resnet") == Path("metrics/align/fashion_mnist-resnet.json")
    stages = yaml.safe_load(text)["stages"]
    assert set(stages["align"]["matrix"]) == set(stages["align_train"]["matrix"]) == {"dataset", "arch"}
    assert list(stages).index("align") < list(stages).index("report")


# --- hand-made metrics files ---------------------------------------------------------------------------------------

def merge_record(accuracy: float, merger: str, size: int, repair: float | None, cycle: float) -> dict:
    record: dict = {"accuracy": accuracy, "loss": round(2.5 - accuracy / 50, 4), "seconds": 0.5}
    if merger == "mergemany":
        record["rounds"] = 3
    if merger == "c2m3":
        record.update(iterations=2, objective_trace=[1.0, 2.0], objective_rounded=1.9, step_sizes=[1.0, 0.5])
    if merger != "naive" and size >= 3:
        record["cycle_error"] = {"max": cycle, "mean": cycle / 2, "max_fraction_moved": min(1.0, cycle / 10),
                                 "triples": 1 if size == 3 else 10}
        record["cycle_seconds"] = 0.1
    if repair is not None:
        record["repair"] = {"accuracy": repair, "loss": 1.0, "seconds": 0.2}
    return record


def make_run(dataset: str, arch: str, accuracy: dict[int, dict[str, float]],
             repair: dict[int, dict[str, float]] | None = None, cycles: dict[str, float] | None = None) -> dict:
    """A metrics file with one subset per size: `accuracy[size][merger]`, `repair[size][merger]` (ResNet)."""
    cycles = {"pairwise": 20.0, "mergemany": 0.0, "c2m3": 0.0, **(cycles or {})}
    sizes = sorted(accuracy)
    num_models = max(sizes)
    subsets = [{"size": n, "models": list(range(n)), "endpoint_mean": {"accuracy": 90.0, "loss": 0.3},
                "mergers": {m: merge_record(accuracy[n][m], m, n, (repair or {}).get(n, {}).get(m), cycles.get(m, 0.0))
                            for m in MERGERS}} for n in sizes]
    summary = []
    for entry in subsets:
        mergers = {}
        for m, r in entry["mergers"].items():
            stats = {"accuracy": r["accuracy"], "loss": r["loss"], "accuracy_min": r["accuracy"],
                     "accuracy_max": r["accuracy"]}
            if "repair" in r:
                stats["repair"] = {"accuracy": r["repair"]["accuracy"], "loss": r["repair"]["loss"]}
            if "cycle_error" in r:
                stats["cycle_error_max"] = r["cycle_error"]["max"]
            mergers[m] = stats
        summary.append({"size": entry["size"], "subsets": 1, "endpoint_mean": entry["endpoint_mean"], "mergers": mergers})
    model = {"in_channels": 1, "image_size": 28, "num_classes": 10, "width": [8, 4]}
    if arch == "resnet":
        model.update(blocks_per_stage=1, norm="layer", stem_kernel=4, stem_stride=4)
    model["parameters"] = 6418
    return {
        "dataset": dataset, "arch": arch, "model": model, "groups": {"P_0": 8, "P_1": 4}, "num_models": num_models,
        "seed": 0, "repair": repair is not None, "repair_samples": 64 if repair is not None else 0,
        "normalisation": {"mean": 0.13, "std": 0.3}, "train": {"epochs": 1, "batch_size": 64, "lr": 0.001,
                                                                "weight_decay": 0.0},
        "train_images": 256, "test_images": 128, "train_seconds": 1.5, "train_final_loss": [0.5] * num_models,
        "endpoints": [{"accuracy": 90.0, "loss": 0.3}] * num_models, "subsets": subsets, "summary": summary,
        "path": {"lambdas": [0.0, 0.5, 1.0],
                 "naive": {"loss": [0.3, 2.3, 0.3], "accuracy": [90.0, 10.0, 90.0], "loss_barrier": 2.0},
                 "c2m3": {"loss": [0.3, 0.8, 0.3], "accuracy": [90.0, 70.0, 90.0], "loss_barrier": 0.5}},
        "seconds": 4.0,
    }


GOOD = {2: {"naive": 30.0, "pairwise": 70.0, "mergemany": 70.0, "c2m3": 72.0},
        3: {"naive": 10.0, "pairwise": 50.0, "mergemany": 60.0, "c2m3": 65.0},
        5: {"naive": 10.0, "pairwise": 40.0, "mergemany": 50.0, "c2m3": 55.0}}


def write_run(folder: Path, data: dict, name: str | None = None) -> Path:
    path = folder / "align" / f"{name or data['dataset'] + '-' + data['arch']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def test_a_hand_made_file_validates_and_writes_back_byte_identical(tmp_path: Path) -> None:
    repair = {n: {m: a + 5 for m, a in row.items()} for n, row in GOOD.items()}
    path = write_run(tmp_path, make_run("mnist", "resnet", GOOD, repair))
    record = AlignMetrics.read(path)
    assert record.summary[2].mergers["c2m3"].repair.accuracy == 60.0
    record.write(tmp_path / "out.json")
    assert (tmp_path / "out.json").read_bytes() == path.read_bytes()
    assert AlignMetrics in family_metrics_files()


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda d: d["subsets"][0]["mergers"]["c2m3"].update(accuracy=101.0), "'subsets[0].mergers.c2m3.accuracy'"),
        (lambda d: d.update(num_models=1), "'num_models'"),
        (lambda d: d["endpoints"].pop(), "'endpoints' has 4 entries for num_models = 5"),
        (lambda d: d["subsets"][1].update(models=[0, 0, 1]), "'subsets[1].models' must be 3 distinct"),
        (lambda d: d["subsets"][1]["mergers"]["pairwise"].pop("cycle_error"),
         "'subsets[1].mergers.pairwise.cycle_error' is due exactly"),
        (lambda d: d["subsets"][0]["mergers"]["naive"].update(repair={"accuracy": 1.0, "loss": 1.0, "seconds": 0.0}),
         "'subsets[0].mergers.naive.repair' is due exactly when 'repair' is true"),
        (lambda d: d["summary"].pop(), "'summary' must hold one entry per subset size [2, 3, 5]"),
        (lambda d: d["path"]["c2m3"]["loss"].pop(), "'path.c2m3' needs one loss and one accuracy per lambda"),
        (lambda d: d.update(arch="vit"), "'arch'"),
        (lambda d: d["subsets"][0]["mergers"].update(zipit=d["subsets"][0]["mergers"]["naive"]),
         "names unregistered merger(s) ['zipit']"),
        (lambda d: d.update(extra=1), "unknown key(s) ['extra']"),
    ],
)
def test_a_bad_file_names_the_file_and_the_key(tmp_path: Path, edit, expected: str) -> None:
    data = make_run("mnist", "mlp", GOOD)
    edit(data)
    path = write_run(tmp_path, data)
    with pytest.raises(MetricsFileError) as error:
        AlignMetrics.read(path)
    assert str(path) in str(error.value) and expected in str(error.value), str(error.value)


def test_the_contract_documents_the_file_as_generated() -> None:
    docs = (ROOT / "docs" / "contracts.md").read_text()
    assert family_contract_markdown() in docs, "regenerate: weaving.metrics.family_contract_markdown()"
    assert "### `AlignMetrics`: `metrics/align/<dataset>-<arch>.json`" in docs


# --- the report section --------------------------------------------------------------------------------------------

def build(tmp_path: Path, *runs: dict):
    from weaving.report.align import section

    for data in runs:
        write_run(tmp_path, data)
    return section(tmp_path, ["tiny-clip"])


def claims(result) -> dict:
    return {c.id: c for c in result.claims}


def test_section_tables_figures_and_claims(tmp_path: Path) -> None:
    repair = {n: {m: a + 5 for m, a in row.items()} for n, row in GOOD.items()}
    result = build(tmp_path, make_run("mnist", "mlp", GOOD), make_run("mnist", "resnet", GOOD, repair))
    tables = {t.name: t for t in result.tables}
    assert {"align_mnist-mlp", "align_mnist-resnet", "align_cycle_errors", "align_barrier", "align_cost"} <= set(tables)
    mlp = tables["align_mnist-mlp"]
    assert mlp.keys == ["row", "accuracy_n2", "accuracy_n3", "accuracy_n5", "loss_n2", "loss_n3", "loss_n5"]
    assert [r[0].key for r in mlp.rows] == ["endpoints", *MERGERS]
    assert mlp.rows[4][1:4] == [72.0, 65.0, 55.0]  # C2M3's accuracy per N
    assert mlp.rows[1][4] == pytest.approx(2.5 - 30.0 / 50)  # naive's loss at N = 2
    assert (4, 1) in mlp.bold and (1, 1) not in mlp.bold
    resnet = tables["align_mnist-resnet"]
    assert [r[0].key for r in resnet.rows][-4:] == [f"{m}_repair" for m in MERGERS]
    assert resnet.rows[-1][1:4] == [77.0, 70.0, 60.0]
    cycle = tables["align_cycle_errors"]
    assert len(cycle.rows) == 2 * 2 * 3  # runs x sizes >= 3 x mergers other than naive
    assert {r[3] for r in cycle.rows if r[2].key == "pairwise"} == {20.0}
    barrier = tables["align_barrier"]
    assert barrier.rows[0][1:] == [2.0, 0.5, 10.0, 70.0]
    assert set(result.figures) == {"align_accuracy_vs_n.png", "align_barrier.png"}
    assert all(png.startswith(b"\x89PNG") for png in result.figures.values())
    found = claims(result)
    assert [c.id for c in result.claims] == ["c2m3_order", "c2m3_cycle", "c2m3_repair"]
    assert found["c2m3_order"].verdict == HOLDS and found["c2m3_order"].numbers["total"] == 4
    assert found["c2m3_cycle"].numbers == {"c2m3": 0.0, "mergemany": 0.0, "pairwise": 20.0}
    assert found["c2m3_cycle"].verdict == HOLDS
    assert found["c2m3_repair"].verdict == HOLDS and found["c2m3_repair"].numbers["raised"] == 12


def _with(size: int, **accuracies: float) -> dict:
    table = copy.deepcopy(GOOD)
    table[size].update(accuracies)
    return table


@pytest.mark.parametrize(
    "tables, verdict",
    [
        ([GOOD], HOLDS),
        ([_with(3, c2m3=60.0)], HOLDS),  # a tie with MergeMany holds (>=)
        ([_with(3, c2m3=59.8)], MIXED),  # C2M3 below MergeMany in one of two cases
        ([_with(5, mergemany=10.0)], MIXED),  # MergeMany not above naive in one case
        ([_with(2, c2m3=0.0)], HOLDS),  # N = 2 is not judged
        ([GOOD, _with(5, c2m3=49.0)], MIXED),  # one of four fails
        ([_with(3, c2m3=50.0) | {5: GOOD[5] | {"c2m3": 40.0}}], FAILS),
    ],
)
def test_order_rule(tmp_path: Path, tables: list[dict], verdict: str) -> None:
    runs = [make_run(dataset, "mlp", table) for dataset, table in zip(["mnist", "fashion_mnist"], tables)]
    claim = claims(build(tmp_path, *runs))["c2m3_order"]
    assert claim.verdict == verdict, claim.evidence
    failing = [c for c in claim.numbers["cases"] if not c["holds"]]
    assert claim.numbers["held"] == claim.numbers["total"] - len(failing)
    for case in failing:
        assert f"{case['run']} N = {case['size']}: C2M3 {case['c2m3']:.1f}" in claim.evidence


def test_order_after_repair_is_reported_but_not_judged(tmp_path: Path) -> None:
    repair = {n: {"naive": 20.0, "pairwise": 30.0, "mergemany": 60.0, "c2m3": 40.0} for n in GOOD}
    claim = claims(build(tmp_path, make_run("mnist", "resnet", GOOD, repair)))["c2m3_order"]
    assert claim.verdict == HOLDS
    assert [c["holds"] for c in claim.numbers["repair_cases"]] == [False, False]
    assert "after REPAIR 0 of 2 hold" in claim.evidence


@pytest.mark.parametrize(
    "cycles, verdict",
    [
        ({"c2m3": 0.0, "pairwise": 20.0}, HOLDS),
        ({"c2m3": 1.4, "pairwise": 20.0}, FAILS),
        ({"c2m3": 0.0, "pairwise": 0.0}, MIXED),
    ],
)
def test_cycle_rule(tmp_path: Path, cycles: dict, verdict: str) -> None:
    claim = claims(build(tmp_path, make_run("mnist", "mlp", GOOD, cycles=cycles)))["c2m3_cycle"]
    assert claim.verdict == verdict
    assert claim.numbers["c2m3"] == cycles["c2m3"] and claim.numbers["pairwise"] == cycles["pairwise"]
    assert set(claim.numbers) == {"c2m3", "mergemany", "pairwise"}


@pytest.mark.parametrize(
    "delta, verdict",
    [
        ({"naive": 1.0, "pairwise": 1.0, "mergemany": 1.0, "c2m3": 1.0}, HOLDS),
        ({"naive": 1.0, "pairwise": 1.0, "mergemany": -1.0, "c2m3": 0.0}, MIXED),  # 6 of 12 raised
        ({"naive": -1.0, "pairwise": 0.0, "mergemany": 0.0, "c2m3": 2.0}, FAILS),  # 3 of 12 raised
    ],
)
def test_repair_rule(tmp_path: Path, delta: dict, verdict: str) -> None:
    repair = {n: {m: a + delta[m] for m, a in row.items()} for n, row in GOOD.items()}
    claim = claims(build(tmp_path, make_run("mnist", "resnet", GOOD, repair)))["c2m3_repair"]
    assert claim.verdict == verdict
    raised = sum(1 for d in delta.values() if d > 0) * len(GOOD)
    assert claim.numbers["raised"] == raised and claim.numbers["merges"] == 4 * len(GOOD)


def test_without_runs_the_claims_are_not_testable(tmp_path: Path) -> None:
    result = build(tmp_path)
    assert [c.verdict for c in result.claims] == [UNTESTABLE] * 3
    assert not result.tables and not result.figures and "did not run" in result.text[0]
    only_mlp = build(tmp_path, make_run("mnist", "mlp", {2: GOOD[2]}))
    assert [c.verdict for c in only_mlp.claims] == [UNTESTABLE] * 3  # N = 2 only, no ResNet


def test_the_section_is_registered_and_a_misnamed_or_bad_file_stops_it(tmp_path: Path) -> None:
    from weaving.report.sections import SECTIONS, load_sections

    assert SECTIONS["align"] == "align"
    write_run(tmp_path, make_run("mnist", "mlp", GOOD), name="fashion_mnist-mlp")
    with pytest.raises(MetricsFileError, match=r"fashion_mnist-mlp\.json: .*must be mnist-mlp\.json"):
        load_sections(["align"], tmp_path, ["tiny-clip"])
    (tmp_path / "align" / "fashion_mnist-mlp.json").write_text("{}")
    with pytest.raises(MetricsFileError, match="missing key"):
        load_sections(["align"], tmp_path, ["tiny-clip"])


# --- the align stage's inputs --------------------------------------------------------------------------------------

def test_the_align_stage_refuses_models_trained_with_other_params(tmp_path: Path, monkeypatch) -> None:
    from weaving.errors import InputError

    stage = load_stage("align", monkeypatch)
    params = load_params(ROOT / "profiles/smoke.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"models/align/mnist-mlp/train\.json: missing; run the align_train stage"):
        stage.load_trained(params, "mnist", "mlp")
    manifest = tmp_path / "models/align/mnist-mlp/train.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"dataset": "mnist", "arch": "mlp", "num_models": 5, "seed": 0}))
    with pytest.raises(InputError, match=r"train\.json: num_models = 5 differ from params \(num_models = 3\)"):
        stage.load_trained(params, "mnist", "mlp")
