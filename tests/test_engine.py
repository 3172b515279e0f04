"""The streaming core: stream_merge over sources against the in-memory API, validation, passes."""

from __future__ import annotations

import pytest
import spec_reference as ref
import torch

from weaving import METHODS, DictSource, InputError, ParamError, apply_task_vector, merge, task_vectors, weave
from weaving.engine import stream_merge
from weaving.sources import all_finite


class RecordingSource(DictSource):
    """A DictSource that logs every load and can forbid loading altogether."""

    def __init__(self, sd, name, log: list | None = None, forbid_loads: bool = False, reverse_keys: bool = False):
        super().__init__(sd, name)
        self.log = log if log is not None else []
        self.forbid_loads = forbid_loads
        self.reverse_keys = reverse_keys

    def keys(self):
        return sorted(super().keys(), reverse=self.reverse_keys)

    def load(self, key):
        if self.forbid_loads:
            raise AssertionError(f"{self.name}: loaded {key!r} before validation finished")
        self.log.append((self.name, key))
        return super().load(key)


def _sources(pretrained, finetuned, **kwargs):
    log: list = []
    pre = RecordingSource(pretrained, "pre.safetensors", log, **kwargs)
    fts = [RecordingSource(sd, f"ft{i}.safetensors", log, **kwargs) for i, sd in enumerate(finetuned)]
    return pre, fts, log


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_stream_merge_equals_in_memory_merge(method: str, dtype) -> None:
    pretrained, finetuned = ref.random_model(3, seed=1, zero_size=True, dtype=dtype)
    taus = task_vectors(pretrained, finetuned)
    pre, fts, _ = _sources(pretrained, finetuned, reverse_keys=True)
    streamed = list(stream_merge(pre, fts, method, lam=0.7, seed=2))
    assert [k for k, _ in streamed] == sorted(pretrained)
    expected = apply_task_vector(pretrained, merge(method, taus, lam=0.7, seed=2))
    for key, value in streamed:
        assert value.dtype == pretrained[key].dtype and value.shape == pretrained[key].shape
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("pooling", ["avg", "random", "magmax"])
@pytest.mark.parametrize("materialize", [False, True])
def test_stream_weave_equals_in_memory_weave(pooling: str, materialize: bool) -> None:
    pretrained, finetuned = ref.random_model(2, seed=5)
    taus = task_vectors(pretrained, finetuned)
    pre, fts, _ = _sources(pretrained, finetuned)
    kwargs = dict(lambdas=[0.1, 0.5, 1.0], pooling=pooling, pool_over="all", seed=4, materialize=materialize)
    streamed = dict(stream_merge(pre, fts, "ties", density=0.3, **kwargs))
    expected = apply_task_vector(pretrained, weave("ties", taus, density=0.3, **kwargs))
    assert streamed.keys() == expected.keys()
    for key, value in streamed.items():
        assert torch.equal(value, expected[key]), key


def test_non_float_buffers_come_from_pretrained() -> None:
    pretrained, finetuned = ref.random_model(2, seed=0)
    finetuned[1]["position_ids"] = finetuned[1]["position_ids"] + 100  # ignored: not in task vectors
    out = dict(stream_merge(DictSource(pretrained), [DictSource(sd) for sd in finetuned], "magmax", lam=1.0))
    assert torch.equal(out["position_ids"], pretrained["position_ids"])
    assert torch.equal(out["attn_mask"], pretrained["attn_mask"])


def _passes(log: list, source: str) -> list[list[str]]:
    """Split one source's sequence of loaded keys into passes (a pass restarts the key order)."""
    passes: list[list[str]] = []
    for name, key in log:
        if name != source:
            continue
        if not passes or key <= passes[-1][-1]:
            passes.append([])
        passes[-1].append(key)
    return passes


@pytest.mark.parametrize(
    "method, dtype, hparams, num_passes",
    [
        ("task_arithmetic", torch.float32, {}, 1),
        ("tsv", torch.float32, {}, 1),
        ("ties", torch.float32, {}, 3),  # radix select (2 x 16 bits), final; no sign cancels
        ("ties", torch.float64, {}, 5),
        ("ties", torch.float32, {"density": 0.1}, 2),  # tail selection, final
        ("pcb", torch.float32, {}, 3),  # |X| tails, b tails, final
        ("pcb", torch.float32, {"ratio": 0.5}, 4),  # |X| tails, b radix (2), final
        ("pcb", torch.float64, {"ratio": 0.5}, 6),
    ],
)
def test_passes_visit_keys_in_sorted_order_one_key_at_a_time(method: str, dtype, hparams: dict, num_passes: int) -> None:
    pretrained, finetuned = ref.random_model(2, seed=3, dtype=dtype, shape2d=(20, 30))
    pre, fts, log = _sources(pretrained, finetuned)
    float_keys = sorted(k for k, v in pretrained.items() if v.is_floating_point())
    for _ in stream_merge(pre, fts, method, lam=1.0, **hparams):
        pass
    passes = _passes(log, "ft1.safetensors")
    assert len(passes) == num_passes
    assert all(p == float_keys for p in passes)
    # every load of a key by the T + 1 sources is contiguous: one key's tensors at a time
    float_loads = [key for _, key in log if key in float_keys]
    assert len(float_loads) == 3 * len(float_keys) * num_passes
    assert all(len(set(float_loads[i : i + 3])) == 1 for i in range(0, len(float_loads), 3))


