"""The metrics models (`weaving.metrics`) against hand-written JSON and the committed metrics files.

Valid and invalid documents are written out by hand here; the committed run under `metrics/`
must read back and write out byte for byte, also when rebuilt the way each stage builds it.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
from stage_loader import load_stage

from weaving.errors import InputError
from weaving.metrics import (
    METRICS_FILES,
    ContinualReference,
    FinetuneMetrics,
    MetricsFileError,
    PretrainMetrics,
    ReferenceMetrics,
    SequentialMetrics,
    SequentialSplit,
    SimilarityMatrix,
    SimilarityMetrics,
    WeaveMetrics,
    ZeroshotMetrics,
    contract_markdown,
)
from weaving.metrics_align import AlignMetrics
from weaving.metrics_search import Merge3Metrics  # MERGE3
from weaving.metrics_tsv import CompressMetrics, MassMetrics

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "metrics"
COMMITTED_FILES = sorted(COMMITTED.rglob("*.json"))
FAMILY_FILES: dict[str, dict[str, type]] = {
    "tsv": {"compress.json": CompressMetrics, "mass.json": MassMetrics},
    "search": {"merge3.json": Merge3Metrics},  # MERGE3
}
"""The algorithm families' files, `metrics/<model>/<family>/<file>`, and their models (weaving.metrics_<family>)."""
RUN_FAMILY_FILES: dict[str, type] = {"align": AlignMetrics}
"""The families whose files are not per CLIP model, `metrics/<family>/<run>.json`, and their models."""


def model_for(relative: Path) -> type:
    """The model of a file under `metrics/<model>/`, from the layout of docs/contracts.md."""
    top = {"reference.json": ReferenceMetrics, "similarity.json": SimilarityMetrics,
           "zeroshot.json": ZeroshotMetrics, "pretrain.json": PretrainMetrics}
    folders = {"finetune": FinetuneMetrics, "sequential": SequentialMetrics, "weave": WeaveMetrics}
    if relative.parts[0] in RUN_FAMILY_FILES:
        return RUN_FAMILY_FILES[relative.parts[0]]
    parts = relative.parts[1:]  # drop <model>
    if parts[0].startswith("seed") and parts[0][4:].isdigit():  # a replicate's folder, seed<seed>
        parts = parts[1:]
    if parts[0] in FAMILY_FILES:
        return FAMILY_FILES[parts[0]][parts[-1]]
    return top[parts[0]] if len(parts) == 1 else folders[parts[0]]


def as_written(data) -> bytes:
    """What the pipeline's `write_json` writes, computed independently of it."""
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")


# --- the committed run ---------------------------------------------------------------------------------------------

def test_the_committed_run_has_every_kind_of_file() -> None:
    kinds = {model_for(p.relative_to(COMMITTED)) for p in COMMITTED_FILES}
    family_kinds = {model for files in FAMILY_FILES.values() for model in files.values()} | set(RUN_FAMILY_FILES.values())
    assert set(METRICS_FILES) <= kinds <= set(METRICS_FILES) | family_kinds


@pytest.mark.parametrize("path", COMMITTED_FILES, ids=[str(p.relative_to(COMMITTED)) for p in COMMITTED_FILES])
def test_committed_file_reads_and_writes_back_byte_identical(path: Path, tmp_path: Path) -> None:
    record = model_for(path.relative_to(COMMITTED)).read(path)
    record.write(tmp_path / "out.json")
    assert (tmp_path / "out.json").read_bytes() == path.read_bytes()


def _committed(*parts: str) -> dict:
    return json.loads((COMMITTED / "tiny-clip" / Path(*parts)).read_text())


def test_weave_records_rebuilt_as_the_weave_stage_builds_them_are_byte_identical(tmp_path: Path) -> None:
    for path in sorted((COMMITTED / "tiny-clip").glob("seed*/weave/**/*.json")):
        raw = json.loads(path.read_text())
        # the stage: header from params, the rest from evaluate_method's result dict
        result = {k: raw[k] for k in ("tasks", "baseline", "recommended", "sweep", "weaving", "intervals", "extensions")
                  if k in raw}
        record = WeaveMetrics(model=raw["model"], setup=raw["setup"], method=raw["method"], hparams=raw["hparams"],
                              lambdas=raw["lambdas"], recommended_lam=raw["recommended_lam"], baseline_lam=1.0,
                              **result)
        record.write(tmp_path / "w.json")
        assert (tmp_path / "w.json").read_bytes() == path.read_bytes(), path


