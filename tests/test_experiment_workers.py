"""`evaluate_method(..., workers=N)`: evaluations in threads give the one-at-a-time result, bit for bit."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
import torch

from weaving.experiment import Scenario, evaluate_method


def _taus() -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return {f"t{i}": {"w": torch.randn(6, 5, generator=g), "b": torch.randn(5, generator=g)} for i in range(4)}


def correctness_of(vector: dict[str, torch.Tensor], task: str) -> torch.Tensor:
    """Per-image correctness that depends on the vector's bytes and the task only (as a real model's)."""
    digest = hashlib.sha256(task.encode())
    for key in sorted(vector):
        digest.update(vector[key].contiguous().numpy().tobytes())
    generator = torch.Generator().manual_seed(int.from_bytes(digest.digest()[:7], "big"))
    return torch.rand(64, generator=generator) < 0.6


def _evaluate(method: str, evaluate, workers: int) -> dict:
    taus = _taus()
    names = tuple(taus)
    scenarios = [Scenario(names, names), *(Scenario(tuple(n for n in names if n != held), (held,)) for held in names)]
    return evaluate_method(method, {}, taus, scenarios, lambdas=[0.25, 0.5, 1.0], recommended_lam=0.3,
                           poolings=["avg", "random", "magmax"], pool_over=["all", "augmented"], seed=3,
                           evaluate=evaluate, bootstrap={"resamples": 200, "level": 0.9, "seed": 1},
                           method_poolings={"tsv": {}}, workers=workers)


@pytest.mark.parametrize("method", ["task_arithmetic", "dare"])
@pytest.mark.parametrize("workers", [2, 3])
def test_workers_give_the_result_of_one_evaluation_at_a_time(method: str, workers: int) -> None:
    one_at_a_time = _evaluate(method, correctness_of, workers=1)
    assert _evaluate(method, correctness_of, workers=workers) == one_at_a_time


def test_evaluations_overlap_in_threads_and_the_vectors_waiting_are_bounded() -> None:
    lock = threading.Lock()
    running, most_running, calls = [0], [0], [0]
    threads: set[str] = set()

    def slow(vector, task):
        with lock:
            running[0] += 1
            calls[0] += 1
            most_running[0] = max(most_running[0], running[0])
            threads.add(threading.current_thread().name)
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return correctness_of(vector, task)

    _evaluate("task_arithmetic", slow, workers=2)
    assert most_running[0] == 2 and len(threads) == 2 and threading.main_thread().name not in threads
    most_running[0] = 0
    threads.clear()
    _evaluate("task_arithmetic", slow, workers=1)
    assert most_running[0] == 1 and threads == {threading.main_thread().name}


def test_a_failing_evaluation_stops_the_run_with_its_error() -> None:
    def failing(vector, task):
        if task == "t2":
            raise RuntimeError("evaluation of t2 failed")
        return correctness_of(vector, task)

    with pytest.raises(RuntimeError, match="evaluation of t2 failed"):
        _evaluate("task_arithmetic", failing, workers=2)


def test_workers_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        _evaluate("task_arithmetic", correctness_of, workers=0)
