"""Peer benchmark: weaving against FusionBench (in memory) and mergekit (streaming from disk).

    python benchmarks/bench_peers.py --setup      # once: benchmarks/.venv-fusionbench, .venv-mergekit
    python benchmarks/bench_peers.py --quick      # ~10 min: per-element methods + 4 streaming methods
    python benchmarks/bench_peers.py              # every in-memory method (TIES: FusionBench needs ~18 GiB;
                                                  # PCB: its authors' code ~35 GiB at full size, see --max-params)

``--setup`` creates one virtual environment per peer (git-ignored), CPU torch first, then
``fusion-bench==0.2.33`` and ``mergekit==0.1.5``; a failed step is recorded in the results
(and its log kept next to the environment) and the rest runs without that peer.

In memory: the task vectors of open_clip ViT-B-32's image encoder (87.8M float32 parameters,
random, seeded), T = 8, written once to safetensors files and loaded by every worker (so both
libraries see the same tensors). Each measurement is a fresh process of the library's own
virtual environment: load the inputs, one warm-up call on a small slice, then ``--repeats``
timed calls; the fastest is reported, with the peak resident set during the calls minus the
resident set just before them (``VmHWM`` reset through ``/proc/self/clear_refs``; workers run
with ``MALLOC_MMAP_THRESHOLD_=1048576`` so that freed tensors leave the resident set). weaving
and FusionBench alternate method by method. FusionBench's own functions are called on the task
vectors (what each of its algorithms runs after computing them): ``state_dict_add`` /
``state_dict_mul`` (task arithmetic), ``module_random_drop_`` then ``state_dict_sum`` (DARE,
p = 0.5, rescaled), ``_magmax_select`` (MagMax), ``ties_merging`` on ``state_dict_to_vector``
(TIES, top 20%, disjoint mean as weaving; issue 15 measured "sum"), ``iso_c`` and
``compute_and_sum_svd_mem_reduction`` (TSV) on the CPU.

Breadcrumbs and PCB, which FusionBench lacks, against their authors' own functions (``PEER_SOURCES``:
``--setup`` or ``--setup-sources`` extracts the named files at pinned commits into the git-ignored
``benchmarks/.peers``; the worker imports them from there, in FusionBench's environment):
rezazzr/breadcrumbs ``src/task_vectors.py`` ``TaskVectorMiddleKeep`` (beta 0.1 kept, gamma 0.01
removed, per row) summed, and duguodong7/pcb-merging ``pcb-merging.py`` ``PCB_merge`` (ratio 0.05;
its inter term is weaving's ``summed_inter=true``; its magnitude clamp called with 0.01 as
weaving's, see ``_source_call``). ``--compare`` saves both merged task vectors and records the max
abs difference; ``--max-params`` restricts every implementation to the same leading keys (PCB's
authors' function needs ~13x its inputs). A case in ``HEAVY_GIB`` (FusionBench's TIES) runs only
with that much memory available, else it is reported as not run.

Streaming: a Llama-architecture model of ~218M parameters (``LlamaConfig``: 12 layers, width
1024, MLP 2816, vocabulary 32000, untied head; random weights, no download) saved by
``transformers`` as float32 sharded safetensors (200 MB shards), and 3 fine-tuned copies
(seeded perturbations). ``weaving merge`` (``--hash none``, output a model folder) against
``mergekit-yaml`` (defaults: output a model folder) for task arithmetic, TIES (density 0.2),
DARE (p = 0.5; mergekit ``dare_linear`` density 0.5) and Breadcrumbs (beta 0.1, gamma 0.01;
mergekit ``breadcrumbs`` density 0.1, gamma 0.01), weight 1 per model; each a child process with
one torch thread; wall time and its peak resident set (``os.wait4``). The inputs are read once
before the timed runs so both tools read from the page cache.

Writes ``benchmarks/results/peers.json`` (every repeat, machine, command) and the tables into
``benchmarks/README.md`` (section "Peers").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # bench_merge: standard library only at import, so every peer's venv can read it
from bench_merge import status_kib  # noqa: E402

RESULTS = HERE / "results" / "peers.json"
README = HERE / "README.md"
PEERS = {
    "fusionbench": {"venv": HERE / ".venv-fusionbench", "packages": ["fusion-bench==0.2.33"]},
    "mergekit": {"venv": HERE / ".venv-mergekit", "packages": ["mergekit==0.1.5"]},
}
LOCAL_TORCH = "torch==2.13.0+cpu"  # a CPU build only (PyPI has none: never its CUDA build); these machines keep it in find-links
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"  # where no local CPU wheel of torch exists
MMAP_THRESHOLD = 1 << 20
MEMORY_METHODS = ("task_arithmetic", "dare", "magmax", "ties", "iso_c", "tsv", "breadcrumbs", "pcb")
QUICK_MEMORY_METHODS = ("task_arithmetic", "dare", "magmax")
STREAM_METHODS = ("task_arithmetic", "ties", "dare", "breadcrumbs")
# Methods FusionBench lacks: their authors' code, fetched at --setup into a git-ignored folder
# (pinned commits; only the named files), imported by the worker at run time.
SOURCES = HERE / ".peers"
PEER_SOURCES = {
    "breadcrumbs": {"repo": "rezazzr/breadcrumbs", "commit": "f89fc664a171df2b90567aa1313ec7be677f2669",
                    "paths": ["src/task_vectors.py", "src/utils.py"]},
    "pcb": {"repo": "duguodong7/pcb-merging", "commit": "5897888b5d24adfcd33e124793d113746e00f3ff",
            "paths": ["pcb-merging.py"]},
}
PEER_OF = {"breadcrumbs": "breadcrumbs_repo", "pcb": "pcb_repo"}  # else FusionBench
PEER_NAMES = {"fusionbench": "FusionBench", "breadcrumbs_repo": "rezazzr/breadcrumbs", "pcb_repo": "duguodong7/pcb-merging"}
# weaving's hyper-parameters in memory; the peers' calls below use the same values
MEMORY_HPARAMS = {"dare": {"p": 0.5}, "ties": {"density": 0.2}, "breadcrumbs": {"beta": 0.1, "gamma": 0.01},
                  "pcb": {"ratio": 0.05, "summed_inter": True}}
# cases that need more memory than a shared machine may have: run only with this much available
HEAVY_GIB = {("fusionbench", "ties"): 18.0, ("pcb_repo", "pcb"): 36.0}  # at full size (no --max-params)
WEAVING_SET = {"task_arithmetic": [], "ties": ["density=0.2"], "dare": ["p=0.5"],
               "breadcrumbs": ["beta=0.1", "gamma=0.01"]}
MERGEKIT = {"task_arithmetic": ("task_arithmetic", {}, {}),
            "ties": ("ties", {"density": 0.2}, {}),
            "dare": ("dare_linear", {"density": 0.5}, {}),
            "breadcrumbs": ("breadcrumbs", {"density": 0.1, "gamma": 0.01}, {})}


def python_of(peer: str) -> Path:
    return PEERS[peer]["venv"] / "bin" / "python"


# ---------------------------------------------------------------------------- setup


def setup(timeout_s: int) -> dict[str, str]:
    """Create each peer's virtual environment (CPU torch first, then the peer); errors recorded.

    Torch, the first of these that installs: `LOCAL_TORCH` as pip is configured (these machines
    keep that CPU wheel in pip's `find-links`; its dependencies come from PyPI; where it is
    missing the step fails at once, as no index pip reaches has a `+cpu` build), then any torch from the local wheels
    alone (`--no-index`, for a machine whose dependencies are local too), then the CPU build
    from PyTorch's index (a plain `pip install torch` from PyPI would take a CUDA build of
    several GB). The log says which one ran."""
    status: dict[str, str] = {}
    for name, peer in PEERS.items():
        venv: Path = peer["venv"]
        log = venv.with_suffix(".setup.log")
        start = time.perf_counter()
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        torch_steps = [pip + [LOCAL_TORCH], pip + ["--no-index", "torch"], pip + ["torch", "--index-url", TORCH_INDEX]]
        steps = [[[sys.executable, "-m", "venv", "--clear", str(venv)]], [pip + ["--upgrade", "pip"]],
                 torch_steps, [pip + list(peer["packages"])]]
        status[name] = "ok"
        with open(log, "w") as handle:
            for alternatives in steps:
                for step in alternatives:  # the first that succeeds
                    handle.write("$ " + " ".join(step) + "\n")
                    handle.flush()
                    try:
                        done = subprocess.run(step, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout_s)
                    except subprocess.TimeoutExpired:
                        status[name] = f"timed out after {timeout_s} s: {' '.join(step)}"
                        continue
                    status[name] = ("ok" if done.returncode == 0
                                    else f"failed (exit {done.returncode}): {' '.join(step)}; see {log.name}")
                    if done.returncode == 0:
                        break
                if status[name] != "ok":
                    break
        print(f"{name}: {status[name]} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    return status


def setup_sources(git_dirs: Path | None, timeout_s: int) -> dict[str, str]:
    """Extract each author's files at its pinned commit into benchmarks/.peers/<name> (git-ignored).

    `git_dirs`: a folder of bare repositories named `<owner>+<name>/repo` (a local mirror);
    without it, a bare clone from GitHub into benchmarks/.peers/<name>.git."""
    status: dict[str, str] = {}
    SOURCES.mkdir(exist_ok=True)
    (SOURCES / ".gitignore").write_text("*\n")
    for name, source in PEER_SOURCES.items():
        dest = SOURCES / name
        if git_dirs is not None:
            git_dir = git_dirs / source["repo"].replace("/", "+") / "repo"
        else:
            git_dir = SOURCES / f"{name}.git"
            if not git_dir.exists():
                subprocess.run(["git", "clone", "-q", "--bare",
                                f"https://github.com/{source['repo']}", str(git_dir)], timeout=timeout_s)
        git = ["git", f"--git-dir={git_dir}"]
        if subprocess.run([*git, "cat-file", "-e", f"{source['commit']}^{{commit}}"],
                          capture_output=True).returncode != 0:
            status[name] = f"commit {source['commit'][:12]} of {source['repo']} not in {git_dir}"
            continue
        subprocess.run(["rm", "-rf", str(dest)], check=True)
        dest.mkdir()
        archive = subprocess.run([*git, "archive", source["commit"], *source["paths"]], capture_output=True,
                                 timeout=timeout_s)
        done = subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, capture_output=True)
        status[name] = "ok" if archive.returncode == 0 and done.returncode == 0 else (
            (archive.stderr or done.stderr).decode(errors="replace").strip() or "git archive failed")
        print(f"{name}: {status[name]}", file=sys.stderr, flush=True)
    return status


def peer_status() -> dict[str, str]:
    """'ok' for each peer whose environment imports it, else why not."""
    checks = {"fusionbench": "import fusion_bench, safetensors", "mergekit": "import mergekit"}
    status = {}
    for name, check in checks.items():
        python = python_of(name)
        if not python.exists():
            status[name] = "not installed (run with --setup)"
            continue
        done = subprocess.run([str(python), "-c", check], capture_output=True, text=True)
        status[name] = "ok" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]
    for name, source in PEER_SOURCES.items():  # run in FusionBench's environment
        missing = [path for path in source["paths"] if not (SOURCES / name / path).exists()]
        status[f"{name}_repo"] = (f"not fetched (run with --setup-sources): {', '.join(missing)}" if missing
                                  else status.get("fusionbench", "?"))
    return status


# ---------------------------------------------------------------------------- in memory


def _fusionbench_call(method: str):  # noqa: ANN202 (runs in FusionBench's environment)
    import torch
    from fusion_bench.utils.state_dict_arithmetic import state_dict_add, state_dict_mul, state_dict_sum

    if method == "task_arithmetic":  # task_arithmetic_merge's loop, on the task vectors
        def run(taus):
            total = None
            for tau in taus:
                total = tau if total is None else state_dict_add(total, tau)
            return state_dict_mul(total, 1.0)
    elif method == "dare":  # DareTaskArithmetic.run: drop and rescale each task vector, then sum
        from fusion_bench.method.dare.utils import module_random_drop_

        def run(taus):
            # In place, as FusionBench does on the task vectors it owns (it rebinds each tensor's
            # .data, freeing the old values): later repeats drop from dropped inputs, the same work.
            for tau in taus:
                module_random_drop_(tau, 0.5, rescale=True)
            return state_dict_mul(state_dict_sum(taus), 1.0)
    elif method == "magmax":
        from fusion_bench.method.magmax.magmax import _magmax_select

        def run(taus):
            return _magmax_select(taus)
    elif method == "ties":
        from fusion_bench.method.ties_merging.ties_merging_utils import (
            state_dict_to_vector,
            ties_merging,
            vector_to_state_dict,
        )

        def run(taus):
            flat = torch.vstack([state_dict_to_vector(tau) for tau in taus])
            merged = ties_merging(flat, reset_thresh=20, merge_func="mean")  # weaving's disjoint mean
            return vector_to_state_dict(merged, taus[0])
    elif method == "iso_c":
        from fusion_bench.method.isotropic_merging.iso_utils import iso_c

        def run(taus):
            return iso_c(taus, accelerator="cpu")
    elif method == "tsv":
        from fusion_bench.method.task_singular_vector.utils.TSVM_utils import compute_and_sum_svd_mem_reduction

        def run(taus):
            return compute_and_sum_svd_mem_reduction(taus, accelerator="cpu")
    else:
        raise SystemExit(f"no FusionBench function for {method}")
    return run


def _definitions(path: Path) -> dict[str, object]:
    """A script's leading imports and function definitions, executed (the rest of the script is
    not: pcb-merging.py goes on at top level with an experiment on its authors' checkpoints)."""
    import ast

    tree = ast.parse(path.read_text(), str(path))
    kept = []
    for node in tree.body:  # the leading imports and definitions, up to the first other statement
        if not isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef)):
            break
        kept.append(node)
    tree.body = kept
    namespace: dict[str, object] = {"__name__": path.stem.replace("-", "_"), "__file__": str(path)}
    exec(compile(tree, str(path), "exec"), namespace)  # noqa: S102 (the authors' functions, pinned commit)
    return namespace