def test_the_other_files_rebuilt_as_their_stages_build_them_are_byte_identical(tmp_path: Path) -> None:
    def same(record, *parts: str) -> None:
        record.write(tmp_path / "x.json")
        assert (tmp_path / "x.json").read_bytes() == (COMMITTED / "tiny-clip" / Path(*parts)).read_bytes(), parts

    raw = _committed("pretrain.json")
    same(PretrainMetrics(source="pipeline", arch=raw["arch"], **{k: raw[k] for k in PretrainMetrics.TRAINING_KEYS}),
         "pretrain.json")
    same(ZeroshotMetrics(_committed("zeroshot.json")), "zeroshot.json")
    for path in sorted((COMMITTED / "tiny-clip").glob("seed*/finetune/*.json")):
        raw = json.loads(path.read_text())
        same(FinetuneMetrics(task=raw["task"], accuracy=raw["accuracy"], train_images=raw["train_images"],
                             seconds=raw["seconds"]), path.parent.parent.name, "finetune", path.name)
    for path in sorted((COMMITTED / "tiny-clip").glob("seed*/sequential/*.json")):
        raw = json.loads(path.read_text())
        history = [SequentialSplit(split=s["split"], classes=s["classes"], accuracy_split=s["accuracy_split"],
                                   accuracy_all=s["accuracy_all"]) for s in raw["splits"]]
        same(SequentialMetrics(benchmark=raw["benchmark"], dataset=raw["dataset"], splits=history,
                               final_accuracy=history[-1].accuracy_all), path.parent.parent.name, "sequential",
             path.name)
    for path in sorted((COMMITTED / "tiny-clip").glob("seed*/similarity.json")):
        raw = json.loads(path.read_text())
        same(SimilarityMetrics(individual=SimilarityMatrix(**raw["individual"]),
                               sequential={b: SimilarityMatrix(**m) for b, m in raw["sequential"].items()}),
             path.parent.name, "similarity.json")


def test_the_taskvectors_stage_rebuilds_the_committed_reference_file(tmp_path: Path, monkeypatch) -> None:
    """The stage's own code reads zeroshot/finetune/sequential through the models and writes reference.json;
    the task vectors are stand-ins (similarity.json then differs, but must still be a valid file)."""
    import torch

    from weaving_pipeline.params import load_params

    torch.set_num_threads(1)
    stage = load_stage("taskvectors", monkeypatch)
    params = load_params(ROOT / "params.yaml")
    generator = torch.Generator().manual_seed(0)

    def fake_task_vectors(params, model_name, setup, seed):
        if setup == "mtl":
            return {}, {t: {"w": torch.randn(4, generator=generator)} for t in params.suite.mtl}, {}
        names = {b: [f"{b}/split_{i}" for i in range(params.cl_benchmarks[b].splits)] for b in params.suite.cl}
        return {}, {n: {"w": torch.randn(4, generator=generator)} for ns in names.values() for n in ns}, names

    monkeypatch.setattr(stage, "pipeline_task_vectors", fake_task_vectors)
    shutil.copytree(COMMITTED, tmp_path / "metrics")
    (tmp_path / "metrics" / "tiny-clip" / "seed0" / "reference.json").unlink()
    monkeypatch.chdir(tmp_path)
    stage.task_vector_metrics(params, "tiny-clip", 0)
    written = tmp_path / "metrics" / "tiny-clip" / "seed0" / "reference.json"
    assert written.read_bytes() == (COMMITTED / "tiny-clip" / "seed0" / "reference.json").read_bytes()
    similarity = SimilarityMetrics.read(tmp_path / "metrics" / "tiny-clip" / "seed0" / "similarity.json")
    assert similarity.individual.labels == list(params.suite.mtl)
    assert all(m.matrix[i][i] == 1.0 for m in (similarity.individual, *similarity.sequential.values())
               for i in range(len(m.labels)))


# --- hand-written documents ----------------------------------------------------------------------------------------

WEAVE = {
    "model": "tiny-clip", "setup": "dg", "method": "ties", "hparams": {"density": 0.2, "k": 3, "flag": True},
    "lambdas": [0.5, 1.0, 1.5], "recommended_lam": 1.0, "baseline_lam": 1.0,
    "tasks": ["mnist", "svhn"],
    "baseline": {"mnist": 50.0, "svhn": 0},
    "recommended": {"mnist": 50.0, "svhn": 100},
    "sweep": {"mnist": [40.0, 50.0, 45.0], "svhn": [10.0, 20.0, 20.0]},
    "weaving": {"avg": {"all": {"mnist": 55.5, "svhn": 21.0}}},
}


