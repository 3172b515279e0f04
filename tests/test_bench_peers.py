"""Helpers of benchmarks/bench_peers.py that the peer comparison rests on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "benchmarks" / "bench_peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_definitions_stop_at_the_first_other_statement(tmp_path: Path) -> None:
    script = tmp_path / "a-script.py"
    script.write_text("import math\n\ndef f(x):\n    return math.floor(x)\n\nn = len(undefined)\nimport missing_module\n")
    namespace = _bench()._definitions(script)
    assert namespace["f"](2.5) == 2 and "n" not in namespace


def test_flatten_round_trip_in_sorted_key_order() -> None:
    bench = _bench()
    tau = {"b": torch.arange(6.0).view(2, 3), "a": torch.tensor(7.0), "c": torch.ones(4)}
    flat = bench._flatten(tau)
    assert flat.tolist() == [7.0, 0, 1, 2, 3, 4, 5, 1, 1, 1, 1]
    back = bench._unflatten(flat, tau)
    assert list(back) == ["a", "b", "c"] and all(torch.equal(back[k], tau[k]) for k in tau)


def test_compare_results(tmp_path: Path) -> None:
    bench = _bench()
    save_file({"x": torch.tensor([1.0, 2.0, -3.0])}, str(tmp_path / "a.safetensors"))
    save_file({"x": torch.tensor([1.0, 2.5, -3.0])}, str(tmp_path / "b.safetensors"))
    result = bench.compare_results(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert result == {"max_abs_diff": 0.5, "entries_differing": 1, "entries": 3, "max_abs_weaving": 3.0}
    save_file({"y": torch.zeros(1)}, str(tmp_path / "c.safetensors"))
    assert "error" in bench.compare_results(tmp_path / "a.safetensors", tmp_path / "c.safetensors")
