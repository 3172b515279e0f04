"""One request, validated once (issue 8, item 4): `weaving.request.validate_request` serves the
library API and the command line. Its errors name the library's arguments (``lam``) or the
CLI's flags (``--lam``), and both callers refuse the same bad requests, before reading a file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from cli_fixtures import make_models, run
from safetensors.torch import save_file

import weaving
import weaving.engine
from weaving import ParamError, merge, weave
from weaving.cli import CLI_WORDING, build_parser, build_request
from weaving.request import LIBRARY, MergeRequest, WeaveSpec, validate_request

NAN, INF = math.nan, math.inf


# ---------------------------------------------------------------- wording


@pytest.mark.parametrize("kwargs, library, cli", [
    (dict(lam=NAN), "lam must be a finite number, got nan", "--lam must be finite, got nan"),
    (dict(lam=1.0, seed=1.5), "seed must be an integer, got 1.5", "--seed must be an integer, got 1.5"),
    (dict(lam=1.0, method_seed=True), "method_seed must be an integer", "--set seed must be an integer"),
    (dict(), "give either lam (merge) or lambdas with a pooling (weave)",
     "give either --lam (merge) or --lambdas with a --pooling (weave)"),
    (dict(lam=0.5, pooling="avg"), "pooling 'avg' needs lambdas (weave), but lam=0.5",
     "--pooling 'avg' needs --lambdas (weave), but --lam=0.5"),
    (dict(lambdas=[0.1]), "weaving needs a pooling", "weaving needs a --pooling"),
    (dict(lambdas=[], pooling="avg"), "the search space (lambdas) is empty", "the search space (--lambdas) is empty"),
    (dict(lambdas=[0.1, INF], pooling="avg"), "lambdas[1] must be a finite number", "--lambdas[1] must be finite"),
    (dict(lambdas="0.1:1:0.1", pooling="avg"), "lambdas must be a sequence of numbers",
     "--lambdas must be a sequence of numbers"),
])
def test_errors_name_the_argument_or_the_flag(kwargs: dict, library: str, cli: str) -> None:
    for wording, fragment in ((LIBRARY, library), (CLI_WORDING, cli)):
        with pytest.raises(ParamError) as info:
            validate_request("ties", wording=wording, **kwargs)
        assert fragment in str(info.value), (fragment, str(info.value))


def test_mergekit_names_are_explained_in_the_cli_wording_only() -> None:
    with pytest.raises(ParamError, match=r"unknown method 'slerp' \(.*SLERP.*\); valid: breadcrumbs"):
        validate_request("slerp", lam=1.0, wording=CLI_WORDING)
    with pytest.raises(ParamError, match=r"^unknown method 'slerp'; valid: breadcrumbs"):
        validate_request("slerp", lam=1.0)
    with pytest.raises(ParamError, match=r"method 'ties': --set weight: .*--weights W1 W2.*; valid: density"):
        validate_request("ties", lam=1.0, hparams={"weight": 0.5}, wording=CLI_WORDING)
    with pytest.raises(ParamError, match=r"method 'ties': unknown hyper-parameter\(s\) 'weight'; valid: density"):
        validate_request("ties", lam=1.0, hparams={"weight": 0.5})


def test_the_method_seed_is_given_once() -> None:
    dare = validate_request("dare", lam=1.0, seed=3)
    assert dare.hparams["seed"] == 3 and dare.seed == 3
    assert validate_request("dare", lam=1.0, seed=3, method_seed=7).hparams["seed"] == 7
    assert validate_request("dare", lam=1.0, seed=3, hparams={"seed": 7}).hparams["seed"] == 7  # --set seed=7
    with pytest.raises(ParamError, match="given twice"):
        validate_request("dare", lam=1.0, hparams={"seed": 7}, method_seed=7)
    assert "seed" not in validate_request("ties", lam=1.0, method_seed=7).hparams  # ignored without a seed
    with pytest.raises(ParamError, match="unknown hyper-parameter"):  # --set seed=7 on a method without one
        validate_request("ties", lam=1.0, hparams={"seed": 7})


def test_a_request_is_a_merge_or_a_weave() -> None:
    merge_request = validate_request("ties", lam=0.5, hparams={"density": 0.3})
    assert merge_request.lam == 0.5 and merge_request.weave is None and merge_request.label == "ties"
    woven = validate_request("ties", lambdas=[0.5, 1], pooling="magmax", pool_over="augmented", materialize=1)
    assert woven.lam is None and isinstance(woven.weave, WeaveSpec)
    assert woven.weave.lambdas == (0.5, 1.0) and woven.weave.pooling.name == "magmax"
    assert woven.weave.pool_over == "augmented" and woven.weave.materialize is True
    with pytest.raises(ValueError, match="exactly one"):
        MergeRequest(None, {}, lam=None, weave=None)


# ---------------------------------------------------------------- the library and the CLI refuse the same requests


@pytest.fixture
def inputs(tmp_path: Path) -> dict:
    pretrained, finetuned = make_models()
    save_file(pretrained, tmp_path / "pre.safetensors")
    paths = []
    for i, state in enumerate(finetuned):
        save_file(state, tmp_path / f"ft{i}.safetensors")
        paths.append(tmp_path / f"ft{i}.safetensors")
    taus = [{k: (ft[k] - v) for k, v in pretrained.items() if v.is_floating_point()} for ft in finetuned]
    return {"pre": tmp_path / "pre.safetensors", "fts": paths, "taus": taus, "out": tmp_path / "out" / "o.safetensors"}


def _cli(inputs: dict, command: str, method: str, *extra: str) -> list[str]:
    return [command, "--pretrained", inputs["pre"], "--finetuned", *inputs["fts"], "--method", method,
            "--out", inputs["out"], "--quiet", *extra]


# (id, library call, CLI command and arguments, fragment in the library's error, fragment in the CLI's)
SAME_REFUSALS = [
    ("unknown method", ("merge", "tiez", {}), ("merge", "tiez"), "unknown method 'tiez'", "unknown method 'tiez'"),
    ("unknown hparam", ("merge", "ties", {"dens": 0.1}), ("merge", "ties", "--set", "dens=0.1"),
     "unknown hyper-parameter(s) 'dens'; valid: density", "unknown hyper-parameter(s) 'dens'; valid: density"),
    ("hparam range", ("merge", "ties", {"density": 0.0}), ("merge", "ties", "--set", "density=0"),
     "'density' must be in (0, 1]", "'density' must be in (0, 1]"),
    ("dare p", ("merge", "dare", {"p": 1.0}), ("merge", "dare", "--set", "p=1"), "'p' must be in [0, 1)",
     "'p' must be in [0, 1)"),
    ("lam", ("merge", "ties", {"lam": INF}), ("merge", "ties", "--lam", "inf"), "lam must be a finite number",
     "--lam must be finite"),
    ("lam nan", ("merge", "task_arithmetic", {"lam": NAN}), ("merge", "task_arithmetic", "--lam", "nan"),
     "lam must be a finite number", "--lam must be finite"),
    ("pooling", ("weave", "ties", {"lambdas": [0.1], "pooling": "max"}),
     ("weave", "ties", "--lambdas", "0.1", "--pooling", "max"), "unknown pooling 'max'", "unknown pooling 'max'"),
    ("pool over", ("weave", "ties", {"lambdas": [0.1], "pool_over": "some"}),
     ("weave", "ties", "--lambdas", "0.1", "--pool-over", "some"), "unknown pool_over 'some'", "--pool-over"),
    ("empty space", ("weave", "ties", {"lambdas": []}), ("weave", "ties", "--lambdas", ""), "is empty", "is empty"),
    ("non-finite lambda", ("weave", "ties", {"lambdas": [0.1, NAN]}), ("weave", "ties", "--lambdas", "0.1,nan"),
     "lambdas[1] must be a finite number", "must be finite"),
    ("method seed", ("weave", "dare", {"lambdas": [0.5], "method_seed": 1.5}),
     ("weave", "dare", "--lambdas", "0.5", "--set", "seed=1.5"), "method_seed must be an integer",
     "'seed' must be an integer"),
    ("seed", ("weave", "ties", {"lambdas": [0.5], "seed": 1.5}), ("weave", "ties", "--lambdas", "0.5", "--seed", "1.5"),
     "seed must be an integer", "--seed"),
]


@pytest.mark.parametrize("call, argv, library, cli", [case[1:] for case in SAME_REFUSALS],
                         ids=[case[0] for case in SAME_REFUSALS])
def test_the_library_and_the_cli_refuse_the_same_requests(inputs: dict, capsys: pytest.CaptureFixture[str],
                                                          call: tuple, argv: tuple, library: str, cli: str) -> None:
    function, method, kwargs = call
    with pytest.raises(ParamError) as info:
        if function == "merge":
            merge(method, inputs["taus"], **kwargs)
        else:
            weave(method, inputs["taus"], **kwargs)
    assert library in str(info.value), (library, str(info.value))
    inputs["out"].parent.mkdir()
    code, _, err = run(_cli(inputs, *argv), capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("weaving: error: "), err
    assert cli in lines[0], (cli, lines[0])
    assert list(inputs["out"].parent.iterdir()) == []


@pytest.mark.parametrize("argv, kwargs", [
    (("merge", "dare", "--lam", "0.7", "--seed", "3", "--set", "p=0.2"),
     dict(lam=0.7, seed=3, hparams={"p": 0.2})),
    (("merge", "dare", "--seed", "3", "--set", "seed=9"), dict(lam=1.0, seed=3, method_seed=9)),
    (("weave", "ties", "--lambdas", "0.2:1.0:0.4", "--pooling", "random", "--pool-over", "augmented",
      "--materialize", "--set", "density=0.4", "--seed", "5"),
     dict(lambdas=[0.2, 0.6, 1.0], pooling="random", pool_over="augmented", materialize=True, seed=5,
          hparams={"density": 0.4})),
])
def test_the_cli_builds_the_request_the_library_validates(inputs: dict, argv: tuple, kwargs: dict) -> None:
    args = build_parser().parse_args([str(a) for a in _cli(inputs, *argv)])
    _, request = build_request(args)
    assert request == validate_request(argv[1], **kwargs)


# ---------------------------------------------------------------- the split keeps every public name


ENGINE_NAMES = ["DictSource", "StateDictSource", "TensorDict", "apply_task_vector", "compute_dtype", "merge",
                "stream_merge", "task_vectors", "weave", "weave_from_merged"]
"""The names `weaving.engine` defined before the split (issue 8); new code imports them from
`weaving.sources`, `weaving.request`, `weaving.streaming` or `weaving`."""


def test_names_importable_before_the_split_still_are() -> None:
    for name in ENGINE_NAMES:
        assert getattr(weaving.engine, name) is not None, name
    for name in weaving.__all__:
        assert getattr(weaving, name) is not None, name
    assert weaving.engine.stream_merge is weaving.stream_merge
    assert weaving.engine.DictSource is weaving.DictSource
    assert {"MergeRequest", "validate_request", "stream_request"} <= set(weaving.__all__)