def _flatten(tau):  # noqa: ANN001, ANN202
    import torch

    return torch.cat([tau[key].reshape(-1) for key in sorted(tau)])


def _unflatten(vector, like):  # noqa: ANN001, ANN202
    out, offset = {}, 0
    for key in sorted(like):
        numel = like[key].numel()
        out[key] = vector[offset:offset + numel].view(like[key].shape)
        offset += numel
    return out


def _source_call(impl: str):  # noqa: ANN202 (runs in FusionBench's environment)
    """The authors' own functions, from benchmarks/.peers (see PEER_SOURCES)."""
    if impl == "breadcrumbs_repo":
        # src/task_vectors.py: TaskVectorMiddleKeep (the repository's README: "this is the Breadcrumbs
        # method"), remove_first=True: zero the top_k_remove largest |x| per row, then keep the
        # top_k_keep largest of the rest; the masked task vectors summed with its __add__.
        sys.path.insert(0, str(SOURCES / "breadcrumbs"))
        from src.task_vectors import TaskVectorMiddleKeep

        hp = MEMORY_HPARAMS["breadcrumbs"]

        def run(taus):
            # dict(tau): it replaces the values of the dict it is given, and the inputs must stay
            vectors = [TaskVectorMiddleKeep(vector=dict(tau), top_k_keep=hp["beta"], top_k_remove=hp["gamma"])
                       for tau in taus]
            return sum(vectors).vector
    elif impl == "pcb_repo":
        # pcb-merging.py: PCB_merge(flat_task_checks, pcb_ratio) on the flattened task vectors
        # (keys sorted), model-wide as in the paper; its magnitude clamp (`clamp(|X|, 0.0001,
        # 0.0001)`, fixed in that function) is called with the 0.01 of the authors' vision script
        # (vision_source_code/pcb.py) and of weaving, by rebinding its `clamp` to pass 0.01.
        import torch

        namespace = _definitions(SOURCES / "pcb" / "pcb-merging.py")
        original = namespace["clamp"]

        def clamp(x, min_ratio=0, max_ratio=0):  # noqa: ANN001, ANN202
            if (min_ratio, max_ratio) == (0.0001, 0.0001):
                min_ratio = max_ratio = 0.01
            return original(x, min_ratio, max_ratio)

        namespace["clamp"] = clamp
        pcb_merge = namespace["PCB_merge"]

        def run(taus):
            flat = torch.vstack([_flatten(tau) for tau in taus])
            merged, _, _ = pcb_merge(flat, pcb_ratio=MEMORY_HPARAMS["pcb"]["ratio"])
            return _unflatten(merged, taus[0])
    else:
        raise SystemExit(f"no source peer {impl}")
    return run