def weave(**changes) -> dict:
    data = copy.deepcopy(WEAVE)
    data.update(changes)
    return data


def problems_of(model: type, data) -> list[str]:
    with pytest.raises(MetricsFileError) as error:
        model.from_data(data, "hand.json")
    assert all(line.startswith("hand.json: ") for line in str(error.value).splitlines())
    return error.value.problems


def test_a_valid_weave_record_and_what_it_derives() -> None:
    record = WeaveMetrics.from_data(WEAVE, "hand.json")
    assert record.hparams == {"density": 0.2, "k": 3, "flag": True}
    assert type(record.hparams["k"]) is int and type(record.hparams["flag"]) is bool
    assert record.baseline == {"mnist": 50.0, "svhn": 0.0} and type(record.baseline["svhn"]) is float
    assert record.baseline_avg == 25.0
    assert record.sweep_avg() == [25.0, 35.0, 32.5]
    assert record.best_lambda_per_task() == {"mnist": 1.0, "svhn": 1.0}  # svhn ties at 1.0 and 1.5: the first
    assert record.oracle_per_task() == {"mnist": 50.0, "svhn": 20.0}
    assert record.oracle_single() == (1.0, 35.0)
    assert record.weaving_avg("avg", "all") == 38.25


def test_an_integer_accuracy_is_read_as_a_float_and_written_as_one(tmp_path: Path) -> None:
    WeaveMetrics.from_data(WEAVE, "hand.json").write(tmp_path / "w.json")
    written = json.loads((tmp_path / "w.json").read_text())
    assert written["baseline"] == {"mnist": 50.0, "svhn": 0.0}
    assert '"svhn": 0.0' in (tmp_path / "w.json").read_text()
    assert list(written) == list(WEAVE)


def test_the_docs_example_is_a_valid_weave_record() -> None:
    docs = (ROOT / "docs" / "contracts.md").read_text()
    example = re.search(r"## Metrics.*?```json\n(.*?)```", docs, flags=re.S).group(1)
    record = WeaveMetrics.from_data(json.loads(example), "docs/contracts.md")
    assert record.tasks == ["mnist", "fashion_mnist"]


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda d: d.pop("weaving"), ["missing key(s) ['weaving']"]),
    (lambda d: (d.pop("tasks"), d.pop("sweep")), ["missing key(s) ['tasks', 'sweep']"]),
    (lambda d: d.update(note="x"), ["unknown key(s) ['note'] (allowed: ['model', 'setup', 'method', 'hparams', "
                                    "'lambdas', 'recommended_lam', 'baseline_lam', 'tasks', 'baseline', "
                                    "'recommended', 'sweep', 'weaving', 'intervals', 'extensions'])"]),
    (lambda d: d["baseline"].update(mnist=100.5), ["'baseline' has non-accuracy value(s) (need a finite number in "
                                                   "[0, 100]) for ['mnist']"]),
    (lambda d: d["baseline"].update(mnist=float("nan"), svhn=-1.0), ["'baseline' has non-accuracy value(s) (need a "
                                                                     "finite number in [0, 100]) for ['mnist', 'svhn']"]),
    (lambda d: d["recommended"].update(mnist="50"), ["'recommended' has non-accuracy value(s) (need a finite number "
                                                     "in [0, 100]) for ['mnist']"]),
    (lambda d: d["recommended"].update(mnist=True), ["'recommended' has non-accuracy value(s) (need a finite number "
                                                     "in [0, 100]) for ['mnist']"]),
    (lambda d: d["sweep"]["svhn"].__setitem__(1, float("inf")), ["'sweep.svhn' has non-accuracy value(s) (need a "
                                                                 "finite number in [0, 100]) at position(s) [1]"]),
    (lambda d: d["baseline"].pop("svhn"), ["'baseline' lacks task(s) ['svhn'] (tasks: ['mnist', 'svhn'])"]),
    (lambda d: d["recommended"].update(cifar=1.0), ["'recommended' has task(s) ['cifar'] not in 'tasks' "
                                                    "(['mnist', 'svhn'])"]),
    (lambda d: d["sweep"]["mnist"].pop(), ["'sweep'['mnist'] must list 3 accuracies in [0, 100] (one per lam in "
                                           "'lambdas'), got 2"]),
    (lambda d: d["weaving"]["avg"]["all"].pop("mnist"), ["'weaving.avg.all' lacks task(s) ['mnist'] "
                                                         "(tasks: ['mnist', 'svhn'])"]),
    (lambda d: d["weaving"].update(median={}), ["'weaving' names unregistered pooling(s) ['median']; registered: "
                                                "avg, magmax, random"]),
    (lambda d: d["weaving"]["avg"].update(some={}), ["'weaving.avg' names unregistered pool_over(s) ['some']; "
                                                     "registered: all, augmented"]),
    (lambda d: d.update(method="nope"), ["'method' names unregistered method(s) ['nope']; registered: breadcrumbs, "
                                         "dare, iso_c, magmax, pcb, task_arithmetic, ties, tsv"]),
    (lambda d: d.update(tasks=["mnist", "svhn", "mnist"]), ["'tasks' repeats ['mnist']: the names must be distinct"]),
    (lambda d: d.update(lambdas=[]), ["'lambdas': list should have at least 1 item after validation, not 0, got []"]),
    (lambda d: d.update(lambdas=[0.5, "1", 1.5]), ["'lambdas[1]': input should be a valid number, got '1'"]),
    (lambda d: d.update(baseline_lam=float("nan")), ["'baseline_lam': input should be a finite number, got nan"]),
    (lambda d: d.update(model=""), ["'model': string should have at least 1 character, got ''"]),
    (lambda d: d["hparams"].update(density="0.2"), ["'hparams.density' must be a number or true/false, got '0.2'"]),
])
def test_an_invalid_weave_record_is_named_by_key(edit, expected) -> None:
    data = weave()
    edit(data)
    assert problems_of(WeaveMetrics, data) == expected