def test_ties_majority_pass_runs_when_a_column_cancels(capsys) -> None:
    pretrained = {"a": torch.zeros(3), "b": torch.zeros(2)}
    finetuned = [{"a": torch.tensor([1.0, 1.0, 1.0]), "b": torch.tensor([2.0, 5.0])},
                 {"a": torch.tensor([1.0, 1.0, 1.0]), "b": torch.tensor([-2.0, 5.0])}]
    pre, fts, log = _sources(pretrained, finetuned)
    out = dict(stream_merge(pre, fts, "ties", lam=1.0, density=1.0, progress=True))
    assert len(_passes(log, "ft1.safetensors")) == 3  # final pass of 'a', majority pass, rest of final pass
    assert "ties: majority sign (needed by b)" in capsys.readouterr().err
    assert torch.equal(out["b"], torch.tensor([2.0, 5.0]))  # majority sign is +: column 0 keeps 2.0


def test_validation_happens_before_any_load() -> None:
    pretrained, finetuned = ref.random_model(2, seed=0)
    pre, fts, _ = _sources(pretrained, finetuned, forbid_loads=True)
    bad_calls = [
        (dict(method="tie", lam=1.0), ParamError, "unknown method 'tie'; valid: breadcrumbs, dare"),
        (dict(method="ties", lam=1.0, dens=0.1), ParamError, "unknown hyper-parameter(s) 'dens'; valid: density"),
        (dict(method="ties", lam=1.0, density=0.0), ParamError, "'density' must be in (0, 1]"),
        (dict(method="dare", lam=1.0, p=1.0), ParamError, "'p' must be in [0, 1)"),
        (dict(method="ties", lambdas=[], pooling="avg"), ParamError, "empty"),
        (dict(method="ties", lambdas=[0.1], pooling="mean"), ParamError, "unknown pooling 'mean'"),
        (dict(method="ties", lambdas=[0.1], pooling="avg", pool_over="A"), ParamError, "unknown pool_over 'A'"),
        (dict(method="ties", lambdas=[0.1]), ParamError, "needs a pooling"),
        (dict(method="ties", lam=1.0, lambdas=[0.1], pooling="avg"), ParamError, "either lam"),
        (dict(method="ties"), ParamError, "either lam"),
        (dict(method="ties", lam=float("inf")), ParamError, "lam must be a finite number"),
        (dict(method="ties", lam=1.0, seed=1.5), ParamError, "seed must be an integer"),
    ]
    for kwargs, error, message in bad_calls:
        method = kwargs.pop("method")
        with pytest.raises(error) as info:
            stream_merge(pre, fts, method, **kwargs)
        assert message in str(info.value), (message, str(info.value))
    with pytest.raises(InputError, match="at least one fine-tuned source"):
        stream_merge(pre, [], "ties", lam=1.0)


def test_mismatched_sources_are_named() -> None:
    pretrained, finetuned = ref.random_model(2, seed=0)
    cases = []
    missing = dict(finetuned[1])
    del missing["blocks.0.bias"]
    cases.append((missing, "ft1.safetensors: key set differs from pre.safetensors: missing 'blocks.0.bias'"))
    extra = dict(finetuned[1], **{"head.weight": torch.zeros(2)})
    cases.append((extra, "extra 'head.weight'"))
    reshaped = dict(finetuned[1], **{"blocks.0.bias": torch.zeros(99)})
    cases.append((reshaped, "ft1.safetensors: key 'blocks.0.bias' has shape (99,), pre.safetensors has (5,)"))
    retyped = dict(finetuned[1], **{"blocks.0.bias": finetuned[1]["blocks.0.bias"].double()})
    cases.append((retyped, "ft1.safetensors: key 'blocks.0.bias' has dtype torch.float64"))
    for bad, message in cases:
        pre, fts, _ = _sources(pretrained, [finetuned[0], bad], forbid_loads=True)
        with pytest.raises(InputError) as info:
            stream_merge(pre, fts, "ties", lam=1.0)
        assert message in str(info.value)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
