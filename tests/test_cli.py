"""The ``weaving`` command line end to end, on small checkpoints in every input format."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from weaving import METHODS, POOLINGS, apply_task_vector, merge, task_vectors, weave
from weaving.cli import main, parse_assignment

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHAPES = {
    "enc.weight": (6, 5),
    "enc.bias": (6,),
    "head.weight": (4, 6),
    "logit_scale": (),
    "zz_last.weight": (3, 4),
}
FORMATS = ("safetensors", "pt", "sharded")


def make_models(seed: int = 0, tasks: int = 3) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    pretrained = {key: torch.randn(shape, generator=g) for key, shape in SHAPES.items()}
    pretrained["position_ids"] = torch.arange(7, dtype=torch.int64).reshape(1, 7)
    finetuned = []
    for _ in range(tasks):
        model = {k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
                 for k, v in pretrained.items()}
        finetuned.append(model)
    return pretrained, finetuned


def write_checkpoint(path: Path, state: dict[str, torch.Tensor], fmt: str) -> Path:
    """``path`` without suffix; returns what to pass on the command line."""
    if fmt == "safetensors":
        save_file(state, path.with_suffix(".safetensors"))
        return path.with_suffix(".safetensors")
    if fmt == "pt":
        torch.save(state, path.with_suffix(".pt"))
        return path.with_suffix(".pt")
    path.mkdir()  # sharded, Hugging Face layout: two shards and model.safetensors.index.json
    keys = sorted(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves, start=1):
        name = f"model-{i:05d}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, path / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return path


class Setup:
    def __init__(self, root: Path, fmt: str, pretrained: dict[str, torch.Tensor],
                 finetuned: list[dict[str, torch.Tensor]]) -> None:
        self.root = root
        self.pretrained = pretrained
        self.finetuned = finetuned
        self.pretrained_path = write_checkpoint(root / "pretrained", pretrained, fmt)
        self.finetuned_paths = [write_checkpoint(root / f"task{i}", sd, fmt) for i, sd in enumerate(finetuned)]
        self.out = root / "out" / "merged.safetensors"
        self.out.parent.mkdir()

    def args(self, command: str, method: str, *extra: str) -> list[str]:
        return [command, "--pretrained", str(self.pretrained_path), "--finetuned",
                *map(str, self.finetuned_paths), "--method", method, "--out", str(self.out), "--quiet", *extra]


@pytest.fixture(params=FORMATS)
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    pretrained, finetuned = make_models()
    return Setup(tmp_path, request.param, pretrained, finetuned)


@pytest.fixture
def small(tmp_path: Path) -> Setup:
    pretrained, finetuned = make_models()
    return Setup(tmp_path, "safetensors", pretrained, finetuned)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_close_state(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for key in expected:
        assert actual[key].dtype == expected[key].dtype, key
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-6, atol=1e-6, msg=key)


def hparams_for(method: str) -> tuple[list[str], dict[str, float]]:
    """A non-default setting for each method with hyper-parameters (as --set and as kwargs)."""
    chosen = {"ties": {"density": 0.3}, "dare": {"p": 0.25}, "breadcrumbs": {"beta": 0.5, "gamma": 0.1},
              "pcb": {"ratio": 0.3}}.get(method, {})
    return [arg for k, v in chosen.items() for arg in ("--set", f"{k}={v}")], chosen


# ---------------------------------------------------------------- results


@pytest.mark.parametrize("method", sorted(METHODS))
def test_merge_equals_in_memory_api(setup: Setup, method: str, capsys: pytest.CaptureFixture[str]) -> None:
    sets, kwargs = hparams_for(method)
    code, _, err = run(setup.args("merge", method, "--lam", "0.7", "--seed", "3", *sets), capsys)
    assert code == 0, err
    taus = task_vectors(setup.pretrained, setup.finetuned)
    expected = apply_task_vector(setup.pretrained, merge(method, taus, lam=0.7, seed=3, **kwargs))
    assert_close_state(load_file(setup.out), expected)


@pytest.mark.parametrize("method, pooling, pool_over", [
    *[("ties", pooling, pool_over) for pooling in sorted(POOLINGS) for pool_over in ("all", "augmented")],
    ("dare", "random", "all"), ("tsv", "magmax", "augmented"), ("pcb", "avg", "all"),
])
def test_weave_equals_in_memory_api(small: Setup, method: str, pooling: str, pool_over: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    sets, kwargs = hparams_for(method)
    argv = small.args("weave", method, "--lambdas", "0.1:1.5:0.2", "--pooling", pooling,
                      "--pool-over", pool_over, "--seed", "5", *sets)
    code, _, err = run(argv, capsys)
    assert code == 0, err
    lambdas = [0.1, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.5]
    taus = task_vectors(small.pretrained, small.finetuned)
    pooled = weave(method, taus, lambdas=lambdas, pooling=pooling, pool_over=pool_over, seed=5, **kwargs)
    assert_close_state(load_file(small.out), apply_task_vector(small.pretrained, pooled))
    code, _, err = run(argv + ["--materialize"], capsys)  # Algorithm 1 as written: the same model
    assert code == 0, err
    assert_close_state(load_file(small.out), apply_task_vector(small.pretrained, pooled))


def test_weave_in_every_format_with_explicit_list(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(setup.args("weave", "ties", "--lambdas", "0.2,0.5,1.0", "--pooling", "magmax"), capsys)
    assert code == 0, err
    taus = task_vectors(setup.pretrained, setup.finetuned)
    pooled = weave("ties", taus, lambdas=[0.2, 0.5, 1.0], pooling="magmax", pool_over="all", seed=0)
    assert_close_state(load_file(setup.out), apply_task_vector(setup.pretrained, pooled))


def test_task_arithmetic_by_hand(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(setup.args("merge", "task_arithmetic", "--lam", "0.3"), capsys)
    assert code == 0, err
    out = load_file(setup.out)
    for key, base in setup.pretrained.items():
        if base.is_floating_point():
            expected = base.double() + 0.3 * sum(ft[key].double() - base.double() for ft in setup.finetuned)
            torch.testing.assert_close(out[key].double(), expected, rtol=0, atol=1e-6)
        else:
            assert torch.equal(out[key], base)


def test_weave_avg_over_all_by_hand(small: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    """avg over A* with task arithmetic: (sum tau + sum(lambdas) * sum tau) / (T + K)."""
    code, _, err = run(small.args("weave", "task_arithmetic", "--lambdas", "0.5,1.0"), capsys)
    assert code == 0, err
    out = load_file(small.out)
    for key, base in small.pretrained.items():
        if base.is_floating_point():
            total = sum(ft[key].double() - base.double() for ft in small.finetuned)
            expected = base.double() + (total + 1.5 * total) / (3 + 2)
            torch.testing.assert_close(out[key].double(), expected, rtol=0, atol=1e-6)


def test_bf16_checkpoints_keep_their_dtype(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pretrained, finetuned = make_models()
    to_bf16 = lambda sd: {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}
    s = Setup(tmp_path, "safetensors", to_bf16(pretrained), [to_bf16(f) for f in finetuned])
    code, _, err = run(s.args("merge", "ties"), capsys)
    assert code == 0, err
    taus = task_vectors(s.pretrained, s.finetuned)
    expected = apply_task_vector(s.pretrained, merge("ties", taus, lam=1.0))
    out = load_file(s.out)
    for key in expected:
        assert out[key].dtype == expected[key].dtype
        torch.testing.assert_close(out[key].float(), expected[key].float(), rtol=0.02, atol=0.02)


def test_metadata_records_request_and_inputs(small: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(small.args("weave", "ties", "--lambdas", "0.1:0.3:0.1", "--pooling", "random",
                                  "--pool-over", "augmented", "--seed", "7"), capsys)
    assert code == 0, err
    with safe_open(small.out, framework="pt") as handle:
        meta = handle.metadata()
    assert meta["command"] == "weave" and meta["method"] == "ties"
    assert json.loads(meta["hparams"]) == {"density": 0.2}  # the default, filled in
    assert json.loads(meta["lambdas"]) == [0.1, 0.2, 0.3]
    assert meta["lambdas_spec"] == "0.1:0.3:0.1"
    assert (meta["pooling"], meta["pool_over"], meta["seed"]) == ("random", "augmented", "7")
    assert json.loads(meta["materialize"]) is False
    assert meta["weaving_version"]
    sha = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()
    assert json.loads(meta["pretrained"]) == {"path": str(small.pretrained_path), "sha256": sha(small.pretrained_path)}
    assert json.loads(meta["finetuned"]) == [{"path": str(p), "sha256": sha(p)} for p in small.finetuned_paths]


def test_merge_metadata_has_lam_and_set_values(small: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(small.args("merge", "dare", "--lam", "0.5", "--set", "p=0.3"), capsys)
    assert code == 0, err
    meta = load_metadata(small.out)
    assert json.loads(meta["lam"]) == 0.5
    assert json.loads(meta["hparams"]) == {"p": 0.3, "seed": 0}
    assert "pooling" not in meta and "lambdas" not in meta


def load_metadata(path: Path) -> dict[str, str]:
    with safe_open(path, framework="pt") as handle:
        return handle.metadata()


def test_existing_output_is_overwritten(small: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    save_file({"stale": torch.zeros(1)}, small.out)
    code, _, err = run(small.args("merge", "task_arithmetic"), capsys)
    assert code == 0, err
    assert "stale" not in load_file(small.out)
    assert os.listdir(small.out.parent) == ["merged.safetensors"]


def test_methods_listing(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["methods"], ["--list"]):
        code, out, _ = run(argv, capsys)
        assert code == 0
        for name, method in METHODS.items():
            line = next(line for line in out.splitlines() if line.split() and line.split()[0] == name)
            for hparam, default in method.defaults.items():
                assert f"{hparam}={default:g}" in line
        assert all(p in out for p in POOLINGS)


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["weave", "--help"], capsys)
    assert code == 0 and "--lambdas" in out and "--pool-over" in out


@pytest.mark.parametrize("text, expected", [("density=0.2", ("density", 0.2)), ("seed=3", ("seed", 3)),
                                            ("flag=true", ("flag", True)), ("x=False", ("x", False)),
                                            ("name=abc", ("name", "abc"))])
def test_set_values_are_typed(text: str, expected: tuple[str, object]) -> None:
    key, value = parse_assignment(text)
    assert (key, value) == expected and type(value) is type(expected[1])


SUBPROCESS_ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def test_console_script_as_subprocess(small: Setup) -> None:
    script = Path(sys.executable).with_name("weaving")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "weaving.cli"]
    done = subprocess.run(command + small.args("merge", "ties", "--set", "density=0.5"),
                          capture_output=True, text=True, env=SUBPROCESS_ENV)
    assert done.returncode == 0, done.stderr
    taus = task_vectors(small.pretrained, small.finetuned)
    assert_close_state(load_file(small.out), apply_task_vector(small.pretrained, merge("ties", taus, density=0.5)))


def test_error_as_subprocess_is_one_line_without_traceback(small: Setup) -> None:
    done = subprocess.run([sys.executable, "-m", "weaving.cli"] + small.args("merge", "ties", "--set", "density=2"),
                          capture_output=True, text=True, env=SUBPROCESS_ENV)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "weaving: error: method 'ties': hyper-parameter 'density' must be in (0, 1], got 2.0"]
    assert not small.out.exists()


# ---------------------------------------------------------------- bad inputs


def assert_failed(small: Setup, code: int, err: str, expected_code: int, *fragments: str) -> None:
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("weaving: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert os.listdir(small.out.parent) == [], "an output or temporary file was left behind"


def replace_finetuned(small: Setup, index: int, state: dict[str, torch.Tensor]) -> Path:
    path = small.finetuned_paths[index]
    save_file(state, path)
    return path


def test_key_sets_differ(small: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    state = dict(small.finetuned[1])
    del state["head.weight"]
    path = replace_finetuned(small, 1, state)
    code, _, err = run(small.args("merge", "ties"), capsys)
    assert_failed(small, code, err, 1, str(path), "missing 'head.weight'")
    path = replace_finetuned(small, 1, {**small.finetuned[1], "extra.bias": torch.zeros(2)})
    code, _, err = run(small.args("weave", "ties", "--lambdas", "0.1,0.2"), capsys)
    assert_failed(small, code, err, 1, str(path), "extra 'extra.bias'")


def test_shape_mismatch(small: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    path = replace_finetuned(small, 2, {**small.finetuned[2], "enc.bias": torch.zeros(7)})
    code, _, err = run(small.args("merge", "task_arithmetic"), capsys)
    assert_failed(small, code, err, 1, str(path), "'enc.bias'", "(7,)", "(6,)")


def test_dtype_mismatch(small: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    """Floating dtypes may differ (issue 16: computed in the more precise one, see
    test_cli_llm.py); an integer tensor where the pretrained one is floating is refused."""
    integer = small.finetuned[0]["enc.weight"].round().to(torch.int32)
    path = replace_finetuned(small, 0, {**small.finetuned[0], "enc.weight": integer})
    code, _, err = run(small.args("merge", "task_arithmetic"), capsys)
    assert_failed(small, code, err, 1, str(path), "'enc.weight'", "int32", "float32")


@pytest.mark.parametrize("value, where, method", [
    (float("nan"), "finetuned", "task_arithmetic"), (float("inf"), "finetuned", "ties"),
    (float("-inf"), "finetuned", "magmax"), (float("nan"), "pretrained", "ties"),
    (float("inf"), "pretrained", "task_arithmetic"), (float("nan"), "finetuned", "pcb"),
])
def test_non_finite_input(small: Setup, value: float, where: str, method: str,
                          capsys: pytest.CaptureFixture[str]) -> None:
    """In the last key (sorted): found mid-stream, after other keys have been written."""
    source = small.pretrained if where == "pretrained" else small.finetuned[2]
    bad = source["zz_last.weight"].clone()
    bad[1, 2] = value
    if where == "pretrained":
        save_file({**source, "zz_last.weight": bad}, small.pretrained_path)
        path = small.pretrained_path
    else:
        path = replace_finetuned(small, 2, {**source, "zz_last.weight": bad})
    code, _, err = run(small.args("merge", method), capsys)
    assert_failed(small, code, err, 1, str(path), "'zz_last.weight'", "NaN or inf")


def test_failure_leaves_existing_output_untouched(small: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    save_file({"previous": torch.ones(2)}, small.out)
    before = small.out.read_bytes()
    bad = small.finetuned[0]["zz_last.weight"].clone()
    bad[0, 0] = float("nan")
    replace_finetuned(small, 0, {**small.finetuned[0], "zz_last.weight": bad})
    code, _, err = run(small.args("merge", "task_arithmetic"), capsys)
    assert code == 1 and "NaN" in err
    assert small.out.read_bytes() == before
    assert os.listdir(small.out.parent) == ["merged.safetensors"]


def test_no_finetuned_model(small: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["merge", "--pretrained", str(small.pretrained_path), "--finetuned", "--method", "ties",
            "--out", str(small.out)]
    code, _, err = run(argv, capsys)
    assert_failed(small, code, err, 2, "--finetuned", "expected at least one argument")


@pytest.mark.parametrize("spec, fragment", [
    ("", "is empty"), (" ", "is empty"), ("1.0:0.1:0.1", "stop (0.1) must be >= start (1.0)"),
    ("0.1,nan", "must be finite"), ("nan:1:0.1", "must be finite"), ("0.1:1.0:0", "step must be > 0"),
    ("0.1,,0.3", "must be a number"), ("a:b", "start:stop:step"),
])
def test_bad_search_space(small: Setup, spec: str, fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(small.args("weave", "ties", "--lambdas", spec), capsys)
    assert_failed(small, code, err, 2, fragment)


def test_unknown_method_pooling_hparam_list_valid_choices(small: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(small.args("merge", "tiez"), capsys)
    assert_failed(small, code, err, 2, "unknown method 'tiez'", "valid: " + ", ".join(sorted(METHODS)))
    code, _, err = run(small.args("weave", "ties", "--lambdas", "0.1", "--pooling", "max"), capsys)
    assert_failed(small, code, err, 2, "unknown pooling 'max'", "valid: " + ", ".join(sorted(POOLINGS)))
    code, _, err = run(small.args("merge", "ties", "--set", "densty=0.2"), capsys)
    assert_failed(small, code, err, 2, "'densty'", "valid: density")
    code, _, err = run(small.args("merge", "task_arithmetic", "--set", "p=0.2"), capsys)
    assert_failed(small, code, err, 2, "'p'", "valid: (none)")
    code, _, err = run(small.args("weave", "ties", "--lambdas", "0.1", "--pool-over", "some"), capsys)
    assert_failed(small, code, err, 2, "--pool-over", "'all'", "'augmented'")


@pytest.mark.parametrize("method, setting, interval", [
    ("ties", "density=0", "(0, 1]"), ("ties", "density=1.5", "(0, 1]"), ("ties", "density=-0.1", "(0, 1]"),
    ("dare", "p=1", "[0, 1)"), ("dare", "p=-0.1", "[0, 1)"),
    ("breadcrumbs", "beta=1.1", "[0, 1]"), ("breadcrumbs", "beta=-0.5", "[0, 1]"),
    ("breadcrumbs", "gamma=1.01", "[0, 1]"), ("breadcrumbs", "gamma=-1", "[0, 1]"),
    ("pcb", "ratio=0", "(0, 1]"), ("pcb", "ratio=1.5", "(0, 1]"),
    ("ties", "density=nan", "finite"), ("ties", "density=abc", "must be a float"),
])
def test_hparam_out_of_range(small: Setup, method: str, setting: str, interval: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(small.args("merge", method, "--set", setting), capsys)
    assert_failed(small, code, err, 2, f"method {method!r}", repr(setting.split("=")[0]), interval)


@pytest.mark.parametrize("method, setting", [("ties", "density=1"), ("dare", "p=0"), ("breadcrumbs", "beta=0"),
                                             ("breadcrumbs", "gamma=1"), ("pcb", "ratio=1")])
def test_hparam_range_ends_that_are_allowed(small: Setup, method: str, setting: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(small.args("merge", method, "--set", setting), capsys)
    assert code == 0, err


def test_bad_request_is_refused_before_reading_any_file(small: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad request with unreadable inputs: the request is what is reported (exit 2)."""
    small.pretrained_path.write_bytes(b"garbage")
    for argv, fragment in [(small.args("merge", "ties", "--set", "density=3"), "'density'"),
                           (small.args("weave", "ties", "--lambdas", ""), "is empty"),
                           (small.args("merge", "nope"), "unknown method"),
                           (small.args("merge", "ties", "--set", "density"), "KEY=VALUE"),
                           (small.args("merge", "ties", "--lam", "nan"), "--lam must be finite")]:
        code, _, err = run(argv, capsys)
        assert_failed(small, code, err, 2, fragment)


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "empty_folder"])
@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_unreadable_or_truncated_input(tmp_path: Path, damage: str, fmt: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    pretrained, finetuned = make_models()
    small = Setup(tmp_path, fmt, pretrained, finetuned)
    path = small.finetuned_paths[1]
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    else:
        path.unlink()
        path.mkdir()
    code, _, err = run(small.args("merge", "ties"), capsys)
    assert_failed(small, code, err, 1, str(path))


def test_sharded_input_with_missing_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pretrained, finetuned = make_models()
    small = Setup(tmp_path, "sharded", pretrained, finetuned)
    (small.finetuned_paths[0] / "model-00002-of-00002.safetensors").unlink()
    code, _, err = run(small.args("merge", "ties"), capsys)
    assert_failed(small, code, err, 1, "model.safetensors.index.json", "model-00002-of-00002.safetensors", "missing")


def test_output_path_problems(small: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    argv = small.args("merge", "ties")
    at_out = argv.index("--out") + 1
    argv[at_out] = str(small.root / "nowhere" / "m.safetensors")
    code, _, err = run(argv, capsys)
    assert_failed(small, code, err, 2, "does not exist")
    argv[at_out] = str(small.finetuned_paths[0])
    code, _, err = run(argv, capsys)
    assert_failed(small, code, err, 2, "is also an input")
    assert small.finetuned_paths[0].exists()


def test_missing_command_and_unknown_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([], capsys)
    assert code == 2 and err.startswith("weaving: error: a command is required")
    code, _, err = run(["merge", "--bogus"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("weaving: error: ")
