"""End to end: the smoke profile through `dvc repro` in a fresh git repository.

One module-scoped run (a few minutes, marked slow) is shared by the checks: the outputs
exist and hold sane numbers, a no-op repro recomputes nothing, changing the TIES search
space invalidates only the TIES weave stages and the report, and a misspelled `-S` key
stops `dvc exp run` before any work.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from project_copy import copy_project

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(cwd / "src")}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A fresh git repository holding the tracked project files, with the smoke profile as params.yaml."""
    repo = copy_project(tmp_path_factory.mktemp("pipeline"), "smoke")
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"],
                ["git", "config", "user.name", "ci"], ["git", "add", "-A"], ["git", "commit", "-qm", "smoke"]):
        run(cmd, repo)
    run(["dvc", "repro"], repo)
    return repo


def stages_to_run(repo: Path) -> set[str]:
    status = run(["dvc", "status", "--json"], repo).stdout
    return set(json.loads(status or "{}"))


def newly_stale(repo: Path, *edits) -> tuple[set[str], list[set[str]]]:
    """The stages `dvc status` lists before any edit (an earlier test may leave some stale: a forced rerun
    rewrites a timing), and for each edit of the params dict in turn (edits accumulate) the stages it lists
    then beyond those; params.yaml is restored afterwards."""
    params_path = repo / "params.yaml"
    original = params_path.read_text()
    stale = stages_to_run(repo)
    params = yaml.safe_load(original)
    found = []
    try:
        for edit in edits:
            edit(params)
            params_path.write_text(yaml.safe_dump(params, sort_keys=False))
            found.append(stages_to_run(repo) - stale)
    finally:
        params_path.write_text(original)
    return stale, found