@pytest.mark.parametrize("where", ["pre", "ft"])
def test_nan_is_reported_with_source_and_key(method: str, where: str) -> None:
    pretrained, finetuned = ref.random_model(2, seed=0)
    target = pretrained if where == "pre" else finetuned[1]
    target["conv.weight"] = target["conv.weight"].clone()
    target["conv.weight"].view(-1)[3] = float("nan") if where == "pre" else float("inf")
    pre, fts, _ = _sources(pretrained, finetuned)
    stream = stream_merge(pre, fts, method, lam=1.0)  # creating the stream reads nothing
    name = "pre.safetensors" if where == "pre" else "ft1.safetensors"
    with pytest.raises(InputError, match=rf"{name}: key 'conv.weight' contains NaN or inf"):
        list(stream)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_checking_the_sum_instead_of_the_inputs_names_the_same_input(bad: float) -> None:
    """task_arithmetic checks its result, and its inputs only when the result is not finite."""
    taus = [{"a": torch.ones(4), "b": torch.ones(3)} for _ in range(3)]
    taus[2]["b"] = torch.tensor([1.0, bad, 1.0])
    taus[1]["b"] = torch.tensor([1.0, 1.0, bad])
    with pytest.raises(InputError, match="task vector 1: key 'b' contains NaN or inf"):
        merge("task_arithmetic", taus)


def test_a_sum_that_overflows_finite_inputs_is_returned_as_before() -> None:
    big = torch.tensor([3e38, 1.0], dtype=torch.float32)
    merged = merge("task_arithmetic", [{"a": big}, {"a": big}])
    assert merged["a"][0] == float("inf") and merged["a"][1] == 2.0


def test_in_memory_api_rejects_bad_task_vectors() -> None:
    with pytest.raises(InputError, match="task vector 0: key 'ids' has dtype torch.int64"):
        merge("ties", [{"ids": torch.arange(3)}])
    with pytest.raises(InputError, match="task vector 1: key set differs"):
        merge("ties", [{"a": torch.ones(2)}, {"b": torch.ones(2)}])
    with pytest.raises(InputError, match="need at least one task vector"):
        merge("ties", [])
    with pytest.raises(InputError, match="task vector 0: key 'a' contains NaN"):
        merge("task_arithmetic", [{"a": torch.tensor([float("nan")])}])
    with pytest.raises(InputError, match="fine-tuned state dict 0: key 'a' has shape"):
        task_vectors({"a": torch.ones(2)}, [{"a": torch.ones(3)}])
    with pytest.raises(InputError, match="missing 'b'"):
        apply_task_vector({"a": torch.ones(2), "b": torch.ones(1)}, {"a": torch.ones(2)})


def test_half_precision_model_streams_in_its_dtype() -> None:
    pretrained, finetuned = ref.random_model(2, seed=0, dtype=torch.bfloat16)
    out = dict(stream_merge(DictSource(pretrained), [DictSource(sd) for sd in finetuned], "pcb", lam=1.0))
    assert all(out[k].dtype == v.dtype for k, v in pretrained.items())


def test_progress_bars_are_labelled_per_pass(capsys) -> None:
    pretrained, finetuned = ref.random_model(2, seed=0)
    list(stream_merge(DictSource(pretrained), [DictSource(sd) for sd in finetuned], "ties", lam=1.0, progress=True))
    err = capsys.readouterr().err
    for label in ("ties: trim threshold, pass 1/2", "ties: trim threshold, pass 2/2", "ties: merge"):
        assert label in err


def _finiteness_cases() -> list[torch.Tensor]:
    cases = [
        torch.tensor([3e38, 3e38], dtype=torch.float32),  # finite entries whose sum overflows to inf
        torch.tensor([3e38, -3e38, 3e38, 3e38], dtype=torch.float32),
        torch.tensor([3e38, 3e38], dtype=torch.bfloat16),
        torch.full((5, 7), 1e308, dtype=torch.float64),
        torch.tensor([65504.0, 65504.0], dtype=torch.float16),
        torch.tensor(2.0), torch.tensor(float("nan")), torch.randn(3, 4, generator=torch.Generator().manual_seed(0)),
        torch.zeros(0), torch.zeros(0, 3, dtype=torch.bfloat16),
        torch.tensor([1, 2**31 - 1, 2**31 - 1], dtype=torch.int32), torch.zeros(0, dtype=torch.int64),
        torch.tensor([True, False]),
    ]
    for bad in (float("nan"), float("inf"), float("-inf")):
        for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            tensor = torch.ones(4, 6, dtype=dtype)
            tensor[2, 3] = bad
            cases.append(tensor)
            cases.append(torch.tensor([3e38, 3e38, bad]).to(dtype))  # overflow and a non-finite entry
    return cases


@pytest.mark.parametrize("tensor", _finiteness_cases())
def test_all_finite_is_isfinite_all(tensor: torch.Tensor) -> None:
    """The sum shortcut of `all_finite` agrees with `isfinite` of every entry (True for non-float, empty)."""
    assert all_finite(tensor) is bool(torch.isfinite(tensor).all())


def test_all_finite_sees_through_an_overflowing_sum() -> None:
    big = torch.tensor([3e38, 3e38], dtype=torch.float32)
    assert not bool(torch.isfinite(big.sum())) and all_finite(big)
    assert not all_finite(torch.tensor([3e38, 3e38, float("nan")]))
    assert all_finite(torch.tensor([1, 2], dtype=torch.int64)) and all_finite(torch.zeros(0))