def memory_worker(args: argparse.Namespace) -> dict[str, object]:
    """One in-memory measurement, in this fresh process (weaving's or FusionBench's environment)."""
    import contextlib
    import gc
    import io

    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    files = sorted(Path(args.inputs).glob("tau_*.safetensors"))
    # copies in anonymous memory: load_file's tensors may map the file, paged in during the call
    taus = [{k: v.clone() for k, v in load_file(str(f)).items()} for f in files]
    if args.max_params:  # the same leading keys (sorted) for every implementation
        keep, total = [], 0
        for key in sorted(taus[0]):
            total += taus[0][key].numel()
            if total > args.max_params:
                break
            keep.append(key)
        taus = [{k: tau[k] for k in keep} for tau in taus]
    gc.collect()
    if args.impl == "weaving":
        from weaving import merge

        hparams = MEMORY_HPARAMS.get(args.method, {})

        def call(t):
            return merge(args.method, t, lam=1.0, **hparams)
    elif args.impl == "fusionbench":
        call = _fusionbench_call(args.method)
    else:
        call = _source_call(args.impl)
    warmup = [{k: (v if v.ndim == 0 else v[:2]).clone() for k, v in list(tau.items())[:4]} for tau in taus]
    with contextlib.redirect_stdout(io.StringIO()):  # FusionBench prints per key
        call(warmup)
    del warmup
    gc.collect()
    baseline_kib = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    walls = []
    for repeat in range(args.repeats):
        with contextlib.redirect_stdout(io.StringIO()):
            start = time.perf_counter()
            result = call(taus)
            walls.append(time.perf_counter() - start)
        if repeat < args.repeats - 1 or not args.save:
            del result
        gc.collect()
    peak_kib = status_kib("VmHWM")
    if args.save:  # the last result, for the comparison (after the peak was read)
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in result.items()}, args.save)
    return {"impl": args.impl, "method": args.method, "tasks": len(taus), "wall_s": round(min(walls), 3),
            "wall_s_all": [round(w, 3) for w in walls], "peak_delta_mib": round((peak_kib - baseline_kib) / 1024, 1),
            "inputs_mib": round(sum(v.numel() * v.element_size() for tau in taus for v in tau.values()) / 2**20, 1),
            "torch": torch.__version__, "parameters": sum(v.numel() for v in taus[0].values()),
            "hparams": MEMORY_HPARAMS.get(args.method, {})}