def test_repro_writes_every_output(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for model in params["models"]:
        for setup in ("mtl", "cl", "dg"):
            for method in params["methods"]:
                metrics = json.loads((repo / f"metrics/{model}/seed0/weave/{method}/{setup}.json").read_text())
                assert set(metrics["baseline"]) == set(metrics["tasks"])
                for sweep in metrics["sweep"].values():
                    assert len(sweep) == len(metrics["lambdas"])
                    assert all(0.0 <= acc <= 100.0 for acc in sweep)
                for pooling in params["weave"]["poolings"]:
                    for over in params["weave"]["pool_over"]:
                        assert set(metrics["weaving"][pooling][over]) == set(metrics["tasks"])
            assert (repo / f"models/woven/{model}/seed0/ties/mtl/all.safetensors").is_file()
        reference = json.loads((repo / f"metrics/{model}/seed0/reference.json").read_text())
        assert set(reference["finetuned"]) == set(params["suite"]["mtl"])
    summary = json.loads((repo / "reports/summary.json").read_text())
    assert summary
    assert (repo / "reports/claims.md").is_file()


def test_baseline_is_the_sweep_at_lambda_one(repo: Path) -> None:
    metrics = json.loads((repo / "metrics/tiny-clip/seed0/weave/ties/mtl.json").read_text())
    i = metrics["lambdas"].index(1.0)
    for task in metrics["tasks"]:
        assert metrics["baseline"][task] == metrics["sweep"][task][i]


def test_cli_weave_on_the_pipelines_checkpoints_equals_its_artifact(repo: Path, tmp_path: Path) -> None:
    """The streaming CLI and the pipeline's in-memory weave give the same TIES model."""
    from safetensors.torch import load_file

    params = yaml.safe_load((repo / "params.yaml").read_text())
    space = params["method_params"]["ties"]["search_space"]["mtl"]
    out = tmp_path / "ties.safetensors"
    run([str(BIN / "weaving"), "weave", "--pretrained", "models/tiny-clip/pretrained/visual.safetensors",
         "--finetuned", *[f"models/tiny-clip/seed0/finetuned/{t}.safetensors" for t in params["suite"]["mtl"]],
         "--method", "ties", "--set", f"density={params['method_params']['ties']['hparams']['density']}",
         "--lambdas", ":".join(str(x) for x in space), "--pooling", "avg", "--pool-over", "all",
         "--seed", str(params["weave"]["seed"]), "--out", str(out)], repo)
    cli, pipeline = load_file(out), load_file(repo / "models/woven/tiny-clip/seed0/ties/mtl/all.safetensors")
    assert set(cli) == set(pipeline)
    for key in cli:
        assert torch.allclose(cli[key], pipeline[key], atol=1e-6), key


def test_noop_repro_recomputes_nothing(repo: Path) -> None:
    assert stages_to_run(repo) == set()
    out = run(["dvc", "repro"], repo).stdout
    assert "didn't change, skipping" in out or "Data and pipelines are up to date" in out


def test_changing_the_ties_search_space_reruns_only_ties(repo: Path) -> None:
    params_path = repo / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["method_params"]["ties"]["search_space"]["mtl"] = [0.4, 1.2, 0.4]
    params_path.write_text(yaml.safe_dump(params))
    try:
        invalidated = stages_to_run(repo)
        ran = set(re.findall(r"Running stage '([^']+)'", run(["dvc", "repro"], repo).stdout))
    finally:
        params_path.write_text(original)
    ties_stages = {"weave@tiny-clip-ties-0"}
    assert invalidated == ties_stages | {"params"}
    assert ran == ties_stages | {"params", "report"}
    metrics = json.loads((repo / "metrics/tiny-clip/seed0/weave/ties/mtl.json").read_text())
    assert metrics["lambdas"] == pytest.approx([0.4, 0.8, 1.2])


def test_a_misspelled_key_no_stage_tracks_stops_repro(repo: Path) -> None:
    params_path = repo / "params.yaml"
    original = params_path.read_text()
    params_path.write_text(original + "sead: 1\n")
    try:
        result = run(["dvc", "repro"], repo, check=False)
    finally:
        params_path.write_text(original)
    assert result.returncode != 0
    assert "sead: unknown key" in result.stderr + result.stdout


def test_editing_a_library_module_invalidates_every_stage_that_imports_it(repo: Path) -> None:
    """dvc status after an edit of src/weaving/io.py lists exactly the stages whose imports reach it."""
    from import_closure import closure

    module = repo / "src/weaving/io.py"
    original = module.read_text()
    module.write_text(original + "\n# an edit\n")
    try:
        invalidated = stages_to_run(repo)
    finally:
        module.write_text(original)
    src = (repo / "src").resolve()
    stage_list = run(["dvc", "stage", "list", "--name-only"], repo).stdout.split()
    importing = set()
    for name in stage_list:
        script = repo / "stages" / f"{name.split('@')[0]}.py"
        if module.resolve() in closure(script.resolve(), src, ((repo / "stages/_common.py").resolve(),)):
            importing.add(name)
    assert importing and invalidated == importing


def test_misspelled_key_stops_exp_run_before_any_stage(repo: Path) -> None:
    params_path = repo / "params.yaml"
    original = params_path.read_text()
    try:
        # DVC itself refuses to set a key that params.yaml lacks ...
        result = run(["dvc", "exp", "run", "-S", "method_params.ties.hparams.densty=0.3"], repo, check=False)
        assert result.returncode != 0 and "densty" in result.stderr
        # ... and a key forced in with `+` is refused by the params schema, naming the valid ones.
        result = run(["dvc", "exp", "run", "-S", "+method_params.ties.hparams.densty=0.3"], repo, check=False)
        output = result.stderr + result.stdout
        assert result.returncode != 0
        assert "densty" in output and "density" in output
        assert "done in" not in output, "a stage did work before the params were rejected"
    finally:
        # A failed `dvc exp run` leaves its -S edit in the workspace's params.yaml.
        params_path.write_text(original)


def test_a_rerun_of_a_finetune_and_a_weave_is_bitwise_identical(repo: Path) -> None:
    """Issue 11: the same seed, machine and thread count give the same bytes (checkpoint, woven
    model, metrics), so any difference between runs comes from elsewhere."""
    import hashlib

    task = yaml.safe_load((repo / "params.yaml").read_text())["suite"]["mtl"][0]
    files = [f"models/tiny-clip/seed0/finetuned/{task}.safetensors", "models/woven/tiny-clip/seed0/ties/mtl/all.safetensors",
             "metrics/tiny-clip/seed0/weave/ties/mtl.json"]

    def digests() -> dict[str, str]:
        return {f: hashlib.sha256((repo / f).read_bytes()).hexdigest() for f in files}

    run(["dvc", "repro"], repo)  # earlier tests restore params.yaml but leave outputs of their edited params
    before = digests()
    run(["dvc", "repro", "-f", "-s", f"finetune@tiny-clip-{task}-0"], repo)
    run(["dvc", "repro", "-f", "-s", "weave@tiny-clip-ties-0"], repo)
    assert digests() == before


# --- Task Singular Vectors: the compress and mass stages (docs/tsv.md, "Pipeline") ---------------------------------

def test_compress_stage_files_match_an_independent_count(repo: Path) -> None:
    """The compressed files: one per task, made against this pretrained checkpoint, rank k = max(1, int(r / T))
    per factored key, and the storage ratio of compress.json equals the numbers in the files over the
    pretrained image encoder's floating numbers, both counted here from the safetensors files."""
    import hashlib

    from safetensors import safe_open
    from safetensors.torch import load_file

    from weaving.metrics_tsv import CompressMetrics

    params = yaml.safe_load((repo / "params.yaml").read_text())
    tasks = params["suite"]["mtl"]
    metrics = CompressMetrics.read(repo / "metrics/tiny-clip/tsv/compress.json")
    assert metrics.tasks == tasks and metrics.default.is_default
    for task in tasks:
        finetuned = json.loads((repo / f"metrics/tiny-clip/seed0/finetune/{task}.json").read_text())["accuracy"]
        assert metrics.finetuned[task] == finetuned
        assert metrics.default.normalized[task] == pytest.approx(100 * metrics.default.accuracy[task] / finetuned)
    pretrained_file = repo / "models/tiny-clip/pretrained/visual.safetensors"
    one_model = sum(v.numel() for v in load_file(pretrained_file).values() if v.is_floating_point())
    digest = hashlib.sha256(pretrained_file.read_bytes()).hexdigest()
    stored = 0
    for task in tasks:
        path = repo / f"models/tiny-clip/compressed/{task}.safetensors"
        with safe_open(path, "pt") as f:
            meta = f.metadata()
        assert json.loads(meta["pretrained"])["sha256"] == digest and meta["task"] == task
        tensors = load_file(path)
        stored += sum(v.numel() for v in tensors.values())
        for key, u in tensors.items():
            if key.endswith("::U"):
                m, n = u.shape[0], tensors[key[:-3] + "::V"].shape[1]
                assert u.shape[1] == max(1, int(min(m, n) / len(tasks)))
    assert metrics.default.storage.stored_numbers == stored
    assert metrics.headline.storage_ratio == pytest.approx(stored / one_model)


def test_mass_stage_counts_every_test_image_once(repo: Path) -> None:
    from weaving.metrics_tsv import CompressMetrics, MassMetrics

    params = yaml.safe_load((repo / "params.yaml").read_text())
    tasks = params["suite"]["mtl"]
    mass = MassMetrics.read(repo / "metrics/tiny-clip/tsv/mass.json")
    compress = CompressMetrics.read(repo / "metrics/tiny-clip/tsv/compress.json")
    images = sum(len(torch.load(repo / f"data/cache/tiny-clip/{t}_test.pt", weights_only=True)["labels"])
                 for t in tasks)
    histogram = mass.routing.set_size_histogram
    assert sum(histogram.values()) == images
    assert all(1 <= int(size) <= params["mass"]["max_tasks"] for size in histogram)
    assert sum(mass.routing.selected_sets.values()) == images
    assert mass.options.threshold == params["mass"]["threshold"]
    assert mass.options.layer == params["mass"]["layer"]["tiny-clip"]
    assert [r.threshold for r in mass.sweeps.threshold] == params["mass"]["thresholds"]
    # TSV-C with the task known is measured by both stages, independently: the same model, the same images.
    assert mass.accuracy["tsvc_task_known"] == pytest.approx(compress.default.accuracy)
    assert mass.accuracy["finetuned"] == compress.finetuned
    # TSV-Merge from the compressed factors is the weave stage's `tsv` merge at lam = 1 (merge("tsv", taus)).
    if "tsv" in params["methods"]:
        weave = json.loads((repo / "metrics/tiny-clip/seed0/weave/tsv/mtl.json").read_text())
        assert weave["baseline_lam"] == 1.0
        assert mass.accuracy["tsv_merge"] == pytest.approx(weave["baseline"], abs=1e-6)


def test_report_has_the_tsv_claims_tables_and_figures(repo: Path) -> None:
    from weaving.metrics_tsv import CompressMetrics, MassMetrics

    claims = {c["id"]: c for c in json.loads((repo / "reports/claims.json").read_text())["claims"]}
    compress = CompressMetrics.read(repo / "metrics/tiny-clip/tsv/compress.json")
    mass = MassMetrics.read(repo / "metrics/tiny-clip/tsv/mass.json")
    retention = claims["tsvc_retention"]["numbers"]
    assert retention["normalized_mean"] == pytest.approx(compress.default.normalized_mean, abs=1e-3)
    assert retention["storage_ratio"] == pytest.approx(compress.default.storage.ratio_to_one_model, abs=1e-3)
    versus = claims["mass_vs_finetuned"]["numbers"]
    assert versus["normalized_mean"] == pytest.approx(mass.normalized_mean["mass"], abs=1e-3)
    assert versus["tsv_merge_normalized_mean"] == pytest.approx(mass.normalized_mean["tsv_merge"], abs=1e-3)
    assert {"mass_topk_vs_top1", "tsv_storage"} <= set(claims)
    for name in ("tsvc_tiny-clip", "tsvc_sweep_tiny-clip", "mass_tiny-clip", "mass_layer_sweep_tiny-clip"):
        assert (repo / f"reports/tables/{name}.md").is_file()
    for name in ("tsvc_retention_vs_storage", "mass_threshold_ablation", "mass_layer_ablation"):
        assert (repo / f"reports/figures/{name}.png").is_file()


def test_changing_the_mass_threshold_invalidates_only_mass(repo: Path) -> None:
    """Only mass (and the params stage) become stale; not the compression."""
    before, [stale] = newly_stale(repo, lambda params: params["mass"].update(threshold=0.3))
    assert stale == {"params", "mass@tiny-clip"} - before


# --- C2M3: the align_train and align stages (docs/align.md, "Pipeline") --------------------------------------------

def test_align_stages_write_the_models_and_metrics(repo: Path) -> None:
    """Every run of the smoke grid: N model files, and a metrics file whose endpoint accuracy of model 0 is what
    the file's own model computes on the prepared test images (normalised here from train.json's numbers), with
    every subset size and C2M3's cycle error exactly 0."""
    import numpy as np

    from weaving.align.models import build_model
    from weaving.io import load_state_dict
    from weaving.metrics_align import AlignMetrics

    c2m3 = yaml.safe_load((repo / "params.yaml").read_text())["c2m3"]
    for dataset in c2m3["datasets"]:
        test = np.load(repo / f"data/prepared/{dataset}/test.npz")
        for arch in c2m3["archs"]:
            folder = repo / f"models/align/{dataset}-{arch}"
            assert sorted(p.name for p in folder.glob("*.safetensors")) == [
                f"model_{i}.safetensors" for i in range(c2m3["num_models"])]
            record = json.loads((folder / "train.json").read_text())
            metrics = AlignMetrics.read(repo / f"metrics/align/{dataset}-{arch}.json")
            assert [s.size for s in metrics.summary] == c2m3["subset_sizes"]
            assert metrics.repair == (arch == "resnet") and metrics.test_images == len(test["labels"])
            model = build_model(arch, seed=0, **record["model_kwargs"])
            model.load_state_dict(load_state_dict(folder / "model_0.safetensors"))
            mean, std = record["normalisation"]["mean"], record["normalisation"]["std"]
            x = (torch.from_numpy(test["images"]).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
            with torch.no_grad():
                correct = (model.eval()(x).argmax(1).numpy() == test["labels"]).sum()
            assert metrics.endpoints[0].accuracy == pytest.approx(100.0 * correct / len(x), abs=1e-9)
            big = [s for s in metrics.subsets if s.size >= 3]
            assert big and all(s.mergers["c2m3"].cycle_error.max == 0.0 for s in big)


def test_report_has_the_c2m3_claims_tables_and_figures(repo: Path) -> None:
    from weaving.metrics_align import AlignMetrics

    claims = {c["id"]: c for c in json.loads((repo / "reports/claims.json").read_text())["claims"]}
    assert {"c2m3_order", "c2m3_cycle", "c2m3_repair"} <= set(claims)
    assert claims["c2m3_cycle"]["numbers"]["c2m3"] == 0.0
    assert set(claims["c2m3_cycle"]["numbers"]) == {"c2m3", "mergemany", "pairwise"}
    c2m3 = yaml.safe_load((repo / "params.yaml").read_text())["c2m3"]
    runs = [f"{d}-{a}" for d in c2m3["datasets"] for a in c2m3["archs"]]
    cases = claims["c2m3_order"]["numbers"]["cases"]
    assert {(c["run"], c["size"]) for c in cases} == {(r, n) for r in runs for n in c2m3["subset_sizes"] if n >= 3}
    for case in cases:
        entry = AlignMetrics.read(repo / f"metrics/align/{case['run']}.json").size_summary(case["size"])
        assert case["c2m3"] == pytest.approx(entry.mergers["c2m3"].accuracy, abs=1e-3)  # claims.json: 4 decimals
        assert case["naive"] == pytest.approx(entry.mergers["naive"].accuracy, abs=1e-3)
    for name in [*(f"align_{r}" for r in runs), "align_cycle_errors", "align_barrier", "align_cost"]:
        assert (repo / f"reports/tables/{name}.md").is_file()
    for name in ("align_accuracy_vs_n", "align_barrier"):
        assert (repo / f"reports/figures/{name}.png").is_file()


def test_changing_c2m3_merge_params_keeps_the_trained_models(repo: Path) -> None:
    """fw_max_iter invalidates the align stages only; an MLP recipe change also its training, not the ResNet's."""
    c2m3 = yaml.safe_load((repo / "params.yaml").read_text())["c2m3"]
    runs = [f"{d}-{a}" for d in c2m3["datasets"] for a in c2m3["archs"]]
    mlp = {r for r in runs if r.endswith("-mlp")}

    def more_iterations(params: dict) -> None:
        params["c2m3"]["fw_max_iter"] += 1

    def longer_mlp_training(params: dict) -> None:
        params["c2m3"]["mlp"]["train"]["epochs"] += 1

    before, [merging, training] = newly_stale(repo, more_iterations, longer_mlp_training)
    assert merging == {"params", *(f"align@{r}" for r in runs)} - before
    assert training == {"params", *(f"align@{r}" for r in runs), *(f"align_train@{r}" for r in mlp)} - before


# --- MERGE3: the merge3 stage (docs/search.md, "Pipeline") ---------------------------------------------------------

def test_merge3_stage_spends_the_stated_item_evaluations(repo: Path) -> None:
    """The searches' costs against the params (items per candidate, cost ratio), every configured search present
    with a trace per generation and a final test accuracy per task, and the stage's Task Arithmetic at the
    recommended lam equal to the weave stage's (the same merge on the same test images, measured apart)."""
    from weaving.metrics_search import Merge3Metrics

    params = yaml.safe_load((repo / "params.yaml").read_text())
    merge3, tasks = params["merge3"], params["suite"]["mtl"]
    metrics = Merge3Metrics.read(repo / "metrics/tiny-clip/search/merge3.json")
    assert metrics.tasks == tasks and metrics.items.split == merge3["items"]["split"]
    assert metrics.items.per_task == {t: merge3["items"]["per_task"] for t in tasks}
    total, anchors = len(tasks) * merge3["items"]["per_task"], len(tasks) * merge3["anchors_per_task"]
    assert metrics.irt.subjects == 1 + len(tasks) + merge3["population_size"]
    for method in merge3["methods"]:
        assert list(metrics.searches[method]) == merge3["fitness"]
        for kind, record in metrics.searches[method].items():
            assert record.items_per_candidate == (total if kind == "full" else anchors)
            assert record.item_evaluations == record.distinct_candidates * record.items_per_candidate
            assert len(record.trace) == merge3["search"]["generations"]
            assert set(record.final.test_accuracy) == set(tasks)
            assert record.items_forwarded >= record.item_evaluations
    assert metrics.headline.cost_ratio == pytest.approx(merge3["items"]["per_task"] / merge3["anchors_per_task"])
    weave = json.loads((repo / "metrics/tiny-clip/seed0/weave/task_arithmetic/mtl.json").read_text())
    assert metrics.baselines.recommended_lam == weave["recommended_lam"]
    assert metrics.baselines.recommended.test_accuracy == pytest.approx(weave["recommended"], abs=1e-6)


def test_report_has_the_merge3_claims_tables_and_figure(repo: Path) -> None:
    from weaving.metrics_search import Merge3Metrics

    claims = {c["id"]: c for c in json.loads((repo / "reports/claims.json").read_text())["claims"]}
    head = Merge3Metrics.read(repo / "metrics/tiny-clip/search/merge3.json").headline
    cost = claims["merge3_cost"]["numbers"]
    assert cost["cost_ratio"] == pytest.approx(head.cost_ratio, abs=1e-3)  # claims.json rounds to 4 decimals
    assert cost["final_gap_pp"] == pytest.approx(head.full_test_mean - head.reported_test_mean, abs=1e-3)
    assert claims["merge3_cost"]["verdict"] in ("holds", "mixed", "does not hold")
    assert {"merge3_quality", "merge3_estimator"} <= set(claims)
    for name in ("merge3_tiny-clip", "merge3_estimators_tiny-clip", "merge3_items_tiny-clip"):
        assert (repo / f"reports/tables/{name}.md").is_file()
    assert (repo / "reports/figures/merge3_fitness_over_generations.png").is_file()


def test_changing_a_merge3_param_invalidates_only_merge3(repo: Path) -> None:
    before, [stale] = newly_stale(repo, lambda params: params["merge3"].update(anchors_per_task=1))
    assert stale == {"params", "merge3@tiny-clip"} - before


# --- faults: kill -9 at chosen points of each stage kind (issue 10, "Also") -----------------------------------------

TIMING_KEYS = ("seconds", "train_seconds", "cycle_seconds")
"""Metrics keys that hold wall-clock durations: the only content allowed to differ between two runs."""


def _without_timings(data):
    if isinstance(data, dict):
        return {k: _without_timings(v) for k, v in data.items() if k not in TIMING_KEYS}
    if isinstance(data, list):
        return [_without_timings(v) for v in data]
    return data


def _run_outputs(repo: Path) -> dict[str, object]:
    """Every pipeline output: sha256 of each file under models/ and of reports/claims.json, and each metrics
    file's content without its durations (reports/ tables carry durations; they are rebuilt from metrics/)."""
    import hashlib

    outputs: dict[str, object] = {
        str(path.relative_to(repo)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in [*sorted((repo / "models").rglob("*")), repo / "reports" / "claims.json"] if path.is_file()}
    for path in sorted((repo / "metrics").rglob("*.json")):
        outputs[str(path.relative_to(repo))] = _without_timings(json.loads(path.read_text()))
    return outputs


def _leftovers(repo: Path) -> list[str]:
    """Names the atomic writers and the resumable trainers use for unfinished work."""
    return sorted(str(path.relative_to(repo)) for folder in ("models", "metrics", "reports", "data")
                  for path in (repo / folder).rglob(".*")
                  if path.name.endswith((".tmp", ".old")) or path.name == ".resume")


@pytest.mark.parametrize("stage, trigger, seconds_after", [
    ("finetune@tiny-clip-{task}-0", "finetune:", 0.0),             # training, evaluating or writing the checkpoint
    ("finetune_sequential@tiny-clip-{bench}-0", "finetune:", 0.5),  # between splits (a staging folder)
    ("weave@tiny-clip-ties-0", "evaluate ties:", 0.3),             # evaluating the sweep (about 1 s on the smoke profile)
    ("report", "Running stage", 4.0),                            # building the report's staging folder
])
def test_a_stage_killed_with_sigkill_recovers_to_the_same_bytes(repo: Path, stage: str, trigger: str,
                                                                seconds_after: float) -> None:
    """kill -9 of `dvc repro` and its stage at a point of the stage's run (`seconds_after` its log shows
    `trigger`), then `dvc repro`: every model file byte-identical to the uninterrupted run's, every metrics
    file equal but for durations, the claims identical, no temporary or resume leftovers, git status as
    before."""
    import signal
    import time

    params = yaml.safe_load((repo / "params.yaml").read_text())
    stage = stage.format(task=params["suite"]["mtl"][0], bench=next(iter(params["cl_benchmarks"])))
    run(["dvc", "repro"], repo)
    before, status = _run_outputs(repo), run(["git", "status", "--porcelain"], repo).stdout
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(repo / "src")}
    log = repo.parent / "killed-stage.log"
    with log.open("w") as out:
        process = subprocess.Popen(["dvc", "repro", "-f", "-s", stage], cwd=repo, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while trigger not in log.read_text() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(seconds_after)
        finished_first = process.poll() is not None
        if not finished_first:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not finished_first, f"{stage} ended before the kill point ({trigger!r} + {seconds_after} s):\n" \
                               f"{log.read_text()[-2000:]}"
    run(["dvc", "repro"], repo)
    assert _run_outputs(repo) == before
    assert _leftovers(repo) == []
    assert run(["git", "status", "--porcelain"], repo).stdout == status


# --- Weight Weaving beyond lam (issue 14): hyper-parameter spaces and merge methods as poolings --------------------

def test_weave_stages_record_the_variants_beyond_lam_and_the_report_checks_them(repo: Path) -> None:
    """The smoke profile weaves TIES over lam x density and uses TIES and TSV as poolings: every weave file holds
    the method-pooling variants (and TIES's the space) on every task, and the report has their table and claim."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    poolings = set(params["weave"]["method_poolings"])
    for method in params["methods"]:
        axes = params["method_params"][method].get("space", {})
        expected = {f"{p}_pooling" for p in poolings} | ({"lam_x_" + "_x_".join(axes)} if axes else set())
        for setup in params["setups"]:
            metrics = json.loads((repo / f"metrics/tiny-clip/seed0/weave/{method}/{setup}.json").read_text())
            assert set(metrics["extensions"]) == expected, (method, setup)
            for variant in metrics["extensions"].values():
                assert set(variant["accuracy"]) == set(metrics["tasks"])
            assert set(metrics["intervals"]["extensions"]) == expected
    claims = {c["id"]: c for c in json.loads((repo / "reports/claims.json").read_text())["claims"]}
    assert claims["beyond_lam"]["verdict"] in ("holds", "does not hold", "mixed")
    assert set(claims["beyond_lam"]["numbers"]) == {"space"} | {f"{p}_pooling" for p in poolings}
    assert "λ × density" in (repo / "reports/tables/beyond_lam.md").read_text()


# --- Replicates (issue 11): params seeds ----------------------------------------------------------------------------

def test_a_second_seed_runs_its_replicate_beside_the_first_and_the_report_aggregates_both(repo: Path) -> None:
    """seeds [0, 1]: the replicated stages run once more for seed 1 (seed 0's are not rerun), into their own
    folders, from other random draws; the report's numbers are the means over both replicates with their
    standard deviation and 95% t-interval, computed here by hand from the two weave records."""
    import hashlib
    import math
    from statistics import fmean

    params_path = repo / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    mtl, cl = params["suite"]["mtl"], params["suite"]["cl"]
    kept = [f"models/tiny-clip/seed0/finetuned/{t}.safetensors" for t in mtl] + ["metrics/tiny-clip/seed0/weave/ties/mtl.json"]

    def digests() -> dict[str, str]:
        return {f: hashlib.sha256((repo / f).read_bytes()).hexdigest() for f in kept}

    run(["dvc", "repro"], repo)
    before = digests()
    try:
        params["seeds"], params["methods"] = [0, 1], ["ties"]
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
        output = run(["dvc", "repro", "report"], repo).stdout
        ran = set(re.findall(r"Running stage '([^']+)'", output))
        assert ran == ({f"finetune@tiny-clip-{t}-1" for t in mtl} | {f"finetune_sequential@tiny-clip-{b}-1" for b in cl}
                       | {"taskvectors@tiny-clip-1", "weave@tiny-clip-ties-1", "report"})
        assert digests() == before
        first, second = (repo / f"models/tiny-clip/seed{s}/finetuned/{mtl[0]}.safetensors" for s in (0, 1))
        assert first.read_bytes() != second.read_bytes()

        summary = json.loads((repo / "reports/summary.json").read_text())
        claims = json.loads((repo / "reports/claims.json").read_text())
        records = [json.loads((repo / f"metrics/tiny-clip/seed{s}/weave/ties/mtl.json").read_text()) for s in (0, 1)]
        baselines = [fmean(r["baseline"].values()) for r in records]
        mean, std = fmean(baselines), abs(baselines[0] - baselines[1]) / math.sqrt(2)
        half = 12.706204736174698 * std / math.sqrt(2)  # t quantile 0.975 with 1 degree of freedom
        entry = summary["tiny-clip"]["mtl"]["ties"]
        assert summary["seeds"] == [0, 1]
        assert entry["baseline"] == pytest.approx(mean, abs=0.006)
        assert entry["baseline_std"] == pytest.approx(std, abs=0.006)
        assert entry["baseline_seeds_ci"] == pytest.approx([mean - half, mean + half], abs=0.011)
        weave_rows = [row for row in claims["claims"] if row["id"] in {"beats_baseline", "gains_by_setup", "poolings"}]
        assert weave_rows and all(row["seeds"] == [0, 1] and 0 <= row["seeds_holding"] <= 2 for row in weave_rows)
    finally:
        params_path.write_text(original)
    run(["dvc", "repro"], repo)