def test_every_problem_of_a_file_is_reported() -> None:
    data = weave(model=3, lambdas="0.5:1.5:0.5")
    data["baseline"]["mnist"] = 101
    data.pop("recommended")
    problems = problems_of(WeaveMetrics, data)
    assert len(problems) == 4
    assert "missing key(s) ['recommended']" in problems
    assert "'model': input should be a valid string, got 3" in problems
    assert "'lambdas': input should be a valid list, got '0.5:1.5:0.5'" in problems


def test_reference_file() -> None:
    valid = {"model": "m", "zeroshot": {"mnist": 10.0}, "finetuned": {},
             "cl": {"mnist-s2": {"zeroshot": 10.0, "sequential_final": 55.5}}}
    record = ReferenceMetrics.from_data(valid, "r.json")
    assert record.cl["mnist-s2"] == ContinualReference(zeroshot=10.0, sequential_final=55.5)
    broken = copy.deepcopy(valid)
    broken["cl"]["mnist-s2"].pop("sequential_final")
    broken["cl"]["mnist-s2"]["zeroshot"] = 200
    assert problems_of(ReferenceMetrics, broken) == [
        "'cl.mnist-s2.zeroshot' must be a finite number in [0, 100], got 200",
        "'cl.mnist-s2' lacks key(s) ['sequential_final']",
    ]


def test_similarity_file() -> None:
    matrix = {"labels": ["a", "b"], "matrix": [[1.0, -0.25], [-0.25, 1.0]]}
    assert SimilarityMetrics.from_data({"individual": matrix, "sequential": {}}, "s.json").individual.matrix[0][1] == -0.25
    assert problems_of(SimilarityMetrics, {"individual": matrix, "sequential": {"b": {"labels": ["x", "y"],
                                                                                      "matrix": [[1.0, 0.5]]}}}) == [
        "'sequential.b.matrix' must be a 2x2 list of numbers, one row and one column per label in 'labels', "
        "got 1 row(s) of length(s) [2]"]
    assert problems_of(SimilarityMetrics, {"individual": {"labels": ["a", "a"], "matrix": [[1.0, 1.5], [0, 1]]},
                                           "sequential": {}}) == [
        "'individual.matrix[0][1]': input should be less than or equal to 1, got 1.5"]
    assert problems_of(SimilarityMetrics, {"individual": {"labels": ["a", "a"], "matrix": [[1.0, 1.0], [1.0, 1.0]]},
                                           "sequential": {}}) == [
        "'individual.labels' repeats ['a']: the names must be distinct"]
    assert problems_of(SimilarityMetrics, {"individual": {"labels": []}}) == [
        "'individual.labels': list should have at least 1 item after validation, not 0, got []",
        "'individual' lacks key(s) ['matrix']", "missing key(s) ['sequential']"]