def write_memory_inputs(folder: Path, tasks: int, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(HERE))
    from bench_merge import model_shapes

    shapes = model_shapes(quick=False)
    generator = torch.Generator().manual_seed(seed)
    for t in range(tasks):
        tau = {key: 1e-3 * torch.randn(shape, generator=generator) for key, shape in shapes.items()}
        save_file(tau, str(folder / f"tau_{t}.safetensors"))


def _available_gib() -> float:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def compare_results(a: Path, b: Path) -> dict[str, object]:
    """Max abs difference of two merged task vectors (same keys), and how many entries differ."""
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    if sorted(x) != sorted(y):
        return {"error": f"keys differ: {sorted(set(x) ^ set(y))[:3]}"}
    diff, count, scale, numel = 0.0, 0, 0.0, 0
    for key in x:
        d = (x[key].double() - y[key].double()).abs()
        diff, count = max(diff, float(d.max()) if d.numel() else 0.0), count + int((d > 0).sum())
        scale, numel = max(scale, float(x[key].abs().max()) if d.numel() else 0.0), numel + d.numel()
    return {"max_abs_diff": diff, "entries_differing": count, "entries": numel, "max_abs_weaving": scale}


def run_memory(folder: Path, method: str, impl: str, repeats: int, max_params: int = 0,
               save: Path | None = None) -> dict[str, object]:
    python = sys.executable if impl == "weaving" else str(python_of("fusionbench"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if impl == "weaving":
        env["PYTHONPATH"] = str(ROOT / "src")
    else:
        env.pop("PYTHONPATH", None)
    command = [python, __file__, "--memory-worker", "--impl", impl, "--method", method, "--inputs", str(folder),
               "--repeats", str(repeats)]
    if max_params:
        command += ["--max-params", str(max_params)]
    if save is not None:
        command += ["--save", str(save)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"impl": impl, "method": method, "error": tail, "returncode": done.returncode}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- streaming


def build_llama(folder: Path, tasks: int, seed: int) -> dict[str, object]:
    """A random ~218M-parameter Llama saved by transformers (sharded), and `tasks` perturbed copies."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                         num_attention_heads=16, num_key_value_heads=16, tie_word_embeddings=False,
                         torch_dtype="float32")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float()
    model.save_pretrained(folder / "pretrained", max_shard_size="200MB")
    base = {name: p.detach().clone() for name, p in model.named_parameters()}
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for t in range(tasks):
            for name, p in model.named_parameters():
                p.copy_(base[name] + 1e-3 * torch.randn(p.shape, generator=generator))
            model.save_pretrained(folder / f"finetuned_{t}", max_shard_size="200MB")
    return {"parameters": sum(v.numel() for v in base.values()), "config": "LlamaConfig(vocab 32000, width 1024, "
            "MLP 2816, 12 layers, 16 heads, untied head), float32, 200 MB shards"}


def _timed(command: list[str], env: dict[str, str]) -> dict[str, object]:
    """Wall time and peak RSS of `command`, started by a fresh small Python process (a child
    forked from this process, which has torch loaded, would count this process's resident set
    until it execs)."""
    launcher = [sys.executable, "-S", __file__, "--timed-child", "--", *command]
    done = subprocess.run(launcher, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["(no output)"])[-1], "returncode": done.returncode}
    return json.loads(done.stdout.strip().splitlines()[-1])


def timed_child(command: list[str]) -> dict[str, object]:
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = child.stderr.read().decode(errors="replace") if child.stderr else ""
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    result: dict[str, object] = {"wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}
    if code != 0:
        result["error"] = (stderr.strip().splitlines() or ["(no output)"])[-1]
        result["returncode"] = code
    return result


def run_stream(folder: Path, method: str, impl: str, tasks: int) -> dict[str, object]:
    import shutil

    out = folder / f"out_{impl}_{method}"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    finetuned = [str(folder / f"finetuned_{t}") for t in range(tasks)]
    if impl == "weaving":
        env["PYTHONPATH"] = str(ROOT / "src")
        command = [sys.executable, "-m", "weaving.cli", "merge", "--pretrained", str(folder / "pretrained"),
                   "--finetuned", *finetuned, "--method", method, "--hash", "none", "--quiet",
                   "--out", str(out) + "/"]
        for assignment in WEAVING_SET[method]:
            command += ["--set", assignment]
    else:
        env.pop("PYTHONPATH", None)
        name, params, _ = MERGEKIT[method]
        lines = [f"merge_method: {name}", f"base_model: {folder / 'pretrained'}", "dtype: float32", "models:"]
        for path in finetuned:
            lines += [f"  - model: {path}", "    parameters:", "      weight: 1.0"]
            lines += [f"      {k}: {v}" for k, v in params.items()]
        config = folder / f"mergekit_{method}.yaml"
        config.write_text("\n".join(lines) + "\n")
        command = [str(PEERS["mergekit"]["venv"] / "bin" / "mergekit-yaml"), str(config), str(out), "--quiet"]
    result = {"impl": impl, "method": method, **_timed(command, env)}
    shutil.rmtree(out, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------- tables


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def memory_table(results: list[dict[str, object]]) -> str:
    by = {(r["impl"], r["method"]): r for r in results}
    compared = any("comparison" in r for r in results)
    lines = ["| method | weaving | FusionBench (or the named peer) | time weaving / peer | memory weaving / peer |"
             + (" max abs difference (scale) |" if compared else ""),
             "|---|---|---|---|---|" + ("---|" if compared else "")]
    for method in dict.fromkeys(r["method"] for r in results):
        peer = PEER_OF.get(method, "fusionbench")
        w, f = by.get(("weaving", method)), by.get((peer, method))

        def cell(r):
            if r is None:
                return "not run"
            if "error" in r:
                return f"{'not run' if r.get('skipped') else 'failed'}: {r['error'][:100]}"
            name = f" ({PEER_NAMES[r['impl']]})" if r["impl"] not in ("weaving", "fusionbench") else ""
            return f"{r['wall_s']:.2f} s, {r['peak_delta_mib']:,.0f} MiB{name}"

        ok = w and f and "error" not in w and "error" not in f
        row = (f"| {method} | {cell(w)} | {cell(f)} | "
               f"{_ratio(w['wall_s'], f['wall_s']) if ok else '-'} | "
               f"{_ratio(w['peak_delta_mib'], f['peak_delta_mib']) if ok else '-'} |")
        if compared:
            c = (f or {}).get("comparison") or {}
            row += (f" {c['max_abs_diff']:.2g} ({c['max_abs_weaving']:.2g}), {c['entries_differing']:,} of "
                    f"{c['entries']:,} differ |" if "max_abs_diff" in c else f" {c.get('error', '-')} |")
        lines.append(row)
    return "\n".join(lines)


def stream_table(results: list[dict[str, object]]) -> str:
    best: dict[tuple[str, str], dict[str, object]] = {}
    for r in results:
        key = (r["impl"], r["method"])
        if "error" in r:
            best.setdefault(key, r)
        elif key not in best or "error" in best[key] or r["wall_s"] < best[key]["wall_s"]:
            best[key] = r
    lines = ["| method | weaving | mergekit | time weaving / mergekit | peak RSS weaving / mergekit |",
             "|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in results):
        w, m = best.get(("weaving", method)), best.get(("mergekit", method))

        def cell(r):
            if r is None:
                return "not run"
            if "error" in r:
                return f"failed: {r['error'][:80]}"
            return f"{r['wall_s']:.1f} s, {r['peak_rss_mib']:,.0f} MiB"

        ok = w and m and "error" not in w and "error" not in m
        lines.append(f"| {method} | {cell(w)} | {cell(m)} | {_ratio(w['wall_s'], m['wall_s']) if ok else '-'} | "
                     f"{_ratio(w['peak_rss_mib'], m['peak_rss_mib']) if ok else '-'} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", action="store_true", help="create the peers' virtual environments first")
    parser.add_argument("--setup-sources", action="store_true",
                        help="only the authors' code of Breadcrumbs and PCB (part of --setup), into benchmarks/.peers")
    parser.add_argument("--setup-timeout", type=int, default=1200, help="seconds per setup step (default 1200)")
    parser.add_argument("--quick", action="store_true",
                        help=f"in memory only {', '.join(QUICK_MEMORY_METHODS)}; 2 repeats in memory, 1 streaming")
    parser.add_argument("--memory-methods", nargs="*", help="in-memory methods (default: all, or --quick's)")
    parser.add_argument("--stream-methods", nargs="*", default=list(STREAM_METHODS))
    parser.add_argument("--tasks", type=int, default=8, help="T in memory (default 8)")
    parser.add_argument("--stream-tasks", type=int, default=3, help="fine-tuned models streamed (default 3)")
    parser.add_argument("--repeats", type=int, help="in-memory repeats (default 3, --quick 2)")
    parser.add_argument("--stream-repeats", type=int, help="streaming repeats (default 2, --quick 1)")
    parser.add_argument("--dir", type=Path, help="scratch folder for the inputs (default: a temporary one)")
    parser.add_argument("--stream-dir", type=Path,
                        help="folder of the streaming inputs, kept: built there unless it holds them already "
                             "(before/after runs on the same files)")
    parser.add_argument("--stream-impls", nargs="+", choices=("weaving", "mergekit"), default=["weaving", "mergekit"],
                        help="streaming: which tools to run (default both)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--sources-git", type=Path,
                        help="--setup: folder of local bare mirrors <owner>+<name>/repo of the authors' repositories "
                             "(default: clone from GitHub)")
    parser.add_argument("--max-params", type=int, default=0,
                        help="in memory: only the leading keys (sorted) up to this many parameters per task vector")
    parser.add_argument("--compare", action="store_true",
                        help="in memory: save each result and report the max abs difference weaving - peer")
    parser.add_argument("--no-readme", action="store_true", help="do not write the tables into benchmarks/README.md")
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--timed-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("child_command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.timed_child:
        print(json.dumps(timed_child(args.child_command[1:] if args.child_command[:1] == ["--"] else args.child_command)))
        return
    if args.memory_worker:
        print(json.dumps(memory_worker(args)))
        return
    setup_status = {**setup(args.setup_timeout)} if args.setup else None
    if args.setup or args.setup_sources:
        setup_status = {**(setup_status or {}), **setup_sources(args.sources_git, args.setup_timeout)}
    peers = peer_status()
    print(f"peers: {peers}", file=sys.stderr, flush=True)
    memory_methods = args.memory_methods if args.memory_methods is not None else list(
        QUICK_MEMORY_METHODS if args.quick else MEMORY_METHODS)
    repeats = args.repeats or (2 if args.quick else 3)
    stream_repeats = args.stream_repeats or (1 if args.quick else 2)
    memory: list[dict[str, object]] = []
    stream: list[dict[str, object]] = []
    started = time.time()
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        folder = Path(scratch)
        if memory_methods:
            (folder / "memory").mkdir()
            write_memory_inputs(folder / "memory", args.tasks, args.seed)
            for method in memory_methods:
                peer = PEER_OF.get(method, "fusionbench")
                saved = {}
                for impl in ("weaving", peer):
                    need = HEAVY_GIB.get((impl, method)) if not args.max_params else None
                    save = folder / f"result_{impl}_{method}.safetensors" if args.compare else None
                    if impl != "weaving" and peers[peer] != "ok":
                        result = {"impl": impl, "method": method, "error": f"{PEER_NAMES[peer]} {peers[peer]}"}
                    elif need and _available_gib() < need:
                        result = {"impl": impl, "method": method, "skipped": True,
                                  "error": f"needs ~{need:.0f} GiB, {_available_gib():.1f} GiB available"}
                    else:
                        result = run_memory(folder / "memory", method, impl, repeats, args.max_params, save)
                        if save is not None and save.exists():
                            saved[impl] = save
                    if impl == peer and len(saved) == 2:
                        result["comparison"] = compare_results(saved["weaving"], saved[peer])
                    memory.append(result)
                    print(json.dumps(result), file=sys.stderr, flush=True)
                for path in saved.values():
                    path.unlink()
            for f in (folder / "memory").iterdir():
                f.unlink()
        model = None
        if args.stream_methods:
            if args.stream_dir is not None:
                folder = args.stream_dir
                folder.mkdir(parents=True, exist_ok=True)
            if args.stream_dir is not None and all((folder / name).is_dir() for name in
                                                   ["pretrained", *(f"finetuned_{t}" for t in range(args.stream_tasks))]):
                model = {"reused": str(folder)}
            else:
                model = build_llama(folder, args.stream_tasks, args.seed)
            for f in folder.rglob("*.safetensors"):  # into the page cache, for both tools alike
                with open(f, "rb") as handle:
                    while handle.read(1 << 24):
                        pass
            for repeat in range(stream_repeats):
                for method in args.stream_methods:
                    order = ("weaving", "mergekit") if repeat % 2 == 0 else ("mergekit", "weaving")
                    for impl in (impl for impl in order if impl in args.stream_impls):
                        if impl == "mergekit" and peers["mergekit"] != "ok":
                            result = {"impl": impl, "method": method, "error": f"mergekit {peers['mergekit']}"}
                        else:
                            result = run_stream(folder, method, impl, args.stream_tasks)
                        stream.append({**result, "repeat": repeat})
                        print(json.dumps(stream[-1]), file=sys.stderr, flush=True)
    subset = (f", the leading keys up to {args.max_params / 1e6:g}M parameters (`--max-params`)"
              if args.max_params else "")
    tables = (f"In memory (ViT-B-32 image encoder task vectors{subset}, T = {args.tasks}, fastest of {repeats}; "
              f"time, peak memory above the inputs):\n\n{memory_table(memory)}\n\n"
              f"Streaming (Llama ~218M parameters, {args.stream_tasks} fine-tuned copies, fastest of "
              f"{stream_repeats}; wall time, peak RSS of the child process):\n\n{stream_table(stream)}")
    print(tables)
    command = " ".join(["python", "benchmarks/bench_peers.py", *sys.argv[1:]])
    payload = {
        "command": command, "weaving_src": str(ROOT / "src"), "quick": args.quick, "tasks": args.tasks, "max_params": args.max_params,
        "sources": PEER_SOURCES, "stream_tasks": args.stream_tasks,
        "repeats": repeats, "stream_repeats": stream_repeats, "threads": 1, "peers": peers,
        "setup": setup_status, "packages": {k: v["packages"] for k, v in PEERS.items()}, "model": model,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg()},
        "elapsed_s": round(time.time() - started, 1), "memory": memory, "stream": stream,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, args.out)
    if not args.no_readme:
        write_readme(tables, command, payload)


BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"


def write_readme(tables: str, command: str, payload: dict[str, object]) -> None:
    """Replace the generated block of the README's "Peers" section (added at the end if missing)."""
    block = (f"{BEGIN}\nGenerated by `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{payload['elapsed_s']:.0f} s, load average at the end "
             f"{', '.join(f'{x:.1f}' for x in payload['machine']['load_average_at_end'])}; peers: "
             f"{', '.join(f'{k} {v}' for k, v in payload['peers'].items())}). Results: `results/peers.json`.\n\n"
             f"{tables}\n{END}")
    text = README.read_text()
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + ("\n\n## Peers: FusionBench and mergekit (`bench_peers.py`)\n\n"
                                    "```console\npython benchmarks/bench_peers.py --setup --quick\n```\n\n"
                                    f"{block}\n")
    README.write_text(text)


if __name__ == "__main__":
    main()
