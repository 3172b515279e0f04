"""Stage `weave@<model>-<method>-<seed>`: one method in every setup, swept over lam and woven, on one
replicate's fine-tuned models (params `seeds`; the random pooling's draws from `weave.seed + seed`).

Per setup (params `setups`), evaluates the data-free baseline (lam = 1), the authors'
recommended lam, every lam of the search space (per task: the oracle and the paper's Figure 2),
and Weight Weaving with every pooling and pool_over, and beyond lam (the method's
`space` axes; `weave.method_poolings`), with bootstrap intervals over test images of the
averages and of each woven model's gain over the baseline (`weave.bootstrap`). The woven
models chosen by `weave.artifact` are kept under `models/woven/<model>/seed<seed>/<method>/<setup>/` (one
file per scenario, listed in `manifest.json`). One process for all setups: the model, the heads
and the test caches are loaded once (a method's params are shared by its setups, so one stage
per setup would rerun no less). TSV's SVDs of a matrix (as the method and as a pooling) are
computed once for the whole stage (`weaving.methods.tsv.reuse_svds`: the same bits). With
`eval.workers` > 1, that many evaluations run at once in threads (each with its own copy of the
model and one torch thread) while the main thread merges and weaves the next vectors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from _common import compute_device, load_tensors, paths, save_weights, stage, stage_params

from weaving_pipeline.checkpoints import pipeline_task_vectors, reference_key_set_padding
from weaving_pipeline.params import Params

if TYPE_CHECKING:
    from weaving.metrics import WeaveMetrics


def scenario_name(scenario) -> str:
    """`all` for a merge evaluated on several tasks (MTL), else the one evaluated task or benchmark."""
    return scenario.tasks[0] if len(scenario.tasks) == 1 else "all"


class EvaluationInputs:
    """The model, heads and test caches of one model, loaded once and shared by every setup."""

    def __init__(self, params: Params, model_name: str, seed: int) -> None:
        import threading

        from weaving.clip import load_pretrained

        self.params, self.model_name, self.seed = params, model_name, seed
        self.model = load_pretrained(paths.pretrained(model_name), device=compute_device())
        self._per_thread = threading.local()
        self._loading = threading.Lock()  # heads and caches are loaded on first use, by any thread
        self.dataset_of = ({t: t for t in params.suite.mtl}
                           | {b: params.cl_benchmarks[b].dataset for b in params.suite.cl})
        self._heads: dict = {}
        self._caches: dict = {}

    def model_here(self):
        """The model of the calling thread: the loaded one in the main thread, a copy in each
        evaluation worker (`eval.workers`), since an evaluation loads its weights into the model."""
        import copy
        import threading

        if threading.current_thread() is threading.main_thread():
            return self.model
        if not hasattr(self._per_thread, "model"):
            self._per_thread.model = copy.deepcopy(self.model)
        return self._per_thread.model

    def head(self, task: str):
        from weaving.io import load_state_dict

        dataset = self.dataset_of[task]
        with self._loading:
            if dataset not in self._heads:
                self._heads[dataset] = load_state_dict(paths.heads(self.model_name, dataset))["weight"]
        return self._heads[dataset]

    def cache(self, task: str):
        dataset = self.dataset_of[task]
        with self._loading:
            if dataset not in self._caches:
                self._caches[dataset] = load_tensors(paths.test_cache(self.model_name, dataset))
        return self._caches[dataset]


def weave_setup(inputs: EvaluationInputs, setup: str, method: str) -> WeaveMetrics:
    """Run the evaluation protocol of `weaving.experiment` in one setup and write its outputs."""
    import json

    from weaving import METHODS, apply_task_vector
    from weaving.atomic import write_json
    from weaving.clip import correctness
    from weaving.experiment import build_scenarios, evaluate_method, pad_with_zero_keys
    from weaving.io import sha256_file
    from weaving.metrics import WeaveMetrics

    params, model_name, seed = inputs.params, inputs.model_name, inputs.seed
    spec = params.method_params[method]
    lambdas = params.search_space(method, setup)
    recommended_lam = params.recommended_lam(method)
    pretrained, taus, splits = pipeline_task_vectors(params, model_name, setup, seed)
    if params.weave.key_set == "image_encoder" and METHODS[method].model_wide:
        taus = pad_with_zero_keys(taus, reference_key_set_padding(model_name))
    scenarios = build_scenarios(setup, params.suite.mtl, splits)

    def image_encoder_part(task_vector):
        return {key: value for key, value in task_vector.items() if key in pretrained}

    def correct(merged_task_vector, task):
        visual = apply_task_vector(pretrained, image_encoder_part(merged_task_vector))
        return correctness(inputs.model_here(), visual, inputs.head(task), inputs.cache(task),
                           batch_size=params.eval.batch_size)

    artifact = params.weave.artifact
    woven_dir = paths.woven(model_name, method, setup, seed=seed)
    woven_dir.mkdir(parents=True, exist_ok=True)
    kept: dict[str, str] = {}
    input_hashes: dict[str, str] = {}

    def keep_artifact(scenario, pooling, pool_over, woven):
        if setup not in artifact.setups or (pooling, pool_over) != (artifact.pooling, artifact.pool_over):
            return
        if not input_hashes:
            input_hashes["pretrained"] = sha256_file(paths.pretrained_visual(model_name))
        name = scenario_name(scenario)
        save_weights(woven_dir / f"{name}.safetensors", apply_task_vector(pretrained, image_encoder_part(woven)), metadata={
            "method": method, "hparams": json.dumps(dict(spec.hparams)), "pooling": pooling, "pool_over": pool_over,
            "lambdas": json.dumps(lambdas), "seed": str(params.weave.seed + seed), "setup": setup,
            "members": json.dumps(list(scenario.members)), "evaluated_on": json.dumps(list(scenario.tasks)),
            "pretrained_sha256": input_hashes["pretrained"], "key_set": params.weave.key_set})
        kept[name] = f"{name}.safetensors"

    result = evaluate_method(
        method, spec.hparams, taus, scenarios, lambdas=lambdas, recommended_lam=recommended_lam,
        poolings=params.weave.poolings, pool_over=params.weave.pool_over, seed=params.weave.seed + seed,
        evaluate=correct, on_woven=keep_artifact, progress=True, bootstrap=params.weave.bootstrap.model_dump(),
        space=spec.space, method_poolings=params.weave.method_poolings, workers=params.eval.workers)
    write_json(woven_dir / "manifest.json", {"setup": setup, "method": method, "model": model_name,
                                             "pooling": artifact.pooling, "pool_over": artifact.pool_over,
                                             "kept": kept})
    metrics = WeaveMetrics(model=model_name, setup=setup, method=method, hparams=dict(spec.hparams),
                           lambdas=lambdas, recommended_lam=recommended_lam, baseline_lam=1.0, **result)
    metrics.write(paths.weave_metrics(model_name, method, setup, seed=seed))
    return metrics


def main() -> None:
    from weaving.methods.tsv import reuse_svds

    params, (model_name, method, seed) = stage_params({"model": lambda p: p.models, "method": lambda p: p.methods,
                                                       "seed": lambda p: [str(s) for s in p.seeds]})
    name = f"weave@{model_name}-{method}-{seed}"
    # several evaluation workers: one torch thread each (two single-threaded forward passes of the small
    # model at once outrun one on two threads; benchmarks/README.md)
    threads = 1 if params.eval.workers > 1 else params.threads
    with stage(name, threads=threads), reuse_svds():  # the scenarios share task vectors: SVDs once
        inputs = EvaluationInputs(params, model_name, int(seed))
        for setup in params.setups:
            metrics = weave_setup(inputs, setup, method)
            woven = metrics.weaving_avg("avg", "all") if "all" in metrics.weaving.get("avg", {}) else float("nan")
            print(f"[{name}] {setup}: baseline {metrics.baseline_avg:.2f}% -> woven {woven:.2f}% "
                  f"(avg pooling over A*)")


if __name__ == "__main__":
    main()