def test_sequential_file() -> None:
    valid = {"benchmark": "mnist-s2", "dataset": "mnist",
             "splits": [{"split": 0, "classes": [3, 1], "accuracy_split": 90.0, "accuracy_all": 45.0},
                        {"split": 1, "classes": [0, 2], "accuracy_split": 80.0, "accuracy_all": 60.0}],
             "final_accuracy": 60.0}
    assert SequentialMetrics.from_data(valid, "q.json").splits[1].classes == [0, 2]
    broken = copy.deepcopy(valid)
    broken["splits"][1].update(split=2, classes=[1, 2])
    broken["final_accuracy"] = 45.0
    assert problems_of(SequentialMetrics, broken) == [
        "'splits[1].split' must be 1 (the splits in order), got 2",
        "'splits[1].classes' repeats class(es) [1]: each class belongs to one split",
        "'final_accuracy' is 45.0 but the last split's 'accuracy_all' is 60.0",
    ]
    assert problems_of(SequentialMetrics, {**valid, "splits": []}) == [
        "'splits': list should have at least 1 item after validation, not 0, got []"]
    assert problems_of(SequentialMetrics, {**valid, "splits": [{**valid["splits"][0], "classes": [1.0]}]}) == [
        "'splits[0].classes[0]': input should be a valid integer, got 1.0"]


def test_finetune_zeroshot_and_pretrain_files() -> None:
    assert FinetuneMetrics.from_data({"task": "t", "accuracy": 12, "train_images": 5, "seconds": 0.5}, "f").accuracy == 12.0
    assert problems_of(FinetuneMetrics, {"task": "t", "accuracy": 12.0, "train_images": -1, "seconds": 1.0}) == [
        "'train_images': input should be greater than or equal to 0, got -1"]
    assert ZeroshotMetrics.from_data({"a": 1.5, "b": 0}, "z").root == {"a": 1.5, "b": 0.0}
    assert problems_of(ZeroshotMetrics, {"a": 1.5, "b": None}) == ["'b' must be a finite number in [0, 100], got None"]
    openai = PretrainMetrics.from_data({"source": "openai", "arch": "ViT-B-32"}, "p")
    assert openai.to_json_data() == {"source": "openai", "arch": "ViT-B-32"}
    assert problems_of(PretrainMetrics, {"source": "openai", "arch": "ViT-B-32", "steps": 3}) == [
        "key(s) ['steps'] belong to source 'pipeline', not 'openai'"]
    assert problems_of(PretrainMetrics, {"source": "pipeline", "arch": "x", "losses": [2.0], "steps": 1}) == [
        "missing key(s) ['seconds', 'resumed_from', 'images', 'datasets'] (source 'pipeline' logs its training)"]
    assert problems_of(PretrainMetrics, {"source": "scratch", "arch": "x"}) == [
        "'source': input should be 'pipeline' or 'openai', got 'scratch'"]


# --- files -------------------------------------------------------------------------------------------------------

def test_write_is_indented_json_in_field_order(tmp_path: Path) -> None:
    record = FinetuneMetrics(seconds=1.5, train_images=10, accuracy=99.25, task="mnist")
    target = tmp_path / "deep" / "finetune" / "mnist.json"
    record.write(target)
    assert target.read_bytes() == as_written({"task": "mnist", "accuracy": 99.25, "train_images": 10, "seconds": 1.5})
    assert [p.name for p in target.parent.iterdir()] == ["mnist.json"]  # no temporary file left


