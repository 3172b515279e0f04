"""Stage `weave_<setup>@<model>-<method>`: one method in one setup, swept over lam and woven.

Evaluates the data-free baseline (lam = 1), the authors' recommended lam, every lam of
the search space (per task: the oracle and the paper's Figure 2), and Weight Weaving with
every pooling and pool_over. In multi-task learning the woven model chosen by
`weave.artifact` is kept as a DVC artifact.
"""

from _common import compute_device, pipeline_task_vectors, save_weights, stage, stage_params
from weaving.config import SETUPS

params, (model_name, setup, method) = stage_params(
    {"model": lambda p: p.models, "setup": list(SETUPS), "method": lambda p: p.methods})

with stage(f"weave_{setup}@{model_name}-{method}"):
    import torch

    from weaving import apply_task_vector
    from weaving.atomic import write_json
    from weaving.clip import evaluate, load_pretrained
    from weaving.experiment import (continual_scenarios, evaluate_method, leave_one_out_scenarios,
                                    mean_accuracy, multitask_scenarios)
    from weaving.io import load_state_dict

    spec = params.method_params[method]
    lambdas = params.search_space(method, setup)
    model = load_pretrained(f"models/{model_name}/pretrained", device=compute_device())
    pretrained, taus, splits = pipeline_task_vectors(params, model_name, setup)

    if setup == "mtl":
        scenarios = multitask_scenarios(params.suite.mtl)
    elif setup == "dg":
        scenarios = leave_one_out_scenarios(params.suite.mtl)
    else:
        scenarios = continual_scenarios(splits)
    dataset_of = {t: t for t in params.suite.mtl} | {b: params.cl_benchmarks[b].dataset for b in params.suite.cl}
    heads, caches = {}, {}
    for task in {t for s in scenarios for t in s.tasks}:
        heads[task] = load_state_dict(f"models/{model_name}/heads/{dataset_of[task]}.safetensors")["weight"]
        caches[task] = torch.load(f"data/cache/{model_name}/{dataset_of[task]}_test.pt", weights_only=True)

    def accuracy(merged_task_vector, task):
        visual = apply_task_vector(pretrained, merged_task_vector)
        return evaluate(model, visual, heads[task], caches[task], batch_size=params.eval.batch_size)

    def keep_artifact(scenario, pooling, pool_over, woven):
        choice = params.weave.artifact
        if setup == "mtl" and (pooling, pool_over) == (choice.pooling, choice.pool_over):
            save_weights(f"models/woven/{method}/{model_name}.safetensors", apply_task_vector(pretrained, woven),
                            metadata={"method": method, "hparams": str(dict(spec.hparams)), "pooling": pooling,
                                      "pool_over": pool_over, "lambdas": str(lambdas), "seed": str(params.weave.seed),
                                      "tasks": ",".join(params.suite.mtl)})

    result = evaluate_method(
        method, spec.hparams, taus, scenarios, lambdas=lambdas, recommended_lam=spec.recommended_lam,
        poolings=params.weave.poolings, pool_over=params.weave.pool_over, seed=params.weave.seed,
        evaluate=accuracy, on_woven=keep_artifact, progress=True)
    metrics = {"model": model_name, "setup": setup, "method": method, "hparams": dict(spec.hparams),
               "lambdas": lambdas, "recommended_lam": spec.recommended_lam, "baseline_lam": 1.0, **result}
    write_json(f"metrics/{model_name}/weave/{setup}/{method}.json", metrics)
    print(f"[weave_{setup}@{model_name}-{method}] baseline {mean_accuracy(result['baseline']):.2f}% -> woven "
          f"{mean_accuracy(result['weaving']['avg']['all']) if 'avg' in result['weaving'] else float('nan'):.2f}% "
          f"(avg pooling over A*)")
