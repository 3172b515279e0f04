"""One registry per kind, read everywhere: a throwaway method registered at run time is picked up
by the engine, the CLI listing, the params schema, the report and the artifact layout."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from weaving import catalogue, merge, weave
from weaving.catalogue import MethodEntry
from weaving.methods.base import HParam, PerTensorMethod

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def throwaway():
    """A deliberately non-linear method: f(taus, lam) = lam**2 * sum(taus) + offset."""
    module = types.ModuleType("throwaway_method")

    class Method(PerTensorMethod):
        def start(self, hparams, layout):
            run = super().start(hparams, layout)
            offset = hparams["offset"]
            run.finalize_at = lambda key, taus, lam: lam * lam * taus.sum(0) + offset
            return run

    module.METHOD = Method(name="throwaway", summary="lam^2 times the sum, plus an offset",
                           hparams=(HParam("offset", 0.0, float, -1.0, 1.0),), linear_in_lam=False,
                           merge_tensor=lambda taus, key, offset: taus.sum(0) + offset)
    sys.modules["throwaway_method"] = module
    catalogue.register_method(MethodEntry("throwaway", "Throwaway", "throwaway_method", "this test",
                                          recommended_lam=0.5))
    yield module.METHOD
    catalogue.unregister_method("throwaway")
    del sys.modules["throwaway_method"]


def _taus() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"w": torch.randn(3, 4, generator=g, dtype=torch.float64)} for _ in range(3)]


def test_the_engine_merges_and_weaves_a_registered_nonlinear_method_by_materialising(throwaway) -> None:
    taus = _taus()
    total = sum(t["w"] for t in taus)
    assert torch.allclose(merge("throwaway", taus, lam=0.5, offset=0.1)["w"], 0.25 * total + 0.1)
    lambdas = [0.5, 1.0, 2.0]
    woven = weave("throwaway", taus, lambdas, pooling="avg", pool_over="all", offset=0.1)["w"]
    members = [t["w"] for t in taus] + [lam * lam * total + 0.1 for lam in lambdas]
    assert torch.allclose(woven, torch.stack(members).mean(0))
    # the linear fast path would give the mean of lam * (total + 0.1) instead: the flag matters
    linear_guess = torch.stack([t["w"] for t in taus] + [lam * (total + 0.1) for lam in lambdas]).mean(0)
    assert not torch.allclose(woven, linear_guess)


def test_the_cli_lists_a_registered_method(throwaway, capsys) -> None:
    from weaving.cli import main

    assert main(["methods"]) == 0
    assert "throwaway" in capsys.readouterr().out


def test_params_accept_a_registered_method_and_default_its_recommended_lam(throwaway, tmp_path: Path) -> None:
    from weaving_pipeline.params import load_params

    raw = yaml.safe_load((ROOT / "profiles/smoke.yaml").read_text())
    raw["methods"].append("throwaway")
    raw["method_params"]["throwaway"] = {"hparams": {"offset": 0.1},
                                         "search_space": {s: [0.5, 1.0, 0.5] for s in ("mtl", "cl", "dg")}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    params = load_params(path)
    assert params.recommended_lam("throwaway") == 0.5
    raw["method_params"]["throwaway"]["hparams"]["offset"] = 5.0
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="offset"):
        load_params(path)


def test_the_report_labels_and_accepts_a_registered_method(throwaway, tmp_path: Path) -> None:
    from report_fixtures import make_run

    from weaving.report import build_report, load_metrics
    from weaving.report.tables import method_cell

    assert method_cell("throwaway").text == "Throwaway"
    root = make_run(methods=("throwaway", "ties")).write(tmp_path)
    loaded = load_metrics(root, ["tiny-clip"], ["mtl", "cl", "dg"], ["throwaway", "ties"])
    assert set(loaded.methods) == {"throwaway", "ties"}
    table2 = build_report({0: loaded}, "smoke")["tables/table2_data_free.md"].decode()
    assert "Throwaway" in table2


def test_woven_models_of_any_method_land_under_the_one_artifact(throwaway) -> None:
    from weaving_pipeline import paths

    artifact = Path(yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]["woven"]["path"])
    assert artifact in paths.woven("tiny-clip", "throwaway", "mtl", seed=0).parents