def test_read_names_a_missing_unparsable_or_non_object_file(tmp_path: Path) -> None:
    with pytest.raises(MetricsFileError, match=r"zeroshot\.json: file is missing") as error:
        ZeroshotMetrics.read(tmp_path / "zeroshot.json")
    assert isinstance(error.value, InputError)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MetricsFileError, match=r"bad\.json: not valid JSON \("):
        FinetuneMetrics.read(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(MetricsFileError, match=r"list\.json: top level must be a JSON object, got list"):
        ZeroshotMetrics.read(tmp_path / "list.json")


def test_models_are_frozen() -> None:
    record = FinetuneMetrics(task="t", accuracy=1.0, train_images=1, seconds=0.0)
    with pytest.raises(ValueError, match="frozen"):
        record.accuracy = 2.0


def test_docs_state_the_models_as_generated() -> None:
    docs = (ROOT / "docs" / "contracts.md").read_text()
    assert contract_markdown() in docs, "regenerate the Metrics section: weaving.metrics.contract_markdown()"
    for model in METRICS_FILES:
        assert f"### `{model.__name__}`: `{model.layout}`" in docs


def test_docs_state_the_families_models_as_generated() -> None:
    """Every family's metrics file model is registered and documented (TSV, C2M3, MERGE3)."""
    from weaving.metrics import FAMILY_METRICS_FILES, family_contract_markdown, family_metrics_files

    assert set(FAMILY_METRICS_FILES) == {"weaving.metrics_tsv", "weaving.metrics_align", "weaving.metrics_search"}
    docs = (ROOT / "docs" / "contracts.md").read_text()
    assert family_contract_markdown() in docs, "regenerate: weaving.metrics.family_contract_markdown()"
    for model in family_metrics_files():
        assert f"### `{model.__name__}`: `{model.layout}`" in docs


def test_the_weave_stage_writes_a_valid_record_through_the_model(tmp_path: Path, monkeypatch) -> None:
    """The weave stage's own code on stand-ins for the CLIP side (random task vectors, an `evaluate`
    that scores a merged encoder by its mean): the file it writes reads back through the model,
    with every task, lam, pooling and pool_over of the params, and the numbers it was given."""
    import torch

    import weaving.clip
    import weaving.io
    from weaving_pipeline.params import load_params

    torch.set_num_threads(1)
    stage = load_stage("weave", monkeypatch)
    params = load_params(ROOT / "params.yaml")
    generator = torch.Generator().manual_seed(0)
    pretrained = {"w": torch.zeros(8)}
    taus = {t: {"w": torch.rand(8, generator=generator) - 0.5} for t in params.suite.mtl}
    scores: list[float] = []

    def correctness(model, visual, head, cache, batch_size):
        """1000 images, a share of them right that encodes the merged encoder's mean."""
        right = torch.zeros(1000, dtype=torch.bool)
        right[: round(float(torch.sigmoid(visual["w"].mean())) * 1000)] = True
        scores.append(100.0 * float(right.double().mean()))
        return right

    monkeypatch.setattr(stage, "pipeline_task_vectors", lambda p, m, s, seed: (pretrained, taus, {}))
    monkeypatch.setattr(stage, "save_weights", lambda *args, **kwargs: None)
    monkeypatch.setattr(weaving.clip, "load_pretrained", lambda *args, **kwargs: None)
    monkeypatch.setattr(weaving.clip, "correctness", correctness)
    monkeypatch.setattr(weaving.io, "load_state_dict", lambda path: {"weight": torch.zeros(1)})
    monkeypatch.setattr(weaving.io, "sha256_file", lambda path: "0" * 64)
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: {})
    monkeypatch.chdir(tmp_path)
    returned = stage.weave_setup(stage.EvaluationInputs(params, "tiny-clip", 0), "dg", "ties")

    record = WeaveMetrics.read(tmp_path / "metrics" / "tiny-clip" / "seed0" / "weave" / "ties" / "dg.json")
    assert record == returned
    assert record.tasks == list(params.suite.mtl)
    assert record.lambdas == params.search_space("ties", "dg")
    assert record.hparams == dict(params.method_params["ties"].hparams)
    assert list(record.weaving) == list(params.weave.poolings)
    assert all(list(by_over) == list(params.weave.pool_over) for by_over in record.weaving.values())
    evaluated = {v for per_task in (record.baseline, *[dict(enumerate(s)) for s in record.sweep.values()])
                 for v in per_task.values()}
    assert evaluated <= set(scores)
    intervals = record.intervals
    assert intervals is not None and intervals.resamples == params.weave.bootstrap.resamples
    assert intervals.baseline.estimate == pytest.approx(record.baseline_avg)
    woven = intervals.weaving["avg"]["all"]
    assert woven.estimate == pytest.approx(record.weaving_avg("avg", "all"))
    assert intervals.gain["avg"]["all"].estimate == pytest.approx(woven.estimate - intervals.baseline.estimate)
    assert intervals.baseline.low <= intervals.baseline.estimate <= intervals.baseline.high
